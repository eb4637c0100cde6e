"""Building blocks shared by the Normalizer-Free model family.

Everything here follows section 1 of the project's facts (``shared/reference/NFNETS_FACTS.md``):
the scaled weight-standardized convolution, the gamma-scaled activations, squeeze-excite and
per-example stochastic depth without rescaling.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Callable, Optional, Sequence, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

# gamma such that gamma * f(z) has (approximately) unit variance for z ~ N(0, 1).
ACTIVATION_GAMMAS = {
    "identity": 1.0,
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "glu": 1.8484294414520264,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "soft_sign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}

# The raw nonlinearities. GELU is the tanh approximation, as in the reference.
_RAW_ACTIVATIONS = {
    "identity": lambda x: x,
    "celu": jax.nn.celu,
    "elu": jax.nn.elu,
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    # Exact (erf) GELU, as timm's dm_nfnet_* models use; same gamma as "gelu".
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "glu": jax.nn.glu,
    "leaky_relu": jax.nn.leaky_relu,
    "log_sigmoid": jax.nn.log_sigmoid,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "selu": jax.nn.selu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "soft_sign": jax.nn.soft_sign,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}

# Aliases people commonly type.
_ALIASES = {"swish": "silu", "linear": "identity", "none": "identity"}
# Activations that share another one's gamma.
_GAMMA_OF = {"gelu_exact": "gelu"}


def raw_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the unscaled nonlinearity ``f`` for ``name``."""
  key = _ALIASES.get(name, name)
  if key not in _RAW_ACTIVATIONS:
    raise ValueError(
        f"Unknown activation {name!r}; known: {sorted(_RAW_ACTIVATIONS)}")
  return _RAW_ACTIVATIONS[key]


def activation_gamma(name: str) -> float:
  """Returns gamma for ``name`` (see ``ACTIVATION_GAMMAS``)."""
  key = _ALIASES.get(name, name)
  key = _GAMMA_OF.get(key, key)
  if key not in ACTIVATION_GAMMAS:
    raise ValueError(
        f"Unknown activation {name!r}; known: {sorted(ACTIVATION_GAMMAS)}")
  return ACTIVATION_GAMMAS[key]


