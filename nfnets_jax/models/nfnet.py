"""NFNet F-series (F0-F7 and the wider F0+-F7+), section 2 of the project's facts.

Parameter names, shapes, initializers and the order in which parameters are created follow
DeepMind's reference, so its released checkpoints load without renaming and the same seed
gives the same initialization.

Signal metrics (``model(x, is_training, return_metrics=True)``), computed in float32:
  ``stem_avg_sq_mean``, ``stem_avg_var``: the stem output;
  ``block_{i}_avg_sq_mean``: mean over channels of the squared per-channel mean of block i's
    output (per-channel statistics over batch and space);
  ``block_{i}_avg_var``: mean over channels of the per-channel variance of block i's output;
  ``block_{i}_res_var``: the same average channel variance for the residual branch of block i
    (after squeeze-excite, before stochastic depth and ``skip_gain``).

Stacked blocks (the default, ``scan_blocks=True``): each stage's identically shaped blocks (all
but the first) are created as ONE module ``nf_blocks_{first}_to_{last}`` whose parameters carry
a leading block axis, and run as one ``lax.scan``; initial values equal the per-block model's
for the same seed (``stacking.stack_blocks`` of them). ``scan_blocks=False`` is the per-block
model of earlier versions. Either model applies parameters of either layout, so files with
per-block names (``models.stacking``) need no conversion to be evaluated.

``remat='blocks'`` recomputes each residual block's activations in the backward pass
(``hk.remat`` per block; for a scanned stage, of the scan body): less memory, same numbers.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import layers
from nfnets_jax.models import registry
from nfnets_jax.models import draw_ahead
from nfnets_jax.models import stacking
from nfnets_jax.models.parts import check_remat
from nfnets_jax.models.registry import register

_BASE_WIDTHS = (256, 512, 1536, 1536)
_PLUS_WIDTHS = (384, 768, 2048, 2048)
_STRIDES = (1, 2, 2, 2)
_GROUP_WIDTH = 128
_EXPANSION = 0.5

# variant -> depths and recipe metadata (facts, section 2). The "+" variants share depths and
# recipe with their base variant and only widen the stages.
_BASE = {
    "F0": dict(depths=(1, 2, 6, 3), train_image_size=192, test_image_size=256,
               randaugment_layers=4, randaugment_magnitude=5, drop_rate=0.2),
    "F1": dict(depths=(2, 4, 12, 6), train_image_size=224, test_image_size=320,
               randaugment_layers=4, randaugment_magnitude=10, drop_rate=0.3),
    "F2": dict(depths=(3, 6, 18, 9), train_image_size=256, test_image_size=352,
               randaugment_layers=4, randaugment_magnitude=10, drop_rate=0.4),
    "F3": dict(depths=(4, 8, 24, 12), train_image_size=320, test_image_size=416,
               randaugment_layers=4, randaugment_magnitude=15, drop_rate=0.4),
    "F4": dict(depths=(5, 10, 30, 15), train_image_size=384, test_image_size=512,
               randaugment_layers=4, randaugment_magnitude=15, drop_rate=0.5),
    "F5": dict(depths=(6, 12, 36, 18), train_image_size=416, test_image_size=544,
               randaugment_layers=4, randaugment_magnitude=15, drop_rate=0.5),
    "F6": dict(depths=(7, 14, 42, 21), train_image_size=448, test_image_size=576,
               randaugment_layers=4, randaugment_magnitude=15, drop_rate=0.5),
    "F7": dict(depths=(8, 16, 48, 24), train_image_size=480, test_image_size=608,
               randaugment_layers=4, randaugment_magnitude=15, drop_rate=0.5),
}

NFNET_VARIANTS: Dict[str, dict] = {}
for _name, _cfg in _BASE.items():
  NFNET_VARIANTS[_name] = dict(_cfg, widths=_BASE_WIDTHS)
  NFNET_VARIANTS[_name + "+"] = dict(_cfg, widths=_PLUS_WIDTHS)

# Exact parameter counts with 1000 classes (facts, section 2); asserted by the tests.
NFNET_PARAM_COUNTS = {
    "F0": 71_489_284, "F1": 132_634_256, "F2": 193_779_228, "F3": 254_924_200,
    "F4": 316_069_172, "F5": 377_214_144, "F6": 438_359_116, "F7": 499_504_088,
    "F0+": 118_824_516, "F1+": 220_357_008, "F2+": 321_889_500, "F3+": 423_421_992,
    "F4+": 524_954_484, "F5+": 626_486_976, "F6+": 728_019_468, "F7+": 829_551_960,
}


def canonical_variant(variant: str) -> str:
  """'F0', 'f0', 'F0+', 'f0_plus', 'F0plus' -> 'F0' / 'F0+'."""
  v = str(variant).strip().upper().replace("_PLUS", "+").replace("PLUS", "+")
  if v not in NFNET_VARIANTS:
    raise ValueError(
        f"Unknown NFNet variant {variant!r}; known: {', '.join(NFNET_VARIANTS)}.")
  return v


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """Static configuration of one NF block (``index`` counts over the whole network)."""
  index: int
  stage: int
  in_ch: int
  out_ch: int
  stride: int
  bottleneck_ch: int
  groups: int
  beta: float
  stochdepth_rate: float


def stem_channels(variant: str) -> int:
  """Output channels of ``stem_conv3``: ``widths[0] // 2``, never scaled by ``width``."""
  return NFNET_VARIANTS[canonical_variant(variant)]["widths"][0] // 2


