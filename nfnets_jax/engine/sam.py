"""Sharpness-Aware Minimization (Foret et al. 2021) as the NFNet paper used it.

SAM replaces the gradient at the parameters ``w`` by the gradient at ``w + eps``, where
``eps = rho * g / ||g||`` and ``g`` (the "ascent" gradient) is the loss gradient at ``w``; the
optimizer chain (AGC, weight decay, momentum) then runs unchanged on that descent gradient, and
AGC clips it against the unperturbed ``w`` (``steps.make_update_fn`` sees only ``w``).

What we follow: Brock et al. 2021 (arXiv 2102.06171) train F5 and F6 with SAM (86.3 / 86.5
top-1) in a cheaper form, the ascent gradient per replica and from a fraction (20%) of each
replica's batch. The shared facts sheet records only that F6 was trained with SAM; the form and
the values (fraction 0.2, rho 0.05 in ``configs/nfnet.py``) are our reading of the paper and
were not re-checked against its appendix text when this was written. Our choices:

- The ascent gradient is per replica: each device perturbs its own copy of ``w`` with the
  gradient of its own examples, with no cross-device reduction; only the descent gradients are
  averaged (by the engine). Foret et al.'s data-parallel SAM does the same (their section 4.1,
  "m-sharpness", m = the per-replica batch). ``sync=True`` is the form of common single-process
  implementations: the ascent gradient is averaged over all devices first, so every replica
  uses the same ``eps`` (one more all-reduce per step).
- The cheap variant: the ascent gradient comes from the first ``batch_fraction`` of each
  replica's (micro-)batch; the descent gradient always uses the whole (micro-)batch. At
  fraction 1.0 a step costs about two forward-backward passes.
- Gradient accumulation (k micro-batches per device): the engine calls the gradient function
  once per micro-batch, so each micro-batch is one SAM replica with its own ``eps``. A run on
  ``n`` devices with ``k`` micro-batches therefore computes exactly the step of ``n * k`` devices
  without accumulation (tests/engine/test_sam.py checks this); the paper ran without
  accumulation, one replica per accelerator core. Unlike plain training, the SAM step thus
  depends on the micro-batch size (the replica size m), not only on the global batch.
- ``||g||`` is the global L2 norm over all trained parameters; parameters frozen by
  ``optimizer.freeze`` are not perturbed (nor counted in the norm). ``eps`` is float32 and added
  to the float32 master weights; the loss casts ``w + eps`` to the compute dtype (bfloat16 too).
- Both passes use the step's key, so stochastic depth and dropout drop the same examples' paths
  in both (with ``layers.example_ids`` set, the ascent pass keeps its examples' ids).
- The model state (e.g. BatchNorm statistics) and the metrics (loss, top-1) returned are those
  of the descent pass, i.e. measured at ``w + eps``; the ascent pass's are discarded.
- ``rho = 0`` is plain training: ``wrap`` returns the gradient function unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from nfnets_jax import layers
from nfnets_jax import optim

# A norm below this gives no perturbation (e.g. an all-zero gradient) instead of a NaN.
_NORM_EPS = 1e-12


def resolve(sam_config) -> dict:
  """``config.sam`` (or None) as ``dict(rho, batch_fraction, sync)``, with clear errors."""
  given = dict(sam_config.items()) if sam_config is not None else {}
  known = {"rho", "batch_fraction", "sync"}
  unknown = sorted(set(given) - known)
  if unknown:
    raise ValueError(f"Unknown config.sam field(s) {unknown}; known fields: {sorted(known)}.")
  rho = float(given.get("rho", 0.0) or 0.0)
  fraction = float(given.get("batch_fraction", 1.0))
  if rho < 0:
    raise ValueError(f"config.sam.rho must be >= 0 (0 = no SAM), got {rho}.")
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"config.sam.batch_fraction must be in (0, 1], got {fraction}.")
  return dict(rho=rho, batch_fraction=fraction, sync=bool(given.get("sync", False)))


def ascent_size(batch: int, fraction: float) -> int:
  """How many leading examples of a (micro-)batch of ``batch`` the ascent gradient uses."""
  return min(batch, max(1, int(round(fraction * batch))))


def perturbation(grads, rho: float):
  """``rho * g / ||g||`` (global L2 norm over every leaf), float32."""
  grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  scale = rho / (norm + _NORM_EPS)
  return jax.tree.map(lambda g: g * scale, grads)


def wrap(grad_fn: Callable, *, rho: float, batch_fraction: float = 1.0, sync: bool = False,
         axis_name: Optional[Any] = None, freeze: str = "") -> Callable:
  """SAM around ``grad_fn(params, model_state, batch, rng) -> (grads, (model_state, metrics))``.

  Returns a function of the same signature that returns the descent gradient (see the module
  docstring). ``sync=True`` averages the ascent gradient over ``axis_name`` (the engine's device
  axis name or names) and needs it; ``freeze`` is ``optimizer.freeze`` (regex of parameter
  paths not trained, hence not perturbed).
  """
  if not rho:
    return grad_fn
  if sync and axis_name is None:
    raise ValueError("config.sam.sync=True averages the ascent gradient over the devices: the "
                     "engine must pass its device axis name (make_grad_fn(..., axis_name=...)).")

  def sam_grad_fn(params, model_state, batch, rng):
    size = jax.tree.leaves(batch)[0].shape[0]
    m = ascent_size(size, batch_fraction)
    ids = layers.current_example_ids()
    if m < size:
      sub = jax.tree.map(lambda x: x[:m], batch)
      if ids is not None:
        with layers.example_ids(ids[:m]):
          ascent, _ = grad_fn(params, model_state, sub, rng)
      else:
        ascent, _ = grad_fn(params, model_state, sub, rng)
    else:
      ascent, _ = grad_fn(params, model_state, batch, rng)
    if sync:
      ascent = jax.lax.pmean(ascent, axis_name)
    if freeze:
      mults = optim.update_multipliers(params, freeze=freeze)
      # A multiplier is a number, or an array over a stack's leading (block) axis shaped to
      # broadcast (some blocks of the stack frozen): zero where frozen.
      ascent = jax.tree.map(lambda g, k: g * (jnp.asarray(k) != 0).astype(g.dtype), ascent,
                            mults)
    eps = perturbation(ascent, rho)
    perturbed = jax.tree.map(lambda p, e: (p + e).astype(p.dtype), params, eps)
    return grad_fn(perturbed, model_state, batch, rng)

  return sam_grad_fn