def scaled_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns ``x -> gamma * f(x)``, variance preserving for unit-Gaussian input."""
  fn = raw_activation(name)
  gamma = activation_gamma(name)
  if gamma == 1.0:
    return fn
  return lambda x: fn(x) * gamma


# Back-compat style table: name -> gamma-scaled callable.
nonlinearities = {name: scaled_activation(name) for name in _RAW_ACTIVATIONS}


# ------------------------------------------------------------------------------------------
# Grouped convolution implementations.
# ------------------------------------------------------------------------------------------
GROUPED_CONV_IMPLS = ("auto", "native", "split")


def resolve_grouped_impl(impl: str) -> str:
  """The implementation ``impl`` runs as on this backend ('auto' -> 'native' or 'split')."""
  if impl not in GROUPED_CONV_IMPLS:
    raise ValueError(
        f"Unknown grouped_conv_impl {impl!r}; choose one of {GROUPED_CONV_IMPLS}.")
  if impl == "auto":
    # XLA:CPU runs feature_group_count convolutions several times slower than the same work
    # expressed as one ordinary convolution per group; GPU/TPU have fast native kernels.
    return "split" if jax.default_backend() == "cpu" else "native"
  return impl


def _is_pointwise(w, strides, padding) -> bool:
  if w.shape[:2] != (1, 1) or tuple(strides) != (1, 1):
    return False
  if isinstance(padding, str):
    return padding in ("SAME", "VALID")
  return all(tuple(p) == (0, 0) for p in padding)


def conv2d(x, w, stride, padding, groups: int, impl: str = "auto"):
  """NHWC x HWIO convolution with ``groups`` feature groups.

  ``impl='native'`` uses ``feature_group_count``; ``impl='split'`` runs one ordinary
  convolution per group and concatenates, and a 1x1 stride-1 ungrouped conv as a matmul
  (identical math, faster on XLA:CPU); ``'auto'`` picks per backend.
  """
  dn = ("NHWC", "HWIO", "NHWC")
  strides = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
  impl = resolve_grouped_impl(impl)
  if impl == "split" and _is_pointwise(w, strides, padding) and groups == 1:
    # A 1x1 stride-1 conv is a matmul over (batch * height * width, channels). XLA:CPU runs
    # its gradients ~2x faster as dots (the weight gradient of the conv form transposes both
    # operands); same sums, so the same numbers to float32 rounding.
    b, h, wd, c = x.shape
    y = jnp.dot(x.reshape(b * h * wd, c), w.reshape(c, w.shape[3]))
    return y.reshape(b, h, wd, w.shape[3])
  if impl == "native" or groups == 1:
    return jax.lax.conv_general_dilated(
        x, w, window_strides=strides, padding=padding, dimension_numbers=dn,
        feature_group_count=groups)
  cin_g = w.shape[2]
  cout_g = w.shape[3] // groups
  outs = []
  for g in range(groups):
    xg = jax.lax.slice_in_dim(x, g * cin_g, (g + 1) * cin_g, axis=3)
    wg = jax.lax.slice_in_dim(w, g * cout_g, (g + 1) * cout_g, axis=3)
    outs.append(jax.lax.conv_general_dilated(
        xg, wg, window_strides=strides, padding=padding, dimension_numbers=dn))
  return jnp.concatenate(outs, axis=3)


# ------------------------------------------------------------------------------------------
# Scaled weight-standardized convolution.
# ------------------------------------------------------------------------------------------
# Weight-standardization styles (``WSConv2D(**weight_std_kwargs(style))``): DeepMind's reference
# floors ``var * fan_in`` at 1e-4; timm's ScaledStdConv2d adds 1e-5 to ``var``.
WEIGHT_STD_STYLES = {
    "deepmind": dict(eps=1e-4, eps_mode="floor"),
    "timm": dict(eps=1e-5, eps_mode="add"),
}


def weight_std_kwargs(style: str) -> dict:
  """``eps``/``eps_mode`` of WSConv2D for a style in ``WEIGHT_STD_STYLES``."""
  if style not in WEIGHT_STD_STYLES:
    raise ValueError(
        f"Unknown weight_std {style!r}; choose one of {sorted(WEIGHT_STD_STYLES)}.")
  return dict(WEIGHT_STD_STYLES[style])


def symmetric_padding(kernel_size: int, stride: int = 1):
  """timm's ``get_padding``: ``((stride - 1) + (kernel_size - 1)) // 2`` on every side.

  For odd kernels it equals XLA "SAME" at stride 1 and on odd input sizes; a stride-2 3x3 conv
  on an even input differs ("SAME" pads (0, 1), this pads (1, 1)).
  """
  p = ((stride - 1) + (kernel_size - 1)) // 2
  return ((p, p), (p, p))


def standardize_weight(w: jax.Array, gain: jax.Array, eps: float = 1e-4,
                       eps_mode: str = "floor") -> jax.Array:
  """Scaled weight standardization of an HWIO kernel, per output channel.

  ``eps_mode="floor"`` (the reference): ``scale = rsqrt(max(var * fan_in, eps)) * gain``;
  ``eps_mode="add"`` (timm): ``scale = rsqrt(fan_in * (var + eps)) * gain``;
  then ``w_hat = w * scale - mean * scale``.
  """
  mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
  var = jnp.var(w, axis=(0, 1, 2), keepdims=True)
  fan_in = np.prod(w.shape[:-1])
  if eps_mode == "floor":
    scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * gain
  elif eps_mode == "add":
    scale = jax.lax.rsqrt((var + eps) * fan_in) * gain
  else:
    raise ValueError(f"Unknown eps_mode {eps_mode!r}; choose 'floor' or 'add'.")
  shift = mean * scale
  return w * scale - shift


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def standardize_weight_fast(w: jax.Array, gain: jax.Array, eps: float = 1e-4,
                            eps_mode: str = "floor") -> jax.Array:
  """:func:`standardize_weight` with a hand-written backward pass (same forward).

  Autodiff of the standardization leaves XLA:CPU strided reductions over the fan-in that run
  4-6x slower than this closed form. With ``xc = w - mean``, ``s = sum(xc**2)`` (= var * fan_in)
  and ``inv = rsqrt(max(s, eps))`` (floor) or ``rsqrt(s + eps * fan_in)`` (add), ``w_hat = xc *
  inv * gain``, per output channel:
  ``d gain = inv * sum(g * xc)``; ``d xc = g * inv * gain - xc * inv**3 * gain * sum(g * xc)``
  (the second term vanishes where the floor is active); ``d w = d xc - mean(d xc)``
  (computed as ``g * inv * gain + xc * coef - mean(g) * inv * gain``, as mean(xc) = 0).
  No forward-mode derivative (``jax.jvp``); use :func:`standardize_weight` for that.
  """
  return standardize_weight(w, gain, eps, eps_mode)


def _standardize_fast_fwd(w, gain, eps, eps_mode):
  c = w.shape[-1]
  w2 = w.reshape(-1, c)
  fan_in = w2.shape[0]
  mean = jnp.mean(w2, axis=0)
  xc = w2 - mean
  ssq = jnp.sum(xc * xc, axis=0)
  if eps_mode == "floor":
    inv = jax.lax.rsqrt(jnp.maximum(ssq, eps))
    active = ssq >= eps
  elif eps_mode == "add":
    inv = jax.lax.rsqrt(ssq + eps * fan_in)
    active = jnp.ones_like(ssq, dtype=bool)
  else:
    raise ValueError(f"Unknown eps_mode {eps_mode!r}; choose 'floor' or 'add'.")
  # Residuals: the parameter itself (alive anyway) and per-channel vectors; xc is recomputed in
  # the backward pass (fused there) instead of being kept, so no kernel-sized buffer is saved.
  return standardize_weight(w, gain, eps, eps_mode), (w, mean, inv, gain, active)


def _standardize_fast_bwd(eps, eps_mode, res, g):
  del eps, eps_mode
  w, mean, inv, gain, active = res
  shape = g.shape
  xc = w.reshape(-1, shape[-1]) - mean
  g2 = g.reshape(xc.shape)
  s = jnp.sum(g2 * xc, axis=0)
  g_mean = jnp.mean(g2, axis=0)
  d_gain = s * inv
  a = inv * gain
  coef = jnp.where(active, -(s * gain) * inv * inv * inv, jnp.zeros_like(inv))
  # d_w = d_xc - mean(d_xc) with d_xc = g * a + xc * coef; mean(xc) = 0, so one elementwise
  # pass after the two reductions (no kernel-sized temporary for d_xc).
  d_w = g2 * a + xc * coef - g_mean * a
  return d_w.reshape(shape), d_gain.reshape(gain.shape)


standardize_weight_fast.defvjp(_standardize_fast_fwd, _standardize_fast_bwd)


# Opt-in: WSConv2D on the 'split' (CPU) path uses standardize_weight_fast. Off by default: in the
# F0 train step it saves ~4% of the step time (XLA:CPU, issue 15) but raises XLA's live-buffer
# estimate from 1.76 to 1.92 GiB (+3.5% max RSS); read at trace time.
FAST_WS_BACKWARD = False


# Inference folding: at eval time the standardized weights are constants of the parameters, so
# `fold_weight_standardization` computes them once and `folded_weights()` makes every WSConv2D
# use its `w` as the final kernel (see the functions at the end of this module).
_FOLD = threading.local()


def _fold_mode() -> Optional[str]:
  return getattr(_FOLD, "mode", None)


class WSConv2D(hk.Module):
  """2D convolution with Scaled Weight Standardization and an affine gain.

  Parameters: ``w`` (HWIO, VarianceScaling(1, fan_in, normal)), ``gain`` (ones) and
  ``bias`` (zeros), created in that order.
  """

  def __init__(self,
               output_channels: int,
               kernel_shape: Union[int, Sequence[int]] = 1,
               stride: Union[int, Sequence[int]] = 1,
               padding: str = "SAME",
               feature_group_count: int = 1,
               eps: float = 1e-4,
               w_init: Optional[hk.initializers.Initializer] = None,
               grouped_conv_impl: str = "auto",
               eps_mode: str = "floor",
               name: Optional[str] = None):
    super().__init__(name=name)
    self.output_channels = output_channels
    self.kernel_shape = ((kernel_shape, kernel_shape) if isinstance(kernel_shape, int)
                         else tuple(kernel_shape))
    self.stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    self.padding = padding
    self.feature_group_count = feature_group_count
    self.eps = eps
    self.eps_mode = eps_mode  # "floor" (DeepMind) or "add" (timm); see standardize_weight.
    self.w_init = w_init or hk.initializers.VarianceScaling(1.0, "fan_in", "normal")
    self.grouped_conv_impl = grouped_conv_impl

  def __call__(self, x: jax.Array) -> jax.Array:
    in_ch = x.shape[-1]
    groups = self.feature_group_count
    if in_ch % groups or self.output_channels % groups:
      raise ValueError(
          f"{self.module_name}: channels ({in_ch} in, {self.output_channels} out) are not "
          f"divisible by feature_group_count={groups}.")
    w_shape = self.kernel_shape + (in_ch // groups, self.output_channels)
    w = hk.get_parameter("w", w_shape, x.dtype, init=self.w_init)
    gain = hk.get_parameter("gain", (self.output_channels,), x.dtype, init=jnp.ones)
    mode = _fold_mode()
    if mode == "consume":
      weight = w  # Already standardized by fold_weight_standardization.
    elif FAST_WS_BACKWARD and resolve_grouped_impl(self.grouped_conv_impl) == "split":
      weight = standardize_weight_fast(w, gain, self.eps, self.eps_mode)
    else:
      weight = standardize_weight(w, gain, self.eps, self.eps_mode)
    if mode == "record":
      _FOLD.weights[self.module_name] = weight
    out = conv2d(x, weight, self.stride, self.padding, groups, self.grouped_conv_impl)
    bias = hk.get_parameter("bias", (self.output_channels,), x.dtype, init=jnp.zeros)
    return out + bias


# ------------------------------------------------------------------------------------------
# Squeeze-excite and stochastic depth.
# ------------------------------------------------------------------------------------------
class SqueezeExcite(hk.Module):
  """Spatial mean -> Linear(hidden) -> ReLU -> Linear(out_ch) -> sigmoid.

  ``hidden = max(1, int(in_ch * se_ratio))`` unless ``hidden_ch`` is given. Returns the
  (B, 1, 1, C) gate; callers multiply their branch by ``2 * gate`` for NFNets.
  """

  def __init__(self, in_ch: int, out_ch: int, se_ratio: float = 0.5,
               hidden_ch: Optional[int] = None,
               activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.in_ch = in_ch
    self.out_ch = out_ch
    self.hidden_ch = hidden_ch if hidden_ch is not None else max(1, int(in_ch * se_ratio))
    self.activation = activation
    # Created in the constructor so that Haiku names them `.../~/linear`, as the reference.
    self.fc0 = hk.Linear(self.hidden_ch, with_bias=True)
    self.fc1 = hk.Linear(self.out_ch, with_bias=True)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.mean(x, axis=(1, 2))
    h = self.activation(self.fc0(h))
    h = jax.nn.sigmoid(self.fc1(h))
    return h[:, None, None, :]


def stochastic_depth(x: jax.Array, drop_rate: float, is_training: bool,
                     rng: Optional[jax.Array] = None) -> jax.Array:
  """Drops whole examples with probability ``drop_rate``; never rescales.

  ``mask = floor(1 - drop_rate + U[0, 1))`` with shape ``[B, 1, ..., 1]``; identity at eval.
  """
  if not is_training or not drop_rate:
    return x
  return drop_examples(x, 1.0 - drop_rate, hk.next_rng_key() if rng is None else rng)


def drop_examples(x: jax.Array, keep, rng: jax.Array) -> jax.Array:
  """``x * floor(keep + U[0, 1))`` per example; ``keep`` may be traced (scanned blocks)."""
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  r = example_uniform(rng, shape, x.dtype)
  return x * jnp.floor(keep + r)


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Inverted dropout (``hk.dropout``'s rule: keep with 1 - rate, scale by 1 / (1 - rate)), with
  each example's mask drawn from its own id (:func:`example_uniform`)."""
  if not rate:
    return x
  keep = 1.0 - rate
  mask = example_uniform(rng, x.shape, x.dtype) < keep
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