def block_config(variant: str = "F0", width: float = 1.0, alpha: float = 0.2,
                 stochdepth_rate: float = 0.1,
                 group_width: Optional[int] = None) -> List[BlockSpec]:
  """Per-block widths, strides, groups, betas and stochastic-depth rates.

  ``beta = 1 / expected_std`` where expected_std is 1 at each stage's first block and grows
  as ``sqrt(expected_std**2 + alpha**2)`` after every block; block ``i`` of ``N`` drops with
  rate ``stochdepth_rate * i / N``.
  """
  cfg = NFNET_VARIANTS[canonical_variant(variant)]
  group_width = _GROUP_WIDTH if group_width is None else int(group_width)
  if group_width < 1:
    raise ValueError(f"group_width must be a positive integer, got {group_width}.")
  num_blocks = sum(cfg["depths"])
  specs = []
  in_ch = stem_channels(variant)
  expected_std = 1.0
  index = 0
  for stage, (stage_width, depth, stride) in enumerate(
      zip(cfg["widths"], cfg["depths"], _STRIDES)):
    out_ch = int(stage_width * width)
    groups = int(out_ch * _EXPANSION) // group_width
    if groups < 1:
      raise ValueError(
          f"NFNet-{canonical_variant(variant)} with width={width}: stage {stage} has "
          f"{out_ch} output channels, so its bottleneck ({int(out_ch * _EXPANSION)} channels) "
          f"holds zero groups of group_width={group_width}. Use a larger width or pass a "
          f"group_width <= {max(1, int(out_ch * _EXPANSION))}.")
    for block_index in range(depth):
      specs.append(BlockSpec(
          index=index, stage=stage, in_ch=in_ch, out_ch=out_ch,
          stride=stride if block_index == 0 else 1,
          bottleneck_ch=groups * group_width, groups=groups,
          beta=1.0 / expected_std,
          stochdepth_rate=stochdepth_rate * index / num_blocks))
      if block_index == 0:
        expected_std = 1.0
      expected_std = (expected_std ** 2 + alpha ** 2) ** 0.5
      in_ch = out_ch
      index += 1
  return specs


def identical_runs(specs: List[BlockSpec]) -> List[List[int]]:
  """Consecutive block indices grouped by shape (a stage's first block stands alone)."""
  def shape(spec):
    return (spec.stage, spec.in_ch, spec.out_ch, spec.stride, spec.bottleneck_ch, spec.groups)
  return [[spec.index for spec in group] for _, group in itertools.groupby(specs, key=shape)]


