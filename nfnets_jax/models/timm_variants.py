"""timm's own NF-ResNet and NF-RegNet shapes, which differ from DeepMind's models of those names.

timm (``timm/models/nfnet.py``, class ``NormFreeNet``) builds its ``nf_resnet*`` and
``nf_regnet_b*`` from one configurable pre-activation network that is not the 2021a paper's:

* every width is rounded with ``make_divisible(c * width_factor, 8)`` (NF-RegNet-B1: stem and
  stages 40/40/80/160/328 where DeepMind's has 36/36/78/156/330), squeeze-excite widths too;
* the shortcut is ResNet-D style: 2x2 average pool (ceil mode, valid-only average) then a 1x1
  conv, at every block whose stride or width changes;
* no ``skip_gain``: the last conv of each residual branch starts with gain 0 instead;
* the ResNet stem is a 7x7/2 conv then a 3x3/2 max-pool with padding 1 (symmetric);
* all convs use timm's symmetric padding (``get_padding``), the standardization adds its
  epsilon 1e-5 to the variance, and the activation gamma sits in the next conv
  (``gamma_in_act=False``): the first conv and ``final_conv`` see ``gamma * x`` and the head's
  activation has no gamma.

:class:`TimmNFNet` expresses those networks exactly (logits equal timm's up to float
rounding, checked in ``tests/weights/test_timm.py``); the registered names are
``timm_nf_resnet50`` and ``timm_nf_regnet_b1`` (the two with published weights) and
``timm_test_nfnet`` (timm's tiny ``test_nfnet``, built from :class:`NFNetL`).
Parameter names follow this package's convention: ``initial_conv``, ``nf_block_{i}/conv0..2``,
``conv_shortcut``, ``squeeze_excite/linear(_1)``, ``final_conv``, ``linear``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import layers
from nfnets_jax.models.parts import (block_metrics, channel_var, check_input, classifier_head,
                                     make_divisible, nf_betas_and_rates, zero_last_gain_creator)
from nfnets_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from nfnets_jax.models import registry
from nfnets_jax.models.nfnet_l import TIMM_OPTIONS, NFNetL
from nfnets_jax.models.registry import register


def max_pool_3x3_s2_symmetric(x: jax.Array) -> jax.Array:
  """3x3 / stride-2 max-pool padded by one (-inf) on every side, as torch's MaxPool2d(3, 2, 1)."""
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, window_dimensions=(1, 3, 3, 1), window_strides=(1, 2, 2, 1),
      padding=((0, 0), (1, 1), (1, 1), (0, 0)))


