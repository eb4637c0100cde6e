"""The step functions of the engine: forward, loss and gradient, optimizer update, eval logits.

Pure functions of a config, shared by training (``train.py``), evaluation (``evaluation.py``)
and ``pretrained``; the only module that wraps them in ``pmap`` is ``parallel.py``.

Numerics: parameters, gradients, optimizer state and the EMA are float32; the forward and
backward passes run in ``config.compute_dtype`` (params and images cast inside the loss, logits
cast back to float32); evaluation is float32. A non-finite loss or gradient never changes the
state: ``make_update_fn`` keeps the old values and counts the step. This guard and the
micro-batch accumulation of ``parallel.make_train_step`` are the only ones: the optimizer
(``optim.build_optimizer``) has neither.
"""
from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax.engine import sam
from nfnets_jax.optim import agc

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}


REMAT_MODES = ("none", "blocks")


def make_forward(config, num_classes: int) -> hk.TransformedWithState:
  """``models.transform`` of ``config.model`` with ``config.model_kwargs`` (and
  ``remat=config.remat`` when rematerialization is on: same numbers, less activation memory)."""
  kwargs = dict(config.get("model_kwargs", {}).items())
  remat = config.get("remat", "none")
  if remat != "none":
    kwargs["remat"] = remat
  return models.transform(config.model, num_classes, **kwargs)


def cast_floats(tree, dtype):
  """Casts every floating-point leaf of ``tree`` to ``dtype`` (integers are left alone)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def smoothed_cross_entropy(logits, labels, label_smoothing: float):
  """Mean softmax cross-entropy against soft ``labels`` smoothed toward uniform."""
  num_classes = labels.shape[-1]
  labels = labels * (1.0 - label_smoothing) + label_smoothing / num_classes
  return jnp.mean(optax.softmax_cross_entropy(logits, labels))


def make_grad_fn(forward, config, axis_name=None):
  """``(params, model_state, batch, rng) -> (grads, (model_state, metrics))`` on one micro-batch.

  With ``config.sam.rho > 0`` the gradient is SAM's descent gradient (``sam.py``: per-replica
  ascent, optionally from a fraction of the micro-batch); ``axis_name`` (the engine's device
  axis name or names) is used only by its synchronised form ``config.sam.sync``.
  """
  dtype = _DTYPES[config.compute_dtype]
  label_smoothing = float(config.label_smoothing)

  def loss_fn(params, model_state, batch, rng):
    images = batch["images"].astype(dtype)
    out, new_state = forward.apply(cast_floats(params, dtype), model_state, rng, images, True)
    logits = out["logits"].astype(jnp.float32)
    labels = batch["labels"].astype(jnp.float32)
    loss = smoothed_cross_entropy(logits, labels, label_smoothing)
    top1 = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
    # Keep the model state's dtypes (BatchNorm statistics stay float32).
    new_state = jax.tree.map(lambda n, o: n.astype(o.dtype), new_state, model_state)
    return loss, (new_state, {"loss": loss, "top1": top1})

  def grad_fn(params, model_state, batch, rng):
    grads, aux = jax.grad(loss_fn, has_aux=True)(params, model_state, batch, rng)
    return grads, aux

  sam_config = sam.resolve(config.get("sam", None))
  freeze = optim.resolve_config(config.optimizer).freeze if sam_config["rho"] else ""
  return sam.wrap(grad_fn, **sam_config, axis_name=axis_name, freeze=freeze)


def make_train_state(params, model_state, tx, rng, with_ema: bool) -> dict:
  """The step-0 state that ``make_update_fn`` and ``parallel.make_train_step`` take; jittable."""
  state = {
      "params": params,
      "model_state": model_state,
      "opt_state": tx.init(params),
      "step": jnp.zeros([], jnp.int32),
      "rng": rng,
      "nonfinite_count": jnp.zeros([], jnp.int32),
      "first_nonfinite_step": jnp.full([], -1, jnp.int32),
  }
  if with_ema:
    state["ema_params"] = jax.tree.map(jnp.copy, params)
  return state


def make_update_fn(tx, config):
  """``(state, grads, model_state, metrics) -> (state, metrics)``: one optimizer step.

  Gradients arrive averaged over the global batch. A non-finite loss or gradient leaves params,
  optimizer state, EMA and model state untouched and records the step.
  """
  ema_decay = config.get("ema_decay", None)
  opt = config.optimizer
  clip_kwargs = optim.agc_clip_kwargs(opt) if optim.uses_agc(opt) else None
  nan_step = config.get("debug_nan_at_step", None)
  nan_step = -1 if nan_step is None else int(nan_step)

  def update_fn(state, grads, model_state, metrics):
    step = state["step"]
    params = state["params"]
    if nan_step >= 0:  # Test hook: poison this step's loss and gradients.
      poison = jnp.where(step == nan_step, jnp.nan, 1.0)
      grads = jax.tree.map(lambda g: g * poison, grads)
      metrics = dict(metrics, loss=metrics["loss"] * poison)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = grad_norm
    metrics["learning_rate"] = optim.get_learning_rate(new_opt_state)
    if clip_kwargs is not None:
      metrics.update(agc.clip_stats(grads, params, **clip_kwargs, per_group=False))
    new_state = dict(state)
    new_state["params"] = new_params
    new_state["opt_state"] = new_opt_state
    new_state["model_state"] = model_state
    if ema_decay is not None:
      new_state["ema_params"] = optim.ema_update(state["ema_params"], new_params, step,
                                                 float(ema_decay))
    # Never apply a non-finite update.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    for key in ("params", "opt_state", "model_state", "ema_params"):
      if key in state:
        new_state[key] = keep(new_state[key], state[key])
    new_state["nonfinite_count"] = state["nonfinite_count"] + (~finite).astype(jnp.int32)
    new_state["first_nonfinite_step"] = jnp.where(
        (~finite) & (state["first_nonfinite_step"] < 0), step, state["first_nonfinite_step"])
    new_state["step"] = step + 1
    metrics["nonfinite"] = (~finite).astype(jnp.float32)
    return new_state, metrics

  return update_fn


def make_eval_apply(forward, flip: bool = False):
  """float32 inference logits: ``(params, model_state, images) -> logits``.

  ``flip=True`` (``config.eval_flip``, off by default) averages the logits of each image and
  its left-right mirror: test-time augmentation for datasets trained with flips.
  """

  def apply(params, model_state, images):
    params = cast_floats(params, jnp.float32)
    images = images.astype(jnp.float32)
    out, _ = forward.apply(params, model_state, None, images, False)
    if not flip:
      return out["logits"]
    mirrored, _ = forward.apply(params, model_state, None, images[:, :, ::-1], False)
    return (out["logits"] + mirrored["logits"]) / 2

  return apply