# Layout-free randomness. Stochastic depth and dropout draw example i's uniforms from
# ``fold_in(rng, id_i)``, where ``id_i`` is the example's index in the global batch of the step
# (set by the engine, see ``example_ids``; ``arange(batch)`` when unset). The key ``rng`` is the
# same on every device, so one device, eight devices, pmap and the mesh engine, with or without
# gradient accumulation, draw the same masks for the same examples.
_IDS = threading.local()


@contextlib.contextmanager
def example_ids(ids: jax.Array):
  """Within the block, per-example random draws use ``ids`` (int [batch]: each example's index in
  the global batch) instead of ``arange(batch)``."""
  prev = getattr(_IDS, "ids", None)
  _IDS.ids = ids
  try:
    yield
  finally:
    _IDS.ids = prev


def current_example_ids() -> Optional[jax.Array]:
  """The ids set by the innermost :func:`example_ids`, or None."""
  return getattr(_IDS, "ids", None)


def example_uniform(rng: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """U[0, 1) of ``shape`` (leading axis = examples); example i's draw comes from
  ``fold_in(rng, id_i)`` alone, so it does not depend on how the batch is split."""
  batch = shape[0]
  ids = current_example_ids()
  if ids is None:
    ids = jnp.arange(batch, dtype=jnp.int32)
  elif ids.shape != (batch,):
    raise ValueError(
        f"example_ids has shape {ids.shape} but the batch has {batch} examples: set "
        "layers.example_ids to the ids of exactly the examples the model is applied to.")
  draw = lambda i: jax.random.uniform(jax.random.fold_in(rng, i), tuple(shape[1:]), dtype)
  return jax.vmap(draw)(ids)


class StochDepth(hk.Module):
  """Module form of :func:`stochastic_depth` (no parameters)."""

  def __init__(self, drop_rate: float, name: Optional[str] = None):
    super().__init__(name=name)
    self.drop_rate = drop_rate

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    return stochastic_depth(x, self.drop_rate, is_training)


def avg_pool_2x2_same(x: jax.Array) -> jax.Array:
  """2x2 / stride-2 average pool with XLA 'SAME' padding, as ``hk.avg_pool(..., 'SAME')``.

  The odd row/column is padded bottom/right and edge windows are averaged over their valid
  elements. Written with a reshape instead of ``reduce_window``: XLA:CPU (jax 0.10.2) returns
  wrong sums from the SAME-padded reduce_window on 1x1 inputs once batch x channels >= 4096.
  """
  b, h, w, c = x.shape
  ph, pw = h % 2, w % 2
  pad = ((0, 0), (0, ph), (0, pw), (0, 0))
  ho, wo = (h + ph) // 2, (w + pw) // 2
  total = jnp.pad(x, pad).reshape(b, ho, 2, wo, 2, c).sum(axis=(2, 4))
  if not (ph or pw):
    return total * 0.25
  counts = np.pad(np.ones((1, h, w, 1), np.float32), pad).reshape(1, ho, 2, wo, 2, 1).sum((2, 4))
  return total / jnp.asarray(counts, x.dtype)


def nf_shortcut(x: jax.Array, out: jax.Array, stride: int,
                conv_shortcut: Optional[Callable[[jax.Array], jax.Array]]) -> jax.Array:
  """The NFNet-style shortcut of a pre-activation block.

  ``x`` is the block input and ``out = act(x) * beta``. At stride 2: 2x2 average pool of ``out``
  then the 1x1 ``conv_shortcut``; with a projection at stride 1: ``conv_shortcut(out)``;
  otherwise the raw ``x``.
  """
  if stride > 1:
    return conv_shortcut(avg_pool_2x2_same(out))
  if conv_shortcut is not None:
    return conv_shortcut(out)
  return x


def signal_metrics(x: jax.Array, prefix: str) -> dict:
  """Average channel squared mean and average channel variance of NHWC ``x``."""
  metrics = {}
  metrics[f"{prefix}_avg_sq_mean"] = jnp.mean(jnp.mean(x, axis=(0, 1, 2)) ** 2)
  metrics[f"{prefix}_avg_var"] = jnp.mean(jnp.var(x, axis=(0, 1, 2)))
  return metrics


def count_params(params) -> int:
  """Total number of scalars in a parameter tree (works on ShapeDtypeStructs too)."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------------------
# Inference folding of the weight standardization.
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def folded_weights():
  """Within this context every WSConv2D takes its ``w`` as the final, standardized kernel.

  Apply a model to the output of :func:`fold_weight_standardization` inside it (trace time is
  what matters: wrap the ``apply`` call that ``jax.jit`` traces). Eval only.
  """
  prev = _fold_mode()
  _FOLD.mode = "consume"
  try:
    yield
  finally:
    _FOLD.mode = prev


def recording_folds() -> bool:
  """True while :func:`fold_weight_standardization` runs the model to record its kernels: a
  model with scanned stages then runs block by block (a scan body cannot hand values out)."""
  return _fold_mode() == "record"


def fold_weight_standardization(forward, params, state, sample_images):
  """Parameters for inference: each WSConv2D's ``w`` replaced by its standardized kernel.

  ``forward`` is the ``hk.transform_with_state`` of the model (called as ``forward.apply(params,
  state, rng, images, is_training)``); it is run once, in eval mode, on ``sample_images`` (any
  batch and size the model accepts, e.g. one small image), and every WSConv2D records the kernel
  it computes, with its own ``eps``/``eps_mode``, so the fold always matches the model. ``gain``
  is kept (unused under :func:`folded_weights`) so the tree keeps its structure. Use the result
  only inside :func:`folded_weights`; the logits then equal the unfolded model's to float32
  rounding, without standardizing ~all parameters on every forward pass.
  """
  def record(params, state, images):
    prev = _fold_mode()
    _FOLD.mode, _FOLD.weights = "record", {}
    try:
      forward.apply(params, state, None, images, False)
      return dict(_FOLD.weights)
    finally:
      _FOLD.mode = prev
      _FOLD.weights = {}

  weights = jax.jit(record)(params, state, sample_images)
  out = {k: dict(v) for k, v in params.items()}
  missing = sorted(set(weights) - set(out))
  if missing:
    raise ValueError(
        f"fold_weight_standardization: the model ran convolutions {missing[:3]}... that are "
        "not modules of params; pass per-block parameters (models.unstack_blocks(params)).")
  for name, kernel in weights.items():
    out[name]["w"] = kernel.astype(params[name]["w"].dtype)
  return type(params)(out) if isinstance(params, dict) else out