class NFBlock(hk.Module):
  """Pre-activation NFNet bottleneck block with two grouped 3x3 convs and SE.

  Returns ``(output, residual_branch_average_channel_variance)``.
  """

  def __init__(self, spec: BlockSpec, alpha: float = 0.2, se_ratio: float = 0.5,
               activation: str = "gelu", use_two_convs: bool = True,
               grouped_conv_impl: str = "auto", weight_std: str = "deepmind",
               name: Optional[str] = None):
    super().__init__(name=name)
    self.spec = spec
    # grouped_conv_impl reaches every conv: 'native' is the faithful path throughout.
    ws = dict(layers.weight_std_kwargs(weight_std), grouped_conv_impl=grouped_conv_impl)
    self.alpha = alpha
    self.activation = layers.scaled_activation(activation)
    self.use_two_convs = use_two_convs
    width, groups = spec.bottleneck_ch, spec.groups
    # Creation order (= naming) as in the reference; init order is the call order below.
    self.conv0 = layers.WSConv2D(width, 1, name="conv0", **ws)
    self.conv1 = layers.WSConv2D(width, 3, stride=spec.stride, feature_group_count=groups,
                                 name="conv1", **ws)
    if use_two_convs:
      self.conv1b = layers.WSConv2D(width, 3, feature_group_count=groups,
                                    name="conv1b", **ws)
    self.conv2 = layers.WSConv2D(spec.out_ch, 1, name="conv2", **ws)
    self.use_projection = spec.stride > 1 or spec.in_ch != spec.out_ch
    if self.use_projection:
      self.conv_shortcut = layers.WSConv2D(spec.out_ch, 1, name="conv_shortcut", **ws)
    self.se = layers.SqueezeExcite(spec.out_ch, spec.out_ch, se_ratio=se_ratio)

  def __call__(self, x: jax.Array, is_training: bool, beta=None, keep=None, rng=None):
    # beta/keep/rng override the spec's constants when one block's code runs a whole stage
    # in a scan (NFNet(scan_blocks=True)); keep = 1 - stochdepth_rate, rounded in float64.
    out = self.activation(x) * (self.spec.beta if beta is None else beta)
    shortcut = layers.nf_shortcut(
        x, out, self.spec.stride, self.conv_shortcut if self.use_projection else None)
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    if self.use_two_convs:
      out = self.conv1b(self.activation(out))
    out = self.conv2(self.activation(out))
    out = (self.se(out) * 2) * out
    res_var = jnp.mean(jnp.var(out.astype(jnp.float32), axis=(0, 1, 2)))
    if keep is None:
      out = layers.stochastic_depth(out, self.spec.stochdepth_rate, is_training)
    elif is_training:
      out = layers.drop_examples(out, keep, rng)
    skip_gain = hk.get_parameter("skip_gain", (), out.dtype, init=jnp.zeros)
    out = out * skip_gain
    return out * self.alpha + shortcut, res_var


