"""NF-ResNet (Brock et al. 2021a): a pre-activation bottleneck ResNet without normalization.

Facts section 3: widths [64, 128, 256, 512] * width (width 4 by default, so 256..2048 output
channels), a 7x7 stride-2 WS stem with 16 * width channels and a 3x3/2 max-pool, bottleneck
blocks (1x1 -> 3x3 -> 1x1, bottleneck = out / 4) whose shortcut, where shapes change, is a
strided 1x1 WS conv of the pre-activated input (no avg-pool), optional squeeze-excite (ratio
0.25, times 2), a scalar ``skip_gain`` (init 0), and a head act -> mean -> dropout -> linear.
With 1000 classes NF-ResNet-50 has 25,557,048 parameters (35,635,704 with SE).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import layers
from nfnets_jax.models.parts import (block_metrics, channel_var, check_input, classifier_head,
                                     nf_betas_and_rates)
from nfnets_jax.models.registry import register


# ------------------------------------------------------------------------------------------
# NF-ResNet.
# ------------------------------------------------------------------------------------------
class NFResBlock(hk.Module):
  """Pre-activation bottleneck: act(x) * beta -> 1x1 -> act -> 3x3 -> act -> 1x1 [-> SE]."""

  def __init__(self, in_ch: int, out_ch: int, bottleneck_ratio: float = 0.25,
               kernel_size: int = 3, stride: int = 1, beta: float = 1.0, alpha: float = 0.2,
               activation: Callable = jax.nn.relu, skipinit_gain: Callable = jnp.zeros,
               stochdepth_rate: float = 0.0, use_se: bool = False, se_ratio: float = 0.25,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.in_ch, self.out_ch = in_ch, out_ch
    self.beta, self.alpha = beta, alpha
    self.activation = activation
    self.skipinit_gain = skipinit_gain
    self.stochdepth_rate = stochdepth_rate
    self.width = int(out_ch * bottleneck_ratio)
    self.conv0 = layers.WSConv2D(self.width, 1, padding="VALID", name="conv0")
    self.conv1 = layers.WSConv2D(self.width, kernel_size, stride=stride, padding="SAME",
                                 name="conv1")
    self.conv2 = layers.WSConv2D(out_ch, 1, padding="VALID", name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(out_ch, 1, stride=stride, padding="SAME",
                                           name="conv_shortcut")
    self.use_se = use_se
    if use_se:
      self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)

  def __call__(self, x: jax.Array, is_training: bool):
    out = self.activation(x) * self.beta
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv2(self.activation(out))
    if self.use_se:
      out = 2 * self.se(out) * out
    res_var = channel_var(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    skip_gain = hk.get_parameter("skip_gain", (), out.dtype, init=self.skipinit_gain)
    return out * skip_gain * self.alpha + shortcut, res_var


NF_RESNET_VARIANTS = {
    "ResNet26": dict(depth=(2, 2, 2, 2), drop_rate=0.2),
    "ResNet50": dict(depth=(3, 4, 6, 3), drop_rate=0.2),
    "ResNet101": dict(depth=(3, 4, 23, 3), drop_rate=0.2),
    "ResNet152": dict(depth=(3, 8, 36, 3), drop_rate=0.2),
    "ResNet200": dict(depth=(3, 24, 36, 3), drop_rate=0.2),
    "ResNet288": dict(depth=(24, 24, 24, 24), drop_rate=0.2),
    "ResNet600": dict(depth=(50, 50, 50, 50), drop_rate=0.2),
}


class NFResNet(hk.Module):
  """Normalizer-Free ResNet; ``model(x, is_training, return_metrics=False)`` -> dict."""

  def __init__(self, num_classes: int, variant: str = "ResNet50", width: float = 4,
               alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: Optional[float] = None, activation: str = "relu",
               fc_init: Optional[hk.initializers.Initializer] = None,
               skipinit_gain: Callable = jnp.zeros, use_se: bool = False,
               se_ratio: float = 0.25, depths: Optional[Sequence[int]] = None,
               name: Optional[str] = "NF_ResNet"):
    super().__init__(name=name)
    if variant not in NF_RESNET_VARIANTS:
      raise ValueError(
          f"Unknown NF-ResNet variant {variant!r}; known: {sorted(NF_RESNET_VARIANTS)}.")
    params = NF_RESNET_VARIANTS[variant]
    self.num_classes = num_classes
    self.variant = variant
    self.width = width
    self.depth_pattern = tuple(depths) if depths is not None else params["depth"]
    self.width_pattern = [int(c * width) for c in (64, 128, 256, 512)]
    self.drop_rate = params["drop_rate"] if drop_rate is None else drop_rate
    self.activation = layers.scaled_activation(activation)

    ch = int(16 * width)
    self.initial_conv = layers.WSConv2D(ch, 7, stride=2, padding="SAME", name="initial_conv")
    self.blocks: List[NFResBlock] = []
    schedule = iter(nf_betas_and_rates(self.depth_pattern, alpha, stochdepth_rate))
    for stage, (block_width, depth) in enumerate(zip(self.width_pattern, self.depth_pattern)):
      for block_index in range(depth):
        beta, rate = next(schedule)
        stride = 2 if (block_index == 0 and stage > 0) else 1
        self.blocks.append(NFResBlock(
            ch, block_width, stride=stride, beta=beta, alpha=alpha,
            activation=self.activation, skipinit_gain=skipinit_gain, stochdepth_rate=rate,
            use_se=use_se, se_ratio=se_ratio))
        ch = block_width
    fc_init = fc_init or hk.initializers.RandomNormal(0.01, 0.0)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def __call__(self, x: jax.Array, is_training: bool, return_metrics: bool = False) -> dict:
    check_input(x, self.module_name)
    outputs = {}
    out = self.initial_conv(x)
    out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    for i, block in enumerate(self.blocks):
      out, res_var = block(out, is_training)
      if return_metrics:
        outputs.update(block_metrics(i, out, res_var))
    pool = jnp.mean(self.activation(out), axis=(1, 2))
    outputs["pool"] = pool
    outputs["logits"] = classifier_head(pool, self.fc, self.drop_rate, is_training)
    return outputs


def _register():
  # Image sizes and augmentation as the 2021a paper's ImageNet setup (224 px, no RandAugment).
  for depth in (26, 50, 101, 152, 200, 288, 600):
    for se in (False, True):
      name = f"nf_{'se' if se else ''}resnet{depth}"
      register(name, NFResNet, dict(variant=f"ResNet{depth}", use_se=se),
               train_image_size=224, test_image_size=224, drop_rate=0.2,
               description=f"NF-{'SE-' if se else ''}ResNet-{depth} (Brock et al. 2021a)")


_register()
