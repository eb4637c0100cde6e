"""Exact-once evaluation: top-1, top-5 and cross-entropy over a whole split, and
``evaluate_checkpoint`` (any checkpoint, any test set) built on it.

The eval iterator pads the last batches and marks real examples with ``mask``; every count here
is weighted by that mask, so each example of the split is counted exactly once whatever the
number of devices or hosts. Evaluation always runs in float32.

``evaluate_checkpoint`` accepts every source ``pretrained.load`` reads (a training workdir of
ours with raw and EMA parameters, timm folders and files, DeepMind's released
``F*_haiku.npz``, converted ``.npz``): with a config it uses the config's model (checked
against the weights) and eval recipe (for ``configs/nfnet.py:F*``: the variant's test
resolution with the reference's ``resize_crop_32``), without one the source's own.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax import data
from nfnets_jax import models
from nfnets_jax import pretrained
from nfnets_jax.engine import imagenet_real
from nfnets_jax.engine import parallel
from nfnets_jax.engine import reporting
from nfnets_jax.engine import steps
from nfnets_jax.errors import CheckpointError, EvaluationError

# Alternative ImageNet test sets by TFDS name -> default split.
EVAL_DATASETS = {
    "imagenet2012": "validation",
    "imagenet_v2": "test",
    "imagenet2012_real": "validation",
}


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
             devices=None, engine: Optional[parallel.Engine] = None) -> Dict[str, float]:
  """Runs the engine's ``eval_step`` over ``batches`` (host dicts shaped [local_devices, ...]).

  ``params``/``model_state`` are on the devices as ``engine`` (default: pmap over ``devices``)
  placed them. Returns ``top1``, ``top5`` and ``loss`` as
  fractions / means over the examples, and ``count`` (the number of examples seen).
  """
  totals = sum_over(eval_step, params, model_state, batches, devices, engine)
  count = totals["count"]
  if count <= 0:
    raise EvaluationError("The evaluation split has no (unmasked) examples.")
  return {"top1": totals["top1"] / count, "top5": totals["top5"] / count,
          "loss": totals["loss"] / count, "count": int(round(count))}


def eval_config(config, *, dataset: Optional[str] = None, split: Optional[str] = None,
                image_size: Optional[int] = None, batch_size: Optional[int] = None,
                data_dir: Optional[str] = None):
  """A copy of ``config`` pointed at the requested test set, size and batch."""
  c = copy.deepcopy(config)
  ctx = c.unlocked() if hasattr(c, "unlocked") else None
  if ctx is not None:
    ctx.__enter__()
  try:
    if dataset:
      c.dataset = dataset
      if split is None:
        split = EVAL_DATASETS.get(dataset, c.eval_split)
    if split:
      c.eval_split = split
    if data_dir:
      c.data_dir = data_dir
    # Only the eval split is read; pointing the train split at it keeps dataset-info checks
    # working for test-only datasets such as imagenet_v2.
    c.train_split = c.eval_split
    if image_size:
      c.eval_image_size = int(image_size)
      c.train_image_size = int(image_size)
    else:
      c.train_image_size = int(c.eval_image_size)
    if batch_size:
      c.eval_batch_size = int(batch_size)
  finally:
    if ctx is not None:
      ctx.__exit__(None, None, None)
  return c


def _with_progress(batches, num_batches: int, log: Callable[[str], None], label: str):
  start = time.time()
  every = max(1, num_batches // 10)
  for i, batch in enumerate(batches):
    yield batch
    done = i + 1
    if done % every == 0 or done == num_batches:
      elapsed = time.time() - start
      eta = elapsed / done * max(num_batches - done, 0)
      log(f"  [{label}] batch {done}/{num_batches} ({100 * done / num_batches:.0f}%) "
          f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s")


def sum_over(eval_step: Callable, params, model_state, batches, devices=None,
             engine: Optional[parallel.Engine] = None) -> Dict[str, float]:
  """Totals of the engine's ``eval_step`` over ``batches``, summed over devices and hosts."""
  engine = engine or parallel.PmapEngine(devices or jax.local_devices(), devices)
  totals = None
  for batch in engine.batches(batches):
    sums = eval_step(params, model_state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise EvaluationError("The evaluation split yielded no batches.")
  return {k: float(v) for k, v in engine.get(totals).items()}


RECIPES = ("source", "config")


def source_config(model: pretrained.Pretrained, base_config=None, recipe: str = "source"):
  """An eval config for weights loaded by ``pretrained.load``: the model from the source; the
  data from ``base_config`` (or the config saved in a workdir); with ``recipe='source'`` the
  source's own eval size, resize/crop and normalization, with ``'config'`` the base config's."""
  if recipe not in RECIPES:
    raise EvaluationError(f"recipe={recipe!r}; use one of {RECIPES}.")
  if base_config is None:
    if not model.config:
      raise EvaluationError(f"{model.source}: pass a config (--config) naming the dataset.")
    base_config = ml_collections.ConfigDict(model.config)
  c = copy.deepcopy(base_config)
  with c.unlocked() if hasattr(c, "unlocked") else contextlib.nullcontext():
    c.model = model.name
    c.model_kwargs = ml_collections.ConfigDict(dict(model.model_kwargs))
    if recipe == "source":
      c.eval_image_size = int(model.eval_image_size)
      c.eval_preproc = model.eval_preproc
      c.eval_crop_pct = float(model.crop_pct)
      if model.kind != "workdir":  # a workdir's saved config already has its normalization
        c.normalization = "custom"
        c.normalization_mean = tuple(float(m) for m in model.mean)
        c.normalization_std = tuple(float(v) for v in model.std)
  return c


# Which parameter sets ``evaluate_checkpoint`` evaluates.
PARAM_SETS = ("all", "raw", "ema")


def _param_sets(path, *, arch, params, step, trust, expected_md5,
                model_kwargs) -> List[Tuple[str, Any]]:
  """[(label, Pretrained)] for ``path``: every parameter set it holds ('all'), or one."""
  if params not in PARAM_SETS:
    raise EvaluationError(f"params={params!r}; use one of {PARAM_SETS}.")
  model = pretrained.load(path, arch, step=step, trust=trust, expected_md5=expected_md5,
                          params=pretrained.RAW if params == "all" else params,
                          model_kwargs=model_kwargs)
  if params != "all":
    return [(params, model)]
  return [(kind, model.with_params(kind)) for kind in (pretrained.RAW, pretrained.EMA)
          if kind in model.param_sets]


def evaluate_checkpoint(path: str, config=None, *, arch: Optional[str] = None,
                        recipe: str = "source", dataset: Optional[str] = None,
                        split: Optional[str] = None, image_size: Optional[int] = None,
                        batch_size: Optional[int] = None, data_dir: Optional[str] = None,
                        params: str = "all", step: Optional[int] = None,
                        trust: bool = False, expected_md5: Optional[str] = None,
                        num_devices: Optional[int] = None, output: Optional[str] = None,
                        log: Callable[[str], None] = print,
                        use_ema: Optional[bool] = None) -> Dict[str, Any]:
  """Evaluates the weights at ``path`` on a whole test split; returns a report.

  ``path`` is anything ``pretrained.load`` takes. A timm folder or file, or any source without
  ``config``, brings its own architecture and (``recipe='source'``) its own eval recipe; the
  config (default: the one saved in a workdir) then only says which data to use. Our workdirs
  and DeepMind's files with a ``config`` are evaluated as that config's model and recipe (for
  ``configs/nfnet.py:F*`` that is the reference's). The report (also written to ``output`` as
  JSON when given) holds the checkpoint, model, dataset, split, image size, example count and
  ``results`` = {'raw'|'ema': {top1, top5 (with more than 5 classes), loss, count}}.
  ``params``: 'all' (every parameter set the source holds: raw, and EMA when a workdir kept
  one), 'raw' or 'ema'; ``use_ema`` is its older spelling (None / True / False).
  """
  t0 = time.time()
  if use_ema is not None:
    params = "ema" if use_ema else "raw"
  from_source = config is None or pretrained.is_external(path)
  shapes = {} if from_source else dict(config.get("model_kwargs", None) or {})
  sources = _param_sets(path, arch=arch if from_source else config.model, params=params,
                        step=step, trust=trust, expected_md5=expected_md5, model_kwargs=shapes)
  model = sources[0][1]
  if from_source:
    config = source_config(model, config, recipe)
  c = eval_config(config, dataset=dataset, split=split, image_size=image_size,
                  batch_size=batch_size, data_dir=data_dir)
  is_real = c.dataset.split(":")[0].split("/")[0] == imagenet_real.REAL_DATASET
  if is_real:
    real_examples, local_examples, num_examples = imagenet_real.real_tfds_examples(c)
    num_classes, channels = 1000, 3
  else:
    ds_info = data.get_dataset_info(c)
    num_classes = int(ds_info.num_classes)
    num_examples = int(ds_info.num_eval_examples)
    channels = int(ds_info.image_shape[-1])
  if int(c.eval_image_size) != int(model.eval_image_size):
    # The size of the weights' own run or eval recipe, not the registry's default for c.model.
    log(f"note: evaluating at {c.eval_image_size}px; the eval recipe of {path} uses "
        f"{model.eval_image_size}px.")
  top5 = reporting.shows_top5(num_classes)
  if model.num_classes != num_classes:
    raise EvaluationError(
        f"{path} has {model.num_classes} classes but {c.dataset} has {num_classes}: "
        "evaluate it on a dataset with the same classes (or fine-tune it first).")
  if not from_source:  # the config's model: every parameter name and shape checked first
    try:
      model.check_fits(c.model, num_classes, channels, c.get("model_kwargs", None))
    except CheckpointError as e:
      raise CheckpointError(f"{e} (config model: {c.model} with {num_classes} classes)") from None
    if models.get_info(c.model).has_state and not model.state:
      raise EvaluationError(f"{c.model} has BatchNorm state, which {model.kind} files do not "
                            "hold; evaluate its training workdir instead.")
  loaded = {"kind": model.kind, "step": model.step,
            "variants": [(label, m.params, m.state) for label, m in sources]}
  devices = parallel.local_devices(num_devices or c.get("num_devices", None))
  per_device = max(1, -(-int(c.eval_batch_size) // len(devices)))
  num_batches = -(-num_examples // (per_device * len(devices)))
  log(f"Evaluating {path} ({loaded['kind']}"
      f"{', step ' + str(loaded['step']) if loaded['step'] is not None else ''}) as {c.model} "
      f"on {c.dataset}:{c.eval_split} ({num_examples} examples) at {c.eval_image_size}px, "
      f"preprocessing {c.get('eval_preproc', 'resize_crop_32')}, {len(devices)} device(s) x "
      f"{per_device} per device, {num_batches} batches.")
  forward = steps.make_forward(c, num_classes)
  apply_fn = steps.make_eval_apply(forward, flip=bool(c.get("eval_flip", False)))
  sum_fn = imagenet_real.make_real_sum_fn(apply_fn) if is_real else make_sum_fn(apply_fn)
  eval_step = parallel.make_eval_step(sum_fn, devices=devices)
  results = {}
  for label, params, model_state in loaded["variants"]:
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    rparams = parallel.replicate(params, devices)
    rstate = parallel.replicate(model_state, devices)
    if is_real:
      largest = -(-num_examples // jax.process_count())
      num_batches = -(-largest // (per_device * len(devices)))
      batches = imagenet_real.real_batches(
          c, real_examples, local_examples, per_device_batch=per_device,
          num_devices=len(devices), num_classes=num_classes, num_batches=num_batches)
      metrics = imagenet_real.real_metrics(sum_over(
          eval_step, rparams, rstate, _with_progress(batches, num_batches, log, label), devices))
      if metrics["seen"] != num_examples:
        raise EvaluationError(f"Saw {metrics['seen']} examples but the split has "
                              f"{num_examples}.")
      results[label] = metrics
      log(f"{label}: ReaL top1={metrics['top1']:.4f} top5={metrics['top5']:.4f} "
          f"({metrics['count']} examples with ReaL labels of {metrics['seen']})")
      continue
    batches = data.eval_iterator(c, per_device_batch=per_device, num_devices=len(devices))
    metrics = evaluate(eval_step, rparams, rstate,
                       _with_progress(batches, num_batches, log, label), devices=devices)
    if metrics["count"] != num_examples:
      raise EvaluationError(f"Counted {metrics['count']} examples but the split has "
                            f"{num_examples}; the eval iterator is broken.")
    if not top5:
      del metrics["top5"]
    results[label] = metrics
    log(f"{label}: {reporting.format_metrics(metrics, num_classes)} "
        f"({metrics['count']} examples)")
  report = {
      "checkpoint": os.path.abspath(path),
      "kind": loaded["kind"],
      "step": loaded["step"],
      "model": c.model,
      "model_kwargs": dict(c.get("model_kwargs", None) or {}),
      "recipe": recipe if from_source else "config",
      "dataset": c.dataset,
      "split": c.eval_split,
      "image_size": int(c.eval_image_size),
      "eval_preproc": c.get("eval_preproc", None),
      "eval_flip": bool(c.get("eval_flip", False)),
      "num_devices": len(devices),
      "per_device_batch": per_device,
      "count": num_examples,
      "results": results,
      "seconds": time.time() - t0,
  }
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      reporting.dump_json(report, f, indent=2)
    log(f"wrote {output}")
  return report
