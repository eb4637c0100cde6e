"""Pre-activation ResNet baselines for the NF comparisons (facts section 3).

``normalization='batchnorm'`` is the pre-activation BatchNorm ResNet (ResNet-50: 25,549,352
parameters with 1000 classes, BN scale/offset included; the BN moving statistics live in Haiku
*state*, so build it with ``hk.transform_with_state``). ``'none'`` removes BN and every scaling
(the unnormalized ResNet whose activations grow with depth, for signal-propagation plots);
``'skipinit'`` removes BN and multiplies each residual branch by a scalar ``skip_gain`` that
starts at 0 (SkipInit, De & Smith 2020).

Block (bottleneck, stride on the 3x3): ``out = relu(bn0(x))``; the shortcut is a 1x1
projection of ``out`` when shape changes, else ``x``; ``conv0 1x1 -> bn1 -> relu -> conv1 3x3
-> bn2 -> relu -> conv2 1x1``; then ``out + shortcut``. Stem: 7x7/2 conv + 3x3/2 max-pool;
head: BN -> relu -> mean -> dropout -> linear (zeros).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import layers
from nfnets_jax.models.parts import block_metrics, channel_var, check_input, classifier_head
from nfnets_jax.models.registry import register

NORMALIZATIONS = ("batchnorm", "none", "skipinit")

RESNET_DEPTHS = {
    18: None,  # not a bottleneck net; listed so the error below can say so
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def _conv_init():
  # He initialization, so that the unnormalized variants show the textbook signal growth.
  return hk.initializers.VarianceScaling(2.0, "fan_in", "normal")


class _Norm(hk.Module):
  """BatchNorm in float32 (stats and params), or identity without normalization."""

  def __init__(self, normalization: str, decay_rate: float, name: Optional[str] = None):
    super().__init__(name=name)
    self.normalization = normalization
    if normalization == "batchnorm":
      self.bn = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=decay_rate,
                             eps=1e-5, name="batchnorm")

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    if self.normalization != "batchnorm":
      return x
    return self.bn(x.astype(jnp.float32), is_training).astype(x.dtype)


class PreActBottleneck(hk.Module):
  """Pre-activation bottleneck block (see the module docstring)."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1,
               bottleneck_ratio: float = 0.25, normalization: str = "batchnorm",
               bn_decay: float = 0.9, stochdepth_rate: float = 0.0,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.normalization = normalization
    self.stochdepth_rate = stochdepth_rate
    width = int(out_ch * bottleneck_ratio)
    bias = normalization != "batchnorm"
    conv = lambda ch, k, s, n: hk.Conv2D(ch, k, stride=s, with_bias=bias, padding="SAME",
                                         w_init=_conv_init(), name=n)
    self.norm0 = _Norm(normalization, bn_decay, name="norm0")
    self.conv0 = conv(width, 1, 1, "conv0")
    self.norm1 = _Norm(normalization, bn_decay, name="norm1")
    self.conv1 = conv(width, 3, stride, "conv1")
    self.norm2 = _Norm(normalization, bn_decay, name="norm2")
    self.conv2 = conv(out_ch, 1, 1, "conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, stride, "conv_shortcut")

  def __call__(self, x: jax.Array, is_training: bool):
    out = jax.nn.relu(self.norm0(x, is_training))
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(jax.nn.relu(self.norm1(out, is_training)))
    out = self.conv2(jax.nn.relu(self.norm2(out, is_training)))
    res_var = channel_var(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    if self.normalization == "skipinit":
      out = out * hk.get_parameter("skip_gain", (), out.dtype, init=jnp.zeros)
    return out + shortcut, res_var


class ResNet(hk.Module):
  """Pre-activation bottleneck ResNet; ``model(x, is_training, return_metrics=False)``.

  With ``normalization='batchnorm'`` it has state: use ``hk.transform_with_state``.
  """

  def __init__(self, num_classes: int, depth: int = 50, width: float = 1.0,
               normalization: str = "batchnorm", stochdepth_rate: float = 0.0,
               drop_rate: float = 0.0, bn_decay: float = 0.9,
               depths: Optional[Sequence[int]] = None,
               fc_init: Optional[hk.initializers.Initializer] = None,
               name: Optional[str] = "ResNet"):
    super().__init__(name=name)
    if normalization not in NORMALIZATIONS:
      raise ValueError(
          f"Unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}.")
    if depths is None:
      if RESNET_DEPTHS.get(depth) is None:
        known = sorted(k for k, v in RESNET_DEPTHS.items() if v)
        raise ValueError(
            f"No bottleneck ResNet of depth {depth}; known depths: {known} (or pass depths=).")
      depths = RESNET_DEPTHS[depth]
    self.num_classes = num_classes
    self.normalization = normalization
    self.drop_rate = drop_rate
    self.depth_pattern = tuple(depths)
    self.width_pattern = [int(c * width) for c in (256, 512, 1024, 2048)]
    bias = normalization != "batchnorm"
    self.initial_conv = hk.Conv2D(int(64 * width), 7, stride=2, with_bias=bias,
                                  padding="SAME", w_init=_conv_init(), name="initial_conv")
    self.blocks: List[PreActBottleneck] = []
    ch = int(64 * width)
    num_blocks = sum(self.depth_pattern)
    index = 0
    for stage, (block_width, stage_depth) in enumerate(
        zip(self.width_pattern, self.depth_pattern)):
      for block_index in range(stage_depth):
        stride = 2 if (block_index == 0 and stage > 0) else 1
        self.blocks.append(PreActBottleneck(
            ch, block_width, stride=stride, normalization=normalization, bn_decay=bn_decay,
            stochdepth_rate=stochdepth_rate * index / num_blocks))
        ch = block_width
        index += 1
    self.final_norm = _Norm(normalization, bn_decay, name="final_norm")
    self.fc = hk.Linear(num_classes, w_init=fc_init or jnp.zeros, name="linear")

  def __call__(self, x: jax.Array, is_training: bool, return_metrics: bool = False) -> dict:
    check_input(x, self.module_name)
    outputs = {}
    out = self.initial_conv(x)
    out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    for i, block in enumerate(self.blocks):
      out, res_var = block(out, is_training)
      if return_metrics:
        outputs.update(block_metrics(i, out, res_var))
    out = jax.nn.relu(self.final_norm(out, is_training))
    pool = jnp.mean(out, axis=(1, 2))
    outputs["pool"] = pool
    outputs["logits"] = classifier_head(pool, self.fc, self.drop_rate, is_training)
    return outputs


def _register():
  for depth in (26, 50, 101, 152, 200):
    register(f"resnet{depth}_bn", ResNet, dict(depth=depth, normalization="batchnorm"),
             train_image_size=224, test_image_size=224, has_state=True,
             description=f"Pre-activation BatchNorm ResNet-{depth} baseline")
  register("resnet50_noscale", ResNet, dict(depth=50, normalization="none"),
           train_image_size=224, test_image_size=224,
           description="Unnormalized pre-activation ResNet-50, no scaling (signal propagation)")
  register("resnet50_skipinit", ResNet, dict(depth=50, normalization="skipinit"),
           train_image_size=224, test_image_size=224,
           description="SkipInit ResNet-50: no BN, residual branches times skip_gain (init 0)")


_register()
