"""NF-RegNet B0-B8 (Brock et al. 2021a): an EfficientNet-shaped Normalizer-Free RegNet.

Facts section 3: B0 widths [48, 104, 208, 440] x 0.75 and depths [1, 3, 6, 6]; each block
expands its *input* width by 2.25 (the very first block by 1), uses grouped 3x3 convs with
group width 8 and squeeze-excite on the expanded width, has no conv1b, every stage starts with
stride 2 (avg-pool + 1x1 shortcut), the head has a final 1x1 conv to int(1280 * last / 440)
channels, activations are SiLU, and the classifier starts at zero.
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


class NFRegNetBlock(hk.Module):
  """act(x) * beta -> 1x1 expand -> act -> 3x3 grouped (stride) -> SE (x2) -> act -> 1x1."""

  def __init__(self, in_ch: int, out_ch: int, expansion: float = 2.25, se_ratio: float = 0.5,
               kernel_size: int = 3, group_size: int = 8, stride: int = 1,
               beta: float = 1.0, alpha: float = 0.2, activation: Callable = jax.nn.silu,
               stochdepth_rate: float = 0.0, grouped_conv_impl: str = "auto",
               name: Optional[str] = None):
    super().__init__(name=name)
    self.in_ch, self.out_ch = in_ch, out_ch
    self.beta, self.alpha = beta, alpha
    self.activation = activation
    self.stride = stride
    self.stochdepth_rate = stochdepth_rate
    width = int(in_ch * expansion)
    if width < group_size:
      raise ValueError(
          f"NF-RegNet block with {in_ch} input channels and expansion {expansion} has "
          f"{width} < group_size={group_size} channels; use a larger width or group_size.")
    # The expanded width is rounded down to a whole number of groups.
    self.groups = width // group_size
    self.width = group_size * self.groups
    self.conv0 = layers.WSConv2D(self.width, 1, padding="VALID", name="conv0")
    self.conv1 = layers.WSConv2D(self.width, kernel_size, stride=stride, padding="SAME",
                                 feature_group_count=self.groups,
                                 grouped_conv_impl=grouped_conv_impl, name="conv1")
    self.se = layers.SqueezeExcite(self.width, self.width, se_ratio)
    self.conv2 = layers.WSConv2D(out_ch, 1, padding="VALID", name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(out_ch, 1, padding="VALID", name="conv_shortcut")

  def __call__(self, x: jax.Array, is_training: bool):
    out = self.activation(x) * self.beta
    shortcut = layers.nf_shortcut(
        x, out, self.stride, self.conv_shortcut if self.use_projection else None)
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = 2 * self.se(out) * out
    out = self.conv2(self.activation(out))
    res_var = channel_var(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    skip_gain = hk.get_parameter("skip_gain", (), out.dtype, init=jnp.zeros)
    return out * skip_gain * self.alpha + shortcut, res_var


# Stage widths (before the 0.75 width multiplier) and depths per variant, the NF-RegNet
# reference's compound scaling of B0; image sizes and dropout as the reference's table.
NF_REGNET_VARIANTS = {
    "B0": dict(width=(48, 104, 208, 440), depth=(1, 3, 6, 6), train_imsize=192,
               test_imsize=224, drop_rate=0.2),
    "B1": dict(width=(48, 104, 208, 440), depth=(2, 4, 7, 7), train_imsize=224,
               test_imsize=256, drop_rate=0.2),
    "B2": dict(width=(56, 112, 232, 488), depth=(2, 4, 8, 8), train_imsize=240,
               test_imsize=272, drop_rate=0.3),
    "B3": dict(width=(56, 128, 248, 528), depth=(2, 5, 9, 9), train_imsize=288,
               test_imsize=320, drop_rate=0.3),
    "B4": dict(width=(64, 144, 288, 616), depth=(2, 6, 11, 11), train_imsize=320,
               test_imsize=384, drop_rate=0.4),
    "B5": dict(width=(80, 168, 336, 704), depth=(3, 7, 14, 14), train_imsize=384,
               test_imsize=456, drop_rate=0.4),
    "B6": dict(width=(88, 184, 376, 792), depth=(3, 8, 16, 16), train_imsize=448,
               test_imsize=528, drop_rate=0.5),
    "B7": dict(width=(96, 208, 416, 880), depth=(4, 10, 19, 19), train_imsize=512,
               test_imsize=600, drop_rate=0.5),
    "B8": dict(width=(104, 232, 456, 968), depth=(4, 11, 22, 22), train_imsize=600,
               test_imsize=672, drop_rate=0.5),
}


class NFRegNet(hk.Module):
  """Normalizer-Free RegNet; ``model(x, is_training, return_metrics=False)`` -> dict."""

  def __init__(self, num_classes: int, variant: str = "B0", width: float = 0.75,
               expansion: float = 2.25, group_size: int = 8, se_ratio: float = 0.5,
               alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: Optional[float] = None, activation: str = "silu",
               fc_init: Optional[hk.initializers.Initializer] = None,
               depths: Optional[Sequence[int]] = None,
               grouped_conv_impl: str = "auto", name: Optional[str] = "NF_RegNet"):
    super().__init__(name=name)
    if variant not in NF_REGNET_VARIANTS:
      raise ValueError(
          f"Unknown NF-RegNet variant {variant!r}; known: {sorted(NF_REGNET_VARIANTS)}.")
    params = NF_REGNET_VARIANTS[variant]
    self.num_classes = num_classes
    self.variant = variant
    self.width = width
    self.width_pattern = params["width"]
    self.depth_pattern = tuple(depths) if depths is not None else params["depth"]
    self.drop_rate = params["drop_rate"] if drop_rate is None else drop_rate
    self.activation = layers.scaled_activation(activation)

    ch = int(self.width_pattern[0] * width)
    self.initial_conv = layers.WSConv2D(ch, 3, stride=2, padding="SAME", name="initial_conv")
    self.blocks: List[NFRegNetBlock] = []
    schedule = iter(nf_betas_and_rates(self.depth_pattern, alpha, stochdepth_rate))
    index = 0
    for block_width, depth in zip(self.width_pattern, self.depth_pattern):
      for block_index in range(depth):
        beta, rate = next(schedule)
        out_ch = int(block_width * width)
        self.blocks.append(NFRegNetBlock(
            ch, out_ch, expansion=1 if index == 0 else expansion, se_ratio=se_ratio,
            group_size=group_size, stride=2 if block_index == 0 else 1, beta=beta,
            alpha=alpha, activation=self.activation, stochdepth_rate=rate,
            grouped_conv_impl=grouped_conv_impl))
        ch = out_ch
        index += 1
    self.final_ch = int(1280 * ch // 440)
    self.final_conv = layers.WSConv2D(self.final_ch, 1, padding="VALID", name="final_conv")
    self.fc = hk.Linear(num_classes, w_init=fc_init or jnp.zeros, with_bias=True)

  def __call__(self, x: jax.Array, is_training: bool, return_metrics: bool = False) -> dict:
    check_input(x, self.module_name)
    outputs = {}
    out = self.initial_conv(x)
    for i, block in enumerate(self.blocks):
      out, res_var = block(out, is_training)
      if return_metrics:
        outputs.update(block_metrics(i, out, res_var))
    out = self.activation(self.final_conv(out))
    pool = jnp.mean(out, axis=(1, 2))
    outputs["pool"] = pool
    outputs["logits"] = classifier_head(pool, self.fc, self.drop_rate, is_training)
    return outputs


def _register():
  for v, p in NF_REGNET_VARIANTS.items():
    register(f"nf_regnet_{v.lower()}", NFRegNet, dict(variant=v),
             train_image_size=p["train_imsize"], test_image_size=p["test_imsize"],
             drop_rate=p["drop_rate"], randaugment_layers=0, randaugment_magnitude=0,
             description=f"NF-RegNet-{v} (Brock et al. 2021a); trained without RandAugment")


_register()
