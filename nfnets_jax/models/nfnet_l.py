"""timm's "light" NFNets: NFNet-L0 and ECA-NFNet-L0..L3 (facts section 3).

NFNet-F-shaped (quad 3x3 stem 16-32-64-128, stages [256, 512, 1536, 1536] with strides
[1, 2, 2, 2], avg-pool + 1x1 shortcut, conv0 -> conv1 -> conv1b -> conv2 pre-activation
blocks, final 1x1 conv) but lighter: SiLU, group width 64, bottleneck 0.25 of the output
width, final conv 1.5x (L0) or 2x (L1-L3), and channel attention after the last conv times 2:
squeeze-excite with hidden = C/4 rounded to 8 (NFNet-L0) or ECA (the ECA variants: a bias-free
1-D conv across the pooled channels whose odd kernel size k grows with log2 C:
``t = int(|log2(C) + 1| / 2)``, ``k = max(t if t odd else t + 1, 3)``).

Following timm, these blocks have no ``skip_gain`` parameter: the last conv's ``gain`` starts
at zero instead, which also makes each block the identity at initialization. Parameter counts
with 1000 classes: NFNet-L0 35,074,488; ECA-NFNet-L0 24,143,924; L1 41,407,728;
L2 56,722,348.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import layers
from nfnets_jax.models.parts import (block_metrics, channel_var, check_input, check_remat,
                                     classifier_head, make_divisible, nf_betas_and_rates,
                                     zero_last_gain_creator)
from nfnets_jax.models import registry
from nfnets_jax.models.registry import register


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
  """ECA's adaptive kernel size for ``channels`` (odd, at least 3)."""
  t = int(abs(math.log(channels, 2) + beta) / gamma)
  return max(t if t % 2 else t + 1, 3)


