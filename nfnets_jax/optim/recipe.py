"""The NFNet optimizer recipe: learning-rate schedule, optimizer builder, parameter EMA.

Section 5 of the project's facts. The default recipe (``sgd_agc``) is, per optimizer step on the
gradient averaged over the whole global batch:

  g <- AGC(g)                       (classifier weight excluded, preset 'reference')
  g <- g + wd * p                   (coupled decay, not on gains/biases/skip gains, see below)
  m <- momentum * m + g;  u <- g + momentum * m   (Nesterov; u <- m without it)
  p <- p - lr * u

Alternatives, by ``name``: ``sgd`` (no clipping), ``sgd_global_clip`` (global-norm clipping to
``global_clip_norm`` instead of AGC, the ablation baseline) and ``adamw`` (AGC when
``clipping`` > 0, then Adam, then decoupled decay ``wd * p`` scaled by the learning rate, as
``optax.adamw``). The learning rate lives in an ``optax.inject_hyperparams`` state so
``get_learning_rate(opt_state)`` can log it; every step count (schedule, warm-up,
``total_steps``) is in optimizer steps, not micro-batches. Gradient accumulation and skipping
non-finite steps are the engine's (``engine/parallel.py``, ``engine/steps.py``), not wrappers
of this optimizer.
"""
from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nfnets_jax.optim import agc

KNOWN_OPTIMIZERS = ("sgd_agc", "sgd", "sgd_global_clip", "adamw")
KNOWN_SCHEDULES = ("cosine", "constant")

# Parameter names that never get weight decay. Together with the shape rule in
# ``weight_decay_mask`` this covers WSConv2D gains/biases, linear biases, skip gains and the
# scale/offset of normalization layers in the BN baselines.
NO_DECAY_NAMES = frozenset({"b", "bias", "gain", "skip_gain", "scale", "offset"})


def default_optimizer_config() -> ml_collections.ConfigDict:
  """``config.optimizer`` with the NFNet ImageNet recipe's values (facts, section 5)."""
  return ml_collections.ConfigDict(dict(
      name="sgd_agc",
      base_lr=0.1,
      lr_scale_batch=256,
      warmup_epochs=5.0,
      schedule="cosine",
      end_lr=0.0,
      momentum=0.9,
      nesterov=True,
      weight_decay=2e-5,
      clipping=0.01,
      agc_eps=1e-3,
      agc_exclude="reference",
      global_clip_norm=1.0,
      adam_b1=0.9,
      adam_b2=0.999,
      adam_eps=1e-8,
      # Fine-tuning: a regex over parameter paths ('module/name') whose updates are zeroed
      # (e.g. '^(?!.*/~/linear/)' trains only the classifier: a linear probe), and a learning
      # rate multiplier for every parameter outside the classifier.
      freeze="",
      body_lr_mult=1.0,
  ))


def resolve_config(opt_config) -> ml_collections.ConfigDict:
  """Defaults overlaid with ``opt_config``; typos and unknown names fail loudly.

  Consumers read the resolved config, so every default lives in ``default_optimizer_config``.
  """
  cfg = default_optimizer_config()
  given = dict(opt_config.items()) if opt_config is not None else {}
  unknown = sorted(set(given) - set(cfg.keys()))
  if unknown:
    raise ValueError(
        f"Unknown optimizer config field(s) {unknown}; known fields: {sorted(cfg.keys())}.")
  with cfg.ignore_type():
    for key, value in given.items():
      cfg[key] = value
  if cfg.name not in KNOWN_OPTIMIZERS:
    raise ValueError(f"Unknown optimizer name {cfg.name!r}; known names: {KNOWN_OPTIMIZERS}.")
  if cfg.schedule not in KNOWN_SCHEDULES:
    raise ValueError(
        f"Unknown learning-rate schedule {cfg.schedule!r}; known schedules: {KNOWN_SCHEDULES}.")
  if not 0.0 <= float(cfg.momentum) < 1.0:
    raise ValueError(f"optimizer.momentum must be in [0, 1), got {cfg.momentum}.")
  if float(cfg.weight_decay) < 0.0:
    raise ValueError(f"optimizer.weight_decay must be >= 0, got {cfg.weight_decay}.")
  if cfg.name == "sgd_agc" and not (cfg.clipping and float(cfg.clipping) > 0):
    raise ValueError(
        f"optimizer 'sgd_agc' needs clipping > 0 (got {cfg.clipping}); use name='sgd' for no "
        "clipping.")
  if cfg.name == "sgd_global_clip" and not float(cfg.global_clip_norm or 0) > 0:
    raise ValueError(f"'sgd_global_clip' needs global_clip_norm > 0, got {cfg.global_clip_norm}.")
  return cfg


