"""A small Normalizer-Free ResNet for the Fashion-MNIST quickstart (``nf_demo``).

It uses the same ingredients as the big models (scaled WS convolutions, gamma-scaled
activations, pre-activation residual blocks with ``alpha``/``beta`` signal tracking, a
zero-initialised ``skip_gain``, optional squeeze-excite and stochastic depth) but plain 3x3
"basic" blocks without grouping, because XLA:CPU is slow on grouped convolutions and the
quickstart has to train on two CPU cores in a few minutes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import layers
from nfnets_jax.models.registry import EvalRecipe, register


class NFDemoBlock(hk.Module):
  """Pre-activation NF basic block: ``x + alpha * skip_gain * f(act(x) * beta)``."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, beta: float, alpha: float,
               activation: str, se_ratio: float, stochdepth_rate: float,
               skip_init: float, name: Optional[str] = None):
    super().__init__(name=name)
    self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
    self.beta, self.alpha = beta, alpha
    self.act = layers.scaled_activation(activation)
    self.se_ratio = se_ratio
    self.stochdepth_rate = stochdepth_rate
    self.skip_init = skip_init
    # Submodules are made here so Haiku names them `<block>/~/conv0`, like the reference.
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(out_ch, 1, stride=stride, name="conv_shortcut")
    self.conv0 = layers.WSConv2D(out_ch, 3, stride=stride, name="conv0")
    self.conv1 = layers.WSConv2D(out_ch, 3, name="conv1")
    if se_ratio:
      self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio)

  def __call__(self, x, is_training):
    out = self.act(x) * self.beta
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    h = self.conv0(out)
    h = self.conv1(self.act(h))
    if self.se_ratio:
      h = 2.0 * self.se(h) * h
    h = layers.stochastic_depth(h, self.stochdepth_rate, is_training)
    skip_gain = hk.get_parameter("skip_gain", (), h.dtype,
                                 init=hk.initializers.Constant(self.skip_init))
    return h * skip_gain * self.alpha + shortcut


class NFDemo(hk.Module):
  """Stem conv -> NF basic-block stages -> act -> mean pool -> dropout -> linear."""

  def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128),
               depths: Sequence[int] = (1, 2, 1), strides: Sequence[int] = (2, 2, 2),
               stem_width: int = 16, alpha: float = 0.2, activation: str = "relu",
               se_ratio: float = 0.0, stochdepth_rate: float = 0.0, drop_rate: float = 0.0,
               skip_init: float = 0.0, name: Optional[str] = "NFDemo"):
    super().__init__(name=name)
    if not len(widths) == len(depths) == len(strides):
      raise ValueError(f"widths {widths}, depths {depths} and strides {strides} must have the "
                       "same length (one entry per stage).")
    self.num_classes = num_classes
    self.widths, self.depths, self.strides = tuple(widths), tuple(depths), tuple(strides)
    self.stem_width = stem_width
    self.alpha = alpha
    self.activation = activation
    self.se_ratio = se_ratio
    self.stochdepth_rate = stochdepth_rate
    self.drop_rate = drop_rate
    self.skip_init = skip_init
    self.stem = layers.WSConv2D(stem_width, 3, name="stem_conv")
    self.blocks = []
    in_ch = stem_width
    num_blocks = sum(self.depths)
    for width, depth, stride in zip(self.widths, self.depths, self.strides):
      expected_std = 1.0
      for i in range(depth):
        index = len(self.blocks)
        self.blocks.append(NFDemoBlock(
            in_ch, width, stride if i == 0 else 1, beta=1.0 / expected_std, alpha=alpha,
            activation=activation, se_ratio=se_ratio,
            stochdepth_rate=stochdepth_rate * index / num_blocks, skip_init=skip_init,
            name="nf_block"))  # Haiku numbers them nf_block, nf_block_1, ...
        expected_std = (expected_std ** 2 + alpha ** 2) ** 0.5
        in_ch = width
    self.linear = hk.Linear(num_classes, w_init=hk.initializers.RandomNormal(0.01),
                            name="linear")

  def __call__(self, x, is_training, return_metrics=False):
    act = layers.scaled_activation(self.activation)
    metrics = {}
    h = self.stem(x)
    for index, block in enumerate(self.blocks):
      h = block(h, is_training)
      if return_metrics:
        metrics.update(layers.signal_metrics(h, f"block_{index}"))
    pool = jnp.mean(act(h), axis=(1, 2))
    out = pool
    if is_training and self.drop_rate:
      out = layers.dropout(out, self.drop_rate, hk.next_rng_key())
    logits = self.linear(out)
    result = {"logits": logits, "pool": pool}
    if return_metrics:
      result.update(metrics)
    return result


register("nf_demo", NFDemo, {}, train_image_size=28, test_image_size=28, drop_rate=0.0,
         eval=EvalRecipe(28, "none", crop_pct=1.0),
         description="Small NF-ResNet (basic blocks, no grouping) for the Fashion-MNIST "
                     "quickstart on CPU.")
register("nf_demo_tiny", NFDemo, dict(widths=(8, 16), depths=(1, 1), strides=(2, 2),
                                      stem_width=8),
         train_image_size=28, test_image_size=28, drop_rate=0.0,
         eval=EvalRecipe(28, "none", crop_pct=1.0),
         description="A few-thousand-parameter NF model for fast tests of the training engine.")