class NFNet(hk.Module):
  """Normalizer-Free Network, F-series (see the module docstring for the metric keys)."""

  def __init__(self, num_classes: int, variant: str = "F0", width: float = 1.0,
               se_ratio: float = 0.5, alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: Optional[float] = None, activation: str = "gelu",
               fc_init=None, final_conv_mult: float = 2, final_conv_ch: Optional[int] = None,
               use_two_convs: bool = True, group_width: Optional[int] = None,
               grouped_conv_impl: str = "auto", weight_std: str = "deepmind",
               scan_blocks: bool = True, remat: str = "none", name: Optional[str] = "NFNet"):
    # weight_std="timm" with activation="gelu_exact" is timm's dm_nfnet_* (weights/timm.py).
    # scan_blocks (default True): stacked parameters and one lax.scan per run of identical
    # blocks, so XLA compiles one block per stage instead of every block (F7's first step:
    # docs/benchmarks.md "Time to first step"); False: the per-block model. remat: 'none' |
    # 'blocks' (module docstring).
    super().__init__(name=name)
    self.scan_blocks = bool(scan_blocks)
    self.remat = check_remat(remat)
    self.num_classes = num_classes
    self.variant = canonical_variant(variant)
    cfg = NFNET_VARIANTS[self.variant]
    self.width = width
    self.drop_rate = cfg["drop_rate"] if drop_rate is None else drop_rate
    self.activation = layers.scaled_activation(activation)
    layers.resolve_grouped_impl(grouped_conv_impl)  # Fail early on a bad name.
    self.block_specs = block_config(self.variant, width=width, alpha=alpha,
                                    stochdepth_rate=stochdepth_rate, group_width=group_width)
    self.betas = [s.beta for s in self.block_specs]
    self.stochdepth_rates = [s.stochdepth_rate for s in self.block_specs]

    ws = dict(layers.weight_std_kwargs(weight_std), grouped_conv_impl=grouped_conv_impl)
    self.stem_convs = [
        layers.WSConv2D(16, 3, stride=2, name="stem_conv0", **ws),
        layers.WSConv2D(32, 3, stride=1, name="stem_conv1", **ws),
        layers.WSConv2D(64, 3, stride=1, name="stem_conv2", **ws),
        layers.WSConv2D(stem_channels(self.variant), 3, stride=2, name="stem_conv3", **ws),
    ]
    block_kw = dict(alpha=alpha, se_ratio=se_ratio, activation=activation,
                    use_two_convs=use_two_convs, grouped_conv_impl=grouped_conv_impl,
                    weight_std=weight_std)
    self.blocks = [NFBlock(spec, **block_kw) for spec in self.block_specs]
    self.runs = identical_runs(self.block_specs)
    # One module per run of identical blocks: the owner of the stacked parameters (its code is
    # the scan body). Named after the run, so building it never renumbers the blocks.
    self.stacks = {
        run[0]: NFBlock(self.block_specs[run[0]], name=stacking.stack_name(run[0], run[-1]),
                        **block_kw)
        for run in self.runs if len(run) > 1}
    last_ch = self.block_specs[-1].out_ch
    if final_conv_ch is None:
      final_conv_ch = int(final_conv_mult * last_ch)
    self.final_conv = layers.WSConv2D(final_conv_ch, 1, name="final_conv", **ws)
    if fc_init is None:
      fc_init = hk.initializers.RandomNormal(stddev=0.01, mean=0.0)
    self.fc = hk.Linear(num_classes, w_init=fc_init, with_bias=True)

  def __call__(self, x: jax.Array, is_training: bool, return_metrics: bool = False) -> dict:
    if x.ndim != 4:
      raise ValueError(f"NFNet expects NHWC images, got shape {x.shape}.")
    outputs = {}
    out = x
    if hk.running_init():
      # Every key this init draws outside the runs' later blocks, queued as one scan (the
      # same keys): stem, each run's first block (at most 8 draws), final conv, fc, dropout.
      draw_ahead.queue_keys(len(self.stem_convs) + 8 * len(self.runs) + 3)
    for i, conv in enumerate(self.stem_convs):
      if i:
        out = self.activation(out)
      out = conv(out)
    if return_metrics:
      outputs.update(layers.signal_metrics(out.astype(jnp.float32), "stem"))
    initialising = hk.running_init()
    params = {} if initialising else hk.get_params()
    for run in self.runs:
      stack = self.stacks.get(run[0])
      stacked = stack is not None and stack.module_name in params
      if stack is not None and self.scan_blocks and initialising:
        out = self._init_stacked(run, out, is_training, outputs if return_metrics else None)
      elif (stack is not None and self.scan_blocks and not return_metrics
            and not layers.recording_folds()):
        out = self._scan_run(run, out, is_training, params if stacked else None)
      else:
        for k, i in enumerate(run):
          out, res_var = self._block(self.blocks[i], out, is_training,
                                     k if stacked else None, stack)
          if return_metrics:
            outputs.update(layers.signal_metrics(out.astype(jnp.float32), f"block_{i}"))
            outputs[f"block_{i}_res_var"] = res_var
    out = self.activation(self.final_conv(out))
    pool = jnp.mean(out, axis=(1, 2))
    outputs["pool"] = pool
    if is_training and self.drop_rate > 0.0:
      pool = layers.dropout(pool, self.drop_rate, hk.next_rng_key())
    outputs["logits"] = self.fc(pool)
    return outputs

  def _remat(self, fn):
    return hk.remat(fn) if self.remat == "blocks" else fn

  def _block(self, block: "NFBlock", x: jax.Array, is_training: bool,
             slot: Optional[int] = None, stack: Optional["NFBlock"] = None):
    """One block; with ``slot``, its parameters are slice ``slot`` of ``stack``'s."""
    def run(h):
      if slot is None:
        return block(h, is_training)
      with _read_from(block.module_name, lambda key, name: _param(stack, key, name)[slot]):
        return block(h, is_training)
    return self._remat(run)(x)

  def _init_stacked(self, run: List[int], x: jax.Array, is_training: bool,
                    metrics: Optional[dict]) -> jax.Array:
    """Initialises a run's stacked parameters with the per-block model's values.

    The blocks run one by one, drawing their initial values (and stochastic-depth keys) in
    the per-block model's order, without storing them; the run's module then stores the
    stacked values. The keys are queued ahead and the blocks after the first take their
    values from one vmapped initializer per parameter (``draw_ahead.RunInit``), so a jitted
    init compiles per run what it used to compile per block.
    """
    plan = draw_ahead.RunInit.start(len(run))
    values: Dict[tuple, list] = {}
    for b, i in enumerate(run):
      block = self.blocks[i]
      def creator(next_creator, shape, dtype, init, context, block=block, b=b):
        del next_creator
        key = (context.module_name[len(block.module_name):], context.name)
        values.setdefault(key, []).append(plan.create(key, b, shape, dtype, init))
        return hk.DO_NOT_STORE
      with hk.custom_creator(creator), _read_from(
          block.module_name, lambda key, name: values[(key, name)][-1], create=False):
        x, res_var = block(x, is_training)
      if b == 0:
        plan.first_block_done()
      if metrics is not None:
        metrics.update(layers.signal_metrics(x.astype(jnp.float32), f"block_{i}"))
        metrics[f"block_{i}_res_var"] = res_var
    stack = self.stacks[run[0]]
    def stacked_creator(next_creator, shape, dtype, init, context):
      del init
      key = (context.module_name[len(stack.module_name):], context.name)
      return next_creator((len(run),) + tuple(shape), dtype,
                          lambda *_: plan.stacked(key, values[key]))
    def first(next_getter, value, context):
      if context.module_name.startswith(stack.module_name):
        value = value[0]
      return next_getter(value)
    with hk.custom_creator(stacked_creator), hk.custom_getter(first):
      # Creates the stacked parameters. An empty batch: no compute, and MAC counters that
      # intercept module calls (research/flops.py) count nothing for it.
      stack(x[:0], False)
    return x

  def _scan_run(self, run: List[int], x: jax.Array, is_training: bool,
                params: Optional[dict]) -> jax.Array:
    """Blocks ``run`` (identical shapes) as one scan of the run module's code, over the
    stacked parameters (``params`` given) or the blocks' own, stacked on the fly."""
    stack = self.stacks[run[0]]
    if params is not None:
      stacked = {key[len(stack.module_name):]: params[key] for key in params
                 if key == stack.module_name or key.startswith(stack.module_name + "/")}
    else:
      all_params = hk.get_params()
      def block_params(block):
        name = block.module_name
        return {key[len(name):]: all_params[key] for key in all_params
                if key == name or key.startswith(name + "/")}
      stacked = jax.tree_util.tree_map(lambda *p: jnp.stack(p),
                                       *[block_params(self.blocks[i]) for i in run])
    specs = [self.block_specs[i] for i in run]
    xs = {"params": stacked, "beta": jnp.asarray([s.beta for s in specs], x.dtype)}
    if is_training and any(s.stochdepth_rate for s in specs):
      # Keys drawn in block order, as the unrolled blocks draw them.
      xs["keep"] = jnp.asarray([1.0 - s.stochdepth_rate for s in specs], x.dtype)
      xs["rng"] = jnp.stack([hk.next_rng_key() for _ in specs])

    def body(h, x_i):
      with _read_from(stack.module_name, lambda key, name: x_i["params"][key][name]):
        h, _ = stack(h, is_training, beta=x_i["beta"], keep=x_i.get("keep"),
                     rng=x_i.get("rng"))
      return h, None

    out, _ = hk.scan(self._remat(body), x, xs)
    return out