def uses_agc(opt_config) -> bool:
  """Whether the optimizer clips with AGC: ``sgd_agc``, or ``adamw`` with ``clipping`` > 0."""
  cfg = resolve_config(opt_config)
  return cfg.name == "sgd_agc" or (cfg.name == "adamw" and float(cfg.clipping or 0) > 0)


def agc_clip_kwargs(opt_config) -> dict:
  """``clipping``, ``eps`` and ``mask`` of the optimizer's AGC (for ``agc.adaptive_grad_clip``
  and ``agc.clip_stats``)."""
  cfg = resolve_config(opt_config)
  return dict(clipping=float(cfg.clipping), eps=float(cfg.agc_eps),
              mask=functools.partial(agc.exclusion_mask, spec=cfg.agc_exclude))


def peak_learning_rate(opt_config, batch_size: int) -> float:
  """``base_lr * batch_size / lr_scale_batch``; no scaling when ``lr_scale_batch`` is 0/None."""
  cfg = resolve_config(opt_config)
  if cfg.lr_scale_batch:
    return float(cfg.base_lr) * batch_size / float(cfg.lr_scale_batch)
  return float(cfg.base_lr)


def learning_rate_schedule(opt_config, *, batch_size: int, steps_per_epoch: float,
                           total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over ``warmup_epochs`` epochs, then cosine decay or constant.

  ``cosine``: ``end_lr + (peak - end_lr) * (1 + cos(pi * progress)) / 2`` with progress going
  from 0 at the end of warm-up to 1 at ``total_steps`` (held at ``end_lr`` after).
  ``constant``: the peak after warm-up. The value at step ``t`` is the rate of update ``t``
  (0-based), so update 0 of a warmed-up schedule has learning rate 0.
  """
  cfg = resolve_config(opt_config)
  if batch_size <= 0 or steps_per_epoch <= 0 or total_steps <= 0:
    raise ValueError(
        "learning_rate_schedule needs positive batch_size, steps_per_epoch and total_steps; got "
        f"{batch_size}, {steps_per_epoch}, {total_steps}.")
  peak = peak_learning_rate(cfg, batch_size)
  end = float(cfg.end_lr)
  warmup = int(round(float(cfg.warmup_epochs) * steps_per_epoch))
  decay_steps = max(int(total_steps) - warmup, 1)
  schedule_name = cfg.schedule

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warm = peak * t / max(warmup, 1)
    if schedule_name == "constant":
      after = jnp.full_like(t, peak)
    else:
      progress = jnp.clip((t - warmup) / decay_steps, 0.0, 1.0)
      after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(t < warmup, warm, after)

  return schedule


def weight_decay_mask(params):
  """True where weight decay applies, decided by name and shape, never by position.

  No decay for a parameter named in ``NO_DECAY_NAMES`` (``b``, ``bias``, ``gain``,
  ``skip_gain``, ``scale``, ``offset``) nor for any parameter with at most one non-singleton
  dimension (scalars, vectors, gains stored as (C, 1, 1, 1)). Everything else (conv and linear
  ``w``, including the classifier and the squeeze-excite linears) decays.
  """

  def decays(key_path, leaf):
    name = agc.path_name(key_path[-1:]) if key_path else ""
    shape = np.shape(leaf)
    if agc.stacked_range(agc.path_name(key_path)):
      shape = shape[1:]  # one block's shape (stacked blocks)
    big_dims = sum(int(d) != 1 for d in shape)
    return name not in NO_DECAY_NAMES and big_dims >= 2

  return jax.tree_util.tree_map_with_path(decays, params)


def update_multipliers(params, freeze: str = "", body_lr_mult: float = 1.0):
  """A tree like ``params`` of python floats: 0 for paths matching the ``freeze`` regex, 1 for
  the classifier (``agc.find_classifier``), ``body_lr_mult`` for everything else.

  The regex sees per-block paths (``NFNet/~/nf_block_5/~/conv1/w``) also for stacked blocks;
  freezing some blocks of a stack gives a float array over its leading (block) axis."""
  head = agc.find_classifier(params)
  pattern = re.compile(freeze) if freeze else None

  def one(path, stacked_path):
    if pattern is not None and (pattern.search(path) or pattern.search(stacked_path)):
      return 0.0
    return 1.0 if path.rsplit("/", 1)[0] == head else body_lr_mult

  def multiplier(key_path, leaf):
    path = agc.path_name(key_path)
    return agc.per_block([one(b, path) for b in agc.block_paths(path)], np.ndim(leaf))

  return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_path(multipliers_fn) -> optax.GradientTransformation:
  """Multiplies each update by ``multipliers_fn(params)`` (a tree of constants by path)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_path needs params (the multipliers depend on their paths).")
    mults = multipliers_fn(params)
    return jax.tree.map(lambda u, m: u if isinstance(m, float) and m == 1.0
                        else (u * m).astype(u.dtype), updates, mults), state

  return optax.GradientTransformation(init_fn, update_fn)


def build_optimizer(opt_config, *, batch_size: int, steps_per_epoch: float,
                    total_steps: int) -> optax.GradientTransformation:
  """The optimizer of ``opt_config`` (``config.optimizer``), ready for ``init``/``update``.

  ``update`` must be given params (AGC and weight decay need them) and the gradient of the
  whole global batch: one call is one optimizer step.
  """
  cfg = resolve_config(opt_config)
  schedule = learning_rate_schedule(
      cfg, batch_size=batch_size, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  name = cfg.name
  momentum = float(cfg.momentum)
  nesterov = bool(cfg.nesterov)
  weight_decay = float(cfg.weight_decay)
  use_agc = uses_agc(cfg)

  def make_chain(learning_rate):
    parts = []
    if use_agc:
      parts.append(agc.adaptive_grad_clip(**agc_clip_kwargs(cfg)))
    elif name == "sgd_global_clip":
      parts.append(optax.clip_by_global_norm(float(cfg.global_clip_norm)))
    if name == "adamw":
      parts.append(optax.scale_by_adam(
          b1=float(cfg.adam_b1), b2=float(cfg.adam_b2), eps=float(cfg.adam_eps)))
      if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    else:
      if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
      if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    if cfg.freeze or float(cfg.body_lr_mult) != 1.0:
      parts.append(scale_by_path(functools.partial(
          update_multipliers, freeze=cfg.freeze, body_lr_mult=float(cfg.body_lr_mult))))
    return optax.chain(*parts)

  return optax.inject_hyperparams(make_chain)(learning_rate=schedule)


def get_learning_rate(opt_state) -> jax.Array:
  """The learning rate of the latest update (of update 0 right after ``init``).

  With a pmapped (replicated) state it returns one value per device.
  """
  hyperparams = getattr(opt_state, "hyperparams", None)
  if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
    raise ValueError(
        "No injected 'learning_rate' found in this optimizer state; build the optimizer with "
        "optim.build_optimizer (which uses optax.inject_hyperparams).")
  return hyperparams["learning_rate"]


def ema_decay_at(step, decay: float) -> jax.Array:
  """The reference's warmed-up EMA decay ``min(decay, (1 + t) / (10 + t))`` at step ``t``."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def ema_update(ema_params, params, step, decay: float):
  """``ema <- d * ema + (1 - d) * params`` with ``d = ema_decay_at(step, decay)``; jittable.

  ``step`` is the 0-based index of the optimizer update just applied (0 after the first), so
  the first call uses d = 0.1. Accumulation is in (at least) float32; the EMA keeps its own dtypes.
  """
  d = ema_decay_at(step, decay)

  def mix(e, p):
    dtype = jnp.promote_types(e.dtype, jnp.float32)
    return (d.astype(dtype) * e.astype(dtype)
            + (1 - d.astype(dtype)) * p.astype(dtype)).astype(e.dtype)

  return jax.tree.map(mix, ema_params, params)