class TimmNFBlock(hk.Module):
  """timm's ``NormFreeBlock`` without ``conv2b``/skip gain: act(x)*beta -> 1x1 -> act -> 3x3
  (stride, groups) [-> SE x2 if ``reg``] -> act -> 1x1 [-> SE x2 if not ``reg``]."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1, beta: float = 1.0,
               alpha: float = 0.2, bottle_ratio: float = 0.25,
               group_size: Optional[int] = None, reg: bool = False,
               attention: Optional[str] = None, se_ratio: float = 0.25,
               activation=jax.nn.relu, stochdepth_rate: float = 0.0,
               weight_std: str = "timm", grouped_conv_impl: str = "auto",
               name: Optional[str] = None):
    super().__init__(name=name)
    self.in_ch, self.out_ch = in_ch, out_ch
    self.stride, self.beta, self.alpha = stride, beta, alpha
    self.activation = activation
    self.stochdepth_rate = stochdepth_rate
    self.reg = reg
    mid = make_divisible((in_ch if reg else out_ch) * bottle_ratio, 8)
    groups = 1 if not group_size else mid // group_size
    if groups < 1:
      raise ValueError(f"Block {in_ch}->{out_ch}: bottleneck of {mid} channels is smaller "
                       f"than group_size={group_size}.")
    if group_size and group_size % 8 == 0:
      mid = group_size * groups
    self.width, self.groups = mid, groups
    ws = layers.weight_std_kwargs(weight_std)
    pad = layers.symmetric_padding
    self.conv0 = layers.WSConv2D(mid, 1, padding=pad(1, 1), name="conv0", **ws)
    self.conv1 = layers.WSConv2D(mid, 3, stride=stride, padding=pad(3, stride),
                                 feature_group_count=groups,
                                 grouped_conv_impl=grouped_conv_impl, name="conv1", **ws)
    self.conv2 = layers.WSConv2D(out_ch, 1, padding=pad(1, 1), name="conv2", **ws)
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(out_ch, 1, padding=pad(1, 1),
                                           name="conv_shortcut", **ws)
    if attention == "se":
      se_ch = mid if reg else out_ch
      hidden = make_divisible(se_ch * se_ratio, 8, round_limit=0.0)
      self.se = layers.SqueezeExcite(se_ch, se_ch, hidden_ch=hidden)
    elif attention in (None, "none"):
      self.se = None
    else:
      raise ValueError(f"Unknown attention {attention!r}; choose 'se' or None.")

  def __call__(self, x: jax.Array, is_training: bool):
    out = self.activation(x) * self.beta
    shortcut = layers.nf_shortcut(
        x, out, self.stride, self.conv_shortcut if self.use_projection else None)
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    if self.se is not None and self.reg:
      out = 2 * self.se(out) * out
    with hk.custom_creator(zero_last_gain_creator):
      out = self.conv2(self.activation(out))
    if self.se is not None and not self.reg:
      out = 2 * self.se(out) * out
    res_var = channel_var(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    return out * self.alpha + shortcut, res_var


class TimmNFNet(hk.Module):
  """timm's ``NormFreeNet`` for its ResNet (``stem_type='7x7_pool'``) and RegNet
  (``stem_type='3x3'``, ``reg=True``) configurations; arguments mirror timm's ``NfCfg``.

  ``model(x, is_training, return_metrics=False)`` -> dict with ``logits`` and ``pool``.
  """

  def __init__(self, num_classes: int, depths: Sequence[int] = (3, 4, 6, 3),
               channels: Sequence[int] = (256, 512, 1024, 2048), stem_type: str = "7x7_pool",
               stem_chs: Optional[int] = None, group_size: Optional[int] = None,
               bottle_ratio: float = 0.25, width_factor: float = 1.0, reg: bool = False,
               attention: Optional[str] = None, se_ratio: float = 0.25,
               num_features: int = 0, activation: str = "relu", alpha: float = 0.2,
               stochdepth_rate: float = 0.1, drop_rate: float = 0.2,
               gamma_in_act: bool = False, weight_std: str = "timm",
               fc_init: Optional[hk.initializers.Initializer] = None,
               grouped_conv_impl: str = "auto", name: Optional[str] = "TimmNFNet"):
    super().__init__(name=name)
    if stem_type not in ("3x3", "7x7_pool"):
      raise ValueError(f"Unknown stem_type {stem_type!r}; choose '3x3' or '7x7_pool'.")
    self.num_classes = num_classes
    self.depth_pattern = tuple(depths)
    self.drop_rate = drop_rate
    self.stem_type = stem_type
    self.activation = layers.scaled_activation(activation)
    self.gamma_in_act = gamma_in_act
    self.input_gamma = 1.0 if gamma_in_act else layers.activation_gamma(activation)
    self.head_activation = (self.activation if gamma_in_act
                            else layers.raw_activation(activation))
    ws = layers.weight_std_kwargs(weight_std)
    # With gamma_in_act=False timm's blocks use plain activations and put gamma into the next
    # conv's scale: the same function as a gamma-scaled activation (conv is linear).
    block_act = self.activation

    ch = make_divisible((stem_chs or channels[0]) * width_factor, 8)
    k = 7 if stem_type == "7x7_pool" else 3
    self.initial_conv = layers.WSConv2D(ch, k, stride=2, padding=layers.symmetric_padding(k, 2),
                                        name="initial_conv", **ws)
    stem_stride = 4 if stem_type == "7x7_pool" else 2
    self.blocks: List[TimmNFBlock] = []
    schedule = iter(nf_betas_and_rates(self.depth_pattern, alpha, stochdepth_rate))
    for stage, depth in enumerate(self.depth_pattern):
      stride = 1 if stage == 0 and stem_stride > 2 else 2
      out_ch = make_divisible(channels[stage] * width_factor, 8)
      for block_index in range(depth):
        beta, rate = next(schedule)
        first = stage == 0 and block_index == 0
        self.blocks.append(TimmNFBlock(
            ch, out_ch, stride=stride if block_index == 0 else 1, beta=beta, alpha=alpha,
            bottle_ratio=1.0 if (reg and first) else bottle_ratio, group_size=group_size,
            reg=reg, attention=attention, se_ratio=se_ratio, activation=block_act,
            stochdepth_rate=rate, weight_std=weight_std,
            grouped_conv_impl=grouped_conv_impl, name=f"nf_block_{len(self.blocks)}"))
        ch = out_ch
    self.final_conv = None
    if num_features:
      self.final_ch = make_divisible(width_factor * num_features, 8)
      self.final_conv = layers.WSConv2D(self.final_ch, 1, padding=layers.symmetric_padding(1),
                                        name="final_conv", **ws)
    else:
      self.final_ch = ch
    fc_init = fc_init or hk.initializers.RandomNormal(0.01, 0.0)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def __call__(self, x: jax.Array, is_training: bool, return_metrics: bool = False) -> dict:
    check_input(x, self.module_name)
    outputs = {}
    out = self.initial_conv(x if self.gamma_in_act else x * self.input_gamma)
    if self.stem_type == "7x7_pool":
      out = max_pool_3x3_s2_symmetric(out)
    for i, block in enumerate(self.blocks):
      out, res_var = block(out, is_training)
      if return_metrics:
        outputs.update(block_metrics(i, out, res_var))
    if self.final_conv is not None:
      out = self.final_conv(out if self.gamma_in_act else out * self.input_gamma)
    out = self.head_activation(out)
    pool = jnp.mean(out, axis=(1, 2))
    outputs["pool"] = pool
    outputs["logits"] = classifier_head(pool, self.fc, self.drop_rate, is_training)
    return outputs


# timm's configurations (timm/models/nfnet.py: _nfres_cfg, _nfreg_cfg, model_cfgs).
TIMM_NF_RESNET50 = dict(depths=(3, 4, 6, 3), channels=(256, 512, 1024, 2048),
                        stem_type="7x7_pool", stem_chs=64, bottle_ratio=0.25,
                        activation="relu")
TIMM_NF_REGNET_B1 = dict(depths=(2, 4, 7, 7), channels=(48, 104, 208, 440), stem_type="3x3",
                         group_size=8, width_factor=0.75, bottle_ratio=2.25,
                         num_features=1280 * 440 // 440, reg=True, attention="se",
                         se_ratio=0.5, activation="silu")
# timm's tiny test_nfnet (NFNet-L-shaped) and the options that make NFNetL timm-exact.
TIMM_NFNET_L_OPTIONS = TIMM_OPTIONS  # the name earlier versions exported
TIMM_TEST_NFNET = dict(variant="L0", channels=(32, 64, 96, 128), depths=(1, 1, 1, 1),
                       feat_mult=1.5, group_size=8, bottleneck_ratio=0.25, attention="se",
                       se_ratio=0.25, activation="silu", **TIMM_OPTIONS)


def _timm_weights(timm_name, tag, train, test, crop_pct, top1, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD):
  """timm's published weights (timm 1.0.31 default_cfgs; top-1 at the test size from
  results-imagenet.csv, commit aa4b585)."""
  return (registry.Weights(
      source="timm", tag=tag, train_image_size=train,
      eval=registry.timm_recipe(test, crop_pct, mean=mean, std=std), top1=top1,
      metrics_image_size=test, metrics_source="timm results-imagenet.csv",
      license="apache-2.0", timm_name=timm_name, timm_crop_pct=crop_pct),)


def _register():
  # Image sizes from timm's pretrained cfgs; dropout/RandAugment are this project's choice.
  for name, kwargs, weights, description in (
      ("timm_nf_resnet50", TIMM_NF_RESNET50,
       _timm_weights("nf_resnet50", "ra2_in1k", 256, 288, 0.94, 80.658),
       "timm's nf_resnet50 (ResNet-D shortcut, no skip gain, symmetric padding); not "
       "DeepMind's NF-ResNet-50"),
      ("timm_nf_regnet_b1", dict(TIMM_NF_REGNET_B1, drop_rate=0.2),
       _timm_weights("nf_regnet_b1", "ra2_in1k", 256, 288, 0.9, 79.368),
       "timm's nf_regnet_b1 (make-divisible-by-8 widths); not DeepMind's NF-RegNet-B1"),
  ):
    weights_eval = weights[0].eval
    register(name, TimmNFNet, kwargs, train_image_size=256, test_image_size=288,
             drop_rate=0.2, randaugment_layers=2, randaugment_magnitude=9,
             description=description, eval=weights_eval, weights=weights)
  tiny = _timm_weights("test_nfnet", "r160_in1k", 160, 160, 0.95, 47.634, (0.5,) * 3,
                       (0.5,) * 3)
  register("timm_test_nfnet", NFNetL, dict(TIMM_TEST_NFNET, drop_rate=0.2),
           train_image_size=160, test_image_size=160, drop_rate=0.2,
           description="timm's tiny test_nfnet (for fast tests)", eval=tiny[0].eval,
           weights=tiny)


_register()
