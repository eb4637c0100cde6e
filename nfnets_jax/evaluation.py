"""Exact-once evaluation: top-1, top-5 and cross-entropy of a model over a whole split.

The eval iterator pads the last batches and marks real examples with ``mask``; every count here
is weighted by that mask, so each example of the split is counted exactly once whatever the
number of devices or hosts. Evaluation always runs in float32.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import parallel


def make_sum_fn(apply_fn: Callable) -> Callable:
  """Per-device sums for a batch: ``(params, model_state, batch) -> dict``.

  ``apply_fn(params, model_state, images)`` returns float32 logits (inference mode). ``batch``
  has ``images``, int ``labels`` and a 0/1 ``mask``.
  """

  def sum_fn(params, model_state, batch):
    logits = apply_fn(params, model_state, batch["images"]).astype(jnp.float32)
    labels = batch["labels"].astype(jnp.int32)
    mask = batch["mask"].astype(jnp.float32)
    num_classes = logits.shape[-1]
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    # Rank of the true class = number of classes with a strictly larger logit.
    rank = jnp.sum(logits > label_logit, axis=-1)
    loss = jax.nn.logsumexp(logits, axis=-1) - label_logit[:, 0]
    return {
        "top1": jnp.sum((rank < 1) * mask),
        "top5": jnp.sum((rank < min(5, num_classes)) * mask),
        "loss": jnp.sum(loss * mask),
        "count": jnp.sum(mask),
    }

  return sum_fn


def evaluate(eval_step: Callable, params, model_state, batches: Iterable,
             devices=None) -> Dict[str, float]:
  """Runs the pmapped ``eval_step`` over ``batches`` (host dicts shaped [local_devices, ...]).

  ``params``/``model_state`` are replicated. Returns ``top1``, ``top5`` and ``loss`` as
  fractions / means over the examples, and ``count`` (the number of examples seen).
  """
  totals = None
  for batch in parallel.prefetch(batches, devices=devices):
    sums = eval_step(params, model_state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("The evaluation split yielded no batches.")
  totals = {k: float(v) for k, v in parallel.unreplicate(totals).items()}
  count = totals["count"]
  if count <= 0:
    raise ValueError("The evaluation split has no (unmasked) examples.")
  return {"top1": totals["top1"] / count, "top5": totals["top5"] / count,
          "loss": totals["loss"] / count, "count": int(round(count))}