def _param(stack: "NFBlock", key: str, name: str) -> jax.Array:
  return hk.get_params()[stack.module_name + key][name]


class _read_from:  # pylint: disable=invalid-name
  """Context: parameters of module ``owner`` (and below) come from ``read(key, name)`` (``key``
  the module path below ``owner``), whether or not they are stored under ``owner``."""

  def __init__(self, owner: str, read, create: bool = True):
    self.owner, self.read, self.create = owner, read, create

  def __enter__(self):
    owner, read = self.owner, self.read

    def mine(context):
      return context.module_name == owner or context.module_name.startswith(owner + "/")

    def creator(next_creator, shape, dtype, init, context):
      return hk.DO_NOT_STORE if mine(context) else next_creator(shape, dtype, init)

    def getter(next_getter, value, context):
      if mine(context):
        value = read(context.module_name[len(owner):], context.name)
      return next_getter(value)

    self._contexts = [hk.custom_getter(getter)]
    if self.create:  # parameters absent from the params: nothing to store, read() supplies them
      self._contexts.insert(0, hk.custom_creator(creator))
    for c in self._contexts:
      c.__enter__()
    return self

  def __exit__(self, *exc):
    for c in reversed(self._contexts):
      c.__exit__(*exc)


# Published weights (facts, sections 7-8): DeepMind's released pickles with their MD5 and the
# paper's top-1/top-5 at the test size; timm's dm_nfnet_* copies of the same weights with timm's
# eval crop (timm 1.0.31 default_cfgs) and its measured top-1 (results-imagenet.csv, commit
# aa4b585). timm's models use exact GELU and its own standardization epsilon: TIMM_OPTIONS.
DEEPMIND_MD5 = {
    "F0": "0a41039da1cb43adf47f1b7d86ddfe0f", "F1": "c9126bbfaf855f9ddb7ff3b902558781",
    "F2": "7a018d8d1498020e2f5a8719a1e7f53f", "F3": "d8e1e78d26db659c486150dbaccbe78a",
    "F4": "f5974a7e3388aa81b91a9f1403e759a4", "F5": "8639e925de951030651ac775b9f915c3",
    "F6": "b16cca40ac1ecec2bd5e3273866da0c1",
}
_PAPER_TOP1_TOP5 = {"F0": (83.6, 96.8), "F1": (84.7, 97.1), "F2": (85.1, 97.3),
                    "F3": (85.7, 97.5), "F4": (85.9, 97.6), "F5": (86.0, 97.6),
                    "F6": (86.5, 97.9)}