class ECA(hk.Module):
  """Efficient channel attention: mean pool -> 1-D conv over channels (no bias) -> sigmoid.

  Returns the (B, 1, 1, C) gate, like ``layers.SqueezeExcite``.
  """

  def __init__(self, channels: int, kernel_size: Optional[int] = None,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.channels = channels
    self.kernel_size = kernel_size or eca_kernel_size(channels)
    if self.kernel_size % 2 != 1:
      raise ValueError(f"ECA kernel_size must be odd, got {self.kernel_size}.")

  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    w = hk.get_parameter("w", (k,), x.dtype,
                         init=hk.initializers.VarianceScaling(1.0, "fan_in", "normal"))
    y = jnp.mean(x, axis=(1, 2))  # (B, C)
    pad = (k - 1) // 2
    y = jnp.pad(y, ((0, 0), (pad, pad)))
    # Cross-correlation along channels, zero padded, as a sum of shifted copies.
    c = x.shape[-1]
    out = sum(w[j] * y[:, j:j + c] for j in range(k))
    return jax.nn.sigmoid(out)[:, None, None, :]


def _padding(kernel: int, stride: int, mode: str):
  """"same" (XLA SAME) or timm's "symmetric" padding (see layers.symmetric_padding)."""
  if mode == "same":
    return "SAME"
  if mode == "symmetric":
    return layers.symmetric_padding(kernel, stride)
  raise ValueError(f"Unknown padding {mode!r}; choose 'same' or 'symmetric'.")


class NFLBlock(hk.Module):
  """act(x)*beta -> 1x1 -> act -> 3x3 grouped (stride) -> act -> 3x3 grouped -> act -> 1x1
  -> attention (x2); shortcut avg-pool + 1x1 on stride, 1x1 on channel change, else x."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1, beta: float = 1.0,
               alpha: float = 0.2, bottleneck_ratio: float = 0.25, group_size: int = 64,
               attention: str = "eca", se_ratio: float = 0.25, activation=jax.nn.silu,
               stochdepth_rate: float = 0.0, grouped_conv_impl: str = "auto",
               padding: str = "same", weight_std: str = "deepmind",
               name: Optional[str] = None):
    super().__init__(name=name)
    self.in_ch, self.out_ch = in_ch, out_ch
    ws = layers.weight_std_kwargs(weight_std)
    self.stride = stride
    self.beta, self.alpha = beta, alpha
    self.activation = activation
    self.stochdepth_rate = stochdepth_rate
    width = make_divisible(out_ch * bottleneck_ratio, 8)
    self.groups = max(1, width // group_size)
    if width >= group_size:
      width = group_size * self.groups
    self.width = width
    conv = lambda ch, k, s, g, n, **kw: layers.WSConv2D(
        ch, k, stride=s, padding=_padding(k, s, padding), feature_group_count=g,
        grouped_conv_impl=grouped_conv_impl, name=n, **ws, **kw)
    self.conv0 = conv(width, 1, 1, 1, "conv0")
    self.conv1 = conv(width, 3, stride, self.groups, "conv1")
    self.conv1b = conv(width, 3, 1, self.groups, "conv1b")
    self.conv2 = layers.WSConv2D(out_ch, 1, padding="SAME", name="conv2", **ws)
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(out_ch, 1, padding="SAME", name="conv_shortcut",
                                           **ws)
    if attention == "eca":
      self.attention = ECA(out_ch, name="eca")
    elif attention == "se":
      hidden = make_divisible(out_ch * se_ratio, 8, round_limit=0.0)
      self.attention = layers.SqueezeExcite(out_ch, out_ch, hidden_ch=hidden)
    elif attention in (None, "none"):
      self.attention = None
    else:
      raise ValueError(f"Unknown attention {attention!r}; choose 'eca', 'se' or 'none'.")

  def __call__(self, x: jax.Array, is_training: bool):
    out = self.activation(x) * self.beta
    shortcut = layers.nf_shortcut(
        x, out, self.stride, self.conv_shortcut if self.use_projection else None)
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv1b(self.activation(out))
    # The last conv's gain starts at 0 (timm), standing in for a zero-init skip gain.
    with hk.custom_creator(zero_last_gain_creator):
      out = self.conv2(self.activation(out))
    if self.attention is not None:
      out = 2 * self.attention(out) * out
    res_var = channel_var(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    return out * self.alpha + shortcut, res_var


NFNET_L_VARIANTS = {
    # depths, final-conv multiplier, attention, train/test image size (timm's default cfgs).
    "L0": dict(depth=(1, 2, 6, 3), feat_mult=1.5, attention="se", train_imsize=224,
               test_imsize=288, drop_rate=0.2),
    "ECA-L0": dict(depth=(1, 2, 6, 3), feat_mult=1.5, attention="eca", train_imsize=224,
                   test_imsize=288, drop_rate=0.2),
    "ECA-L1": dict(depth=(2, 4, 12, 6), feat_mult=2.0, attention="eca", train_imsize=256,
                   test_imsize=320, drop_rate=0.3),
    "ECA-L2": dict(depth=(3, 6, 18, 9), feat_mult=2.0, attention="eca", train_imsize=320,
                   test_imsize=384, drop_rate=0.4),
    "ECA-L3": dict(depth=(4, 8, 24, 12), feat_mult=2.0, attention="eca", train_imsize=352,
                   test_imsize=448, drop_rate=0.4),
}


class NFNetL(hk.Module):
  """NFNet-L0 / ECA-NFNet-L0..L3; ``model(x, is_training, return_metrics=False)`` -> dict."""

  def __init__(self, num_classes: int, variant: str = "ECA-L0", width: float = 1.0,
               alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: Optional[float] = None, activation: str = "silu",
               group_size: int = 64, bottleneck_ratio: float = 0.25,
               attention: Optional[str] = None, se_ratio: float = 0.25,
               feat_mult: Optional[float] = None, depths: Optional[Sequence[int]] = None,
               fc_init: Optional[hk.initializers.Initializer] = None,
               grouped_conv_impl: str = "auto", channels: Optional[Sequence[int]] = None,
               stem_chs: Optional[int] = None, padding: str = "same",
               gamma_in_act: bool = True, weight_std: str = "deepmind",
               remat: str = "none", name: Optional[str] = "NFNetL"):
    """timm-exact options (all off by default): ``channels`` (stage widths before ``width``,
    default (256, 512, 1536, 1536)) and ``stem_chs`` (default 128) for timm's other shapes
    such as ``test_nfnet``; ``padding="symmetric"`` (timm's get_padding instead of SAME);
    ``gamma_in_act=False`` (timm: the gamma of the activation sits in the next conv, so the
    first stem conv and ``final_conv`` see ``gamma * x`` and the head's activation has no
    gamma); ``weight_std="timm"`` (timm's additive standardization epsilon). ``remat='blocks'``
    recomputes each block's activations in the backward pass (less memory, same numbers)."""
    super().__init__(name=name)
    if variant not in NFNET_L_VARIANTS:
      raise ValueError(
          f"Unknown NFNet-L variant {variant!r}; known: {sorted(NFNET_L_VARIANTS)}.")
    params = NFNET_L_VARIANTS[variant]
    self.remat = check_remat(remat)
    self.num_classes = num_classes
    self.variant = variant
    self.depth_pattern = tuple(depths) if depths is not None else params["depth"]
    channels = tuple(channels) if channels is not None else (256, 512, 1536, 1536)
    self.width_pattern = [make_divisible(c * width, 8) for c in channels]
    self.drop_rate = params["drop_rate"] if drop_rate is None else drop_rate
    self.activation = layers.scaled_activation(activation)
    self.gamma_in_act = gamma_in_act
    self.input_gamma = 1.0 if gamma_in_act else layers.activation_gamma(activation)
    self.head_activation = (self.activation if gamma_in_act
                            else layers.raw_activation(activation))
    ws = layers.weight_std_kwargs(weight_std)
    attention = params["attention"] if attention is None else attention
    feat_mult = params["feat_mult"] if feat_mult is None else feat_mult

    stem_ch = make_divisible((128 if stem_chs is None else stem_chs) * width, 8)
    stem = [(stem_ch // 8, 2), (stem_ch // 4, 1), (stem_ch // 2, 1), (stem_ch, 2)]
    self.stem_convs = [layers.WSConv2D(c, 3, stride=s, padding=_padding(3, s, padding),
                                       name=f"stem_conv{i}", **ws)
                       for i, (c, s) in enumerate(stem)]
    self.blocks: List[NFLBlock] = []
    schedule = iter(nf_betas_and_rates(self.depth_pattern, alpha, stochdepth_rate))
    ch = stem_ch
    for stage, (block_width, depth) in enumerate(zip(self.width_pattern, self.depth_pattern)):
      for block_index in range(depth):
        beta, rate = next(schedule)
        self.blocks.append(NFLBlock(
            ch, block_width, stride=2 if (block_index == 0 and stage > 0) else 1,
            beta=beta, alpha=alpha, bottleneck_ratio=bottleneck_ratio,
            group_size=group_size, attention=attention, se_ratio=se_ratio,
            activation=self.activation, stochdepth_rate=rate,
            grouped_conv_impl=grouped_conv_impl, padding=padding, weight_std=weight_std,
            name=f"nf_block_{len(self.blocks)}"))
        ch = block_width
    self.final_ch = make_divisible(int(channels[-1] * feat_mult) * width, 8)
    self.final_conv = layers.WSConv2D(self.final_ch, 1, padding="SAME", name="final_conv", **ws)
    fc_init = fc_init or hk.initializers.RandomNormal(0.01, 0.0)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def __call__(self, x: jax.Array, is_training: bool, return_metrics: bool = False) -> dict:
    check_input(x, self.module_name)
    outputs = {}
    out = x if self.gamma_in_act else x * self.input_gamma
    for i, conv in enumerate(self.stem_convs):
      out = conv(out)
      if i < len(self.stem_convs) - 1:
        out = self.activation(out)
    for i, block in enumerate(self.blocks):
      if self.remat == "blocks":
        out, res_var = hk.remat(lambda h, block=block: block(h, is_training))(out)
      else:
        out, res_var = block(out, is_training)
      if return_metrics:
        outputs.update(block_metrics(i, out, res_var))
    if not self.gamma_in_act:
      out = out * self.input_gamma
    out = self.head_activation(self.final_conv(out))
    pool = jnp.mean(out, axis=(1, 2))
    outputs["pool"] = pool
    outputs["logits"] = classifier_head(pool, self.fc, self.drop_rate, is_training)
    return outputs


# timm's constructor options for its NFNet-L weights (symmetric padding, gamma inside the
# next conv, timm's standardization epsilon) and its published weights: timm 1.0.31
# default_cfgs (crop_pct 0.9 at the train size, 1.0 at the test size) and top-1 at the test size
# from results-imagenet.csv (commit aa4b585).
TIMM_OPTIONS = dict(padding="symmetric", gamma_in_act=False, weight_std="timm")
_TIMM_WEIGHTS = {  # variant: (timm name, tag, top-1)
    "L0": ("nfnet_l0", "ra2_in1k", 82.766),
    "ECA-L0": ("eca_nfnet_l0", "ra2_in1k", 82.590),
    "ECA-L1": ("eca_nfnet_l1", "ra2_in1k", 84.062),
    "ECA-L2": ("eca_nfnet_l2", "ra3_in1k", 84.710),
}


def _published(variant: str, p: dict):
  if variant not in _TIMM_WEIGHTS:
    return ()
  timm_name, tag, top1 = _TIMM_WEIGHTS[variant]
  return (registry.Weights(
      source="timm", tag=tag, train_image_size=p["train_imsize"],
      eval=registry.timm_recipe(p["test_imsize"], 1.0), top1=top1,
      metrics_image_size=p["test_imsize"], metrics_source="timm results-imagenet.csv",
      license="apache-2.0", timm_name=timm_name, timm_overrides=TIMM_OPTIONS,
      timm_crop_pct=0.9),)


def _register():
  for v, p in NFNET_L_VARIANTS.items():
    name = ("eca_nfnet_" if v.startswith("ECA") else "nfnet_") + v.split("-")[-1].lower()
    register(name, NFNetL, dict(variant=v),
             train_image_size=p["train_imsize"], test_image_size=p["test_imsize"],
             drop_rate=p["drop_rate"], randaugment_layers=2, randaugment_magnitude=9,
             description=f"timm's {'ECA-' if v.startswith('ECA') else ''}NFNet-{v[-2:]} "
                         "(image sizes from timm; dropout and RandAugment are this "
                         "project's choice)",
             eval=registry.timm_recipe(p["test_imsize"], 1.0), weights=_published(v, p))


_register()