_TIMM_CROP_PCT = {"F0": 0.9, "F1": 0.91, "F2": 0.92, "F3": 0.94, "F4": 0.951, "F5": 0.954,
                  "F6": 0.956}
_TIMM_TOP1 = {"F0": 83.468, "F1": 84.700, "F2": 85.184, "F3": 85.676, "F4": 85.838,
              "F5": 86.102, "F6": 86.364}
TIMM_OPTIONS = dict(activation="gelu_exact", weight_std="timm")
WEIGHTS_LICENSE = "apache-2.0"  # as timm labels the dm_in1k weights; deepmind-research's license


def _published(variant: str, cfg: dict):
  if variant not in DEEPMIND_MD5:
    return ()
  train, test = cfg["train_image_size"], cfg["test_image_size"]
  top1, top5 = _PAPER_TOP1_TOP5[variant]
  return (
      registry.Weights(
          source="deepmind", tag="dm_in1k", train_image_size=train,
          eval=registry.resize_crop_32(test), top1=top1, top5=top5, metrics_image_size=test,
          metrics_source="Brock et al. 2021b / deepmind-research README" +
          (" (trained with SAM)" if variant == "F6" else ""),
          license=WEIGHTS_LICENSE, file=f"{variant}_haiku.npz", md5=DEEPMIND_MD5[variant]),
      registry.Weights(
          source="timm", tag="dm_in1k", train_image_size=train,
          eval=registry.timm_recipe(test, _TIMM_CROP_PCT[variant], "squash"),
          top1=_TIMM_TOP1[variant], metrics_image_size=test,
          metrics_source="timm results-imagenet.csv", license=WEIGHTS_LICENSE,
          timm_name=f"dm_nfnet_{variant.lower()}", timm_overrides=TIMM_OPTIONS,
          timm_crop_pct=_TIMM_CROP_PCT[variant]),
  )


def _register_all():
  for variant, cfg in NFNET_VARIANTS.items():
    name = "nfnet_" + variant.lower().replace("+", "_plus")
    register(name, NFNet, dict(variant=variant),
             train_image_size=cfg["train_image_size"],
             test_image_size=cfg["test_image_size"],
             drop_rate=cfg["drop_rate"],
             randaugment_layers=cfg["randaugment_layers"],
             randaugment_magnitude=cfg["randaugment_magnitude"],
             description=f"NFNet-{variant} ({NFNET_PARAM_COUNTS[variant]:,} parameters "
                         "with 1000 classes).",
             weights=_published(variant, cfg))


_register_all()
