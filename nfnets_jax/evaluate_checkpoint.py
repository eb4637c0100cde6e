"""Evaluate a checkpoint (ours or DeepMind's) on a dataset: top-1, top-5 and loss, exactly once.

Accepted checkpoints:
  * a training workdir of ours, its ``checkpoints/`` folder or one step folder in it (orbax):
    raw and EMA parameters are both evaluated when the EMA is present;
  * one of DeepMind's released ``F*_haiku.npz`` (dill pickles; MD5 checked, restricted
    unpickler, see ``nfnets_jax.checkpoints``);
  * a converted plain ``.npz`` (``checkpoints.save_params_npz``).
Every parameter name and shape is checked against the config's model before anything is
computed, so a checkpoint of another variant fails with an error naming the mismatch.

Evaluation uses the config's eval preprocessing and size (for ``configs/nfnet.py:F*``: the
variant's test resolution with the reference's ``resize_crop_32``), float32, and the same
masked, padded eval iterator and pmapped sums as training, so every example is counted once
whatever the device count and batch size.
"""
from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

from nfnets_jax import checkpoints
from nfnets_jax import checkpointing
from nfnets_jax import config_validation
from nfnets_jax import evaluation
from nfnets_jax import models
from nfnets_jax import parallel

# Alternative ImageNet test sets by TFDS name -> default split.
EVAL_DATASETS = {
    "imagenet2012": "validation",
    "imagenet_v2": "test",
    "imagenet2012_real": "validation",
}


class EvaluationError(ValueError):
  """The checkpoint, config or dataset cannot be evaluated as asked."""


# ------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------
def _model_kwargs(config) -> dict:
  kwargs = config.get("model_kwargs", None)
  return dict(kwargs.items()) if kwargs is not None else {}


def _hashable_kwargs(config) -> dict:
  """Model kwargs that affect parameter shapes (rates and dropout do not)."""
  kw = _model_kwargs(config)
  for k in ("stochdepth_rate", "drop_rate"):
    kw.pop(k, None)
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}


def _resolve_orbax(path: str) -> Tuple[str, Optional[int]]:
  """(checkpoints directory, step or None) for a workdir / checkpoints dir / step dir."""
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(os.path.normpath(path))
  if base.isdigit():
    return os.path.dirname(os.path.normpath(path)), int(base)
  return path, None


def checkpoint_kind(path: str) -> str:
  """'orbax' (a directory), 'npz' (zip archive) or 'deepmind' (a pickle)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No checkpoint at {path!r}: give a workdir, an orbax checkpoint "
                            "directory, a DeepMind F*_haiku.npz or a converted .npz.")
  if os.path.isdir(path):
    return "orbax"
  with open(path, "rb") as f:
    head = f.read(4)
  return "npz" if head.startswith(b"PK") else "deepmind"


def load_for_eval(path: str, config, num_classes: int, *, use_ema: Optional[bool] = None,
                  step: Optional[int] = None, trust: bool = False,
                  expected_md5: Optional[str] = None) -> Dict[str, Any]:
  """Loads and validates ``path`` for ``config.model``.

  Returns ``{'kind', 'step', 'variants': [(label, params, model_state), ...]}`` where labels are
  'raw' and/or 'ema'. ``use_ema``: None = both when available, True = EMA only, False = raw only.
  """
  kind = checkpoint_kind(path)
  model_name = config.model
  info = models.get_info(model_name)
  shape_kwargs = _hashable_kwargs(config)
  expected = checkpoints.expected_param_shapes(model_name, num_classes, **shape_kwargs)
  variants: List[Tuple[str, Any, Any]] = []
  if kind == "orbax":
    directory, dir_step = _resolve_orbax(path)
    step = dir_step if step is None else step
    ckpt = checkpointing.Checkpointer(directory)
    try:
      if ckpt.latest_step() is None:
        raise EvaluationError(f"No orbax checkpoint steps in {directory}.")
      step = ckpt.latest_step() if step is None else step
      raw = ckpt.restore_raw(step)
    finally:
      ckpt.close()
    if "params" not in raw:
      raise EvaluationError(f"{path} (step {step}) has no 'params'; keys: {sorted(raw)}.")
    model_state = raw.get("model_state", {}) or {}
    if use_ema is not True:
      variants.append(("raw", raw["params"], model_state))
    if use_ema is not False and "ema_params" in raw:
      variants.append(("ema", raw["ema_params"], model_state))
    if use_ema and "ema_params" not in raw:
      raise EvaluationError(f"{path} has no EMA parameters (the run had ema_decay=None); "
                            "drop --use_ema to evaluate the raw parameters.")
    for label, params, _ in variants:
      checkpoints.validate_params(params, expected,
                                  source=f"{path} step {step} ({label} params)")
  else:
    if use_ema:
      raise EvaluationError(f"{path} is a single parameter set ({kind}); --use_ema applies to "
                            "our training checkpoints only.")
    if info.has_state:
      raise EvaluationError(f"{model_name} has BatchNorm state, which {kind} files do not hold; "
                            "evaluate its training workdir instead.")
    try:
      params = checkpoints.load_params(path, model_name, num_classes, trust=trust,
                                       expected_md5=expected_md5, **shape_kwargs)
    except checkpoints.CheckpointError as e:
      raise EvaluationError(f"{e} (config model: {model_name} with {num_classes} classes, "
                            f"overrides {shape_kwargs})") from None
    variants.append(("raw", params, {}))
  return {"kind": kind, "step": step, "variants": variants}


# ------------------------------------------------------------------------------------------
# Evaluating.
# ------------------------------------------------------------------------------------------
def _data_module(config):
  if config.dataset == config_validation.SYNTHETIC:
    from nfnets_jax import synthetic_data  # pylint: disable=import-outside-toplevel
    return synthetic_data
  from nfnets_jax import data  # pylint: disable=import-outside-toplevel
  return data


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


# ------------------------------------------------------------------------------------------
# ImageNet-ReaL: multi-label scoring (Beyer et al. 2020).
# ------------------------------------------------------------------------------------------
REAL_DATASET = "imagenet2012_real"


def real_batches(config, examples, num_examples: int, *, per_device_batch: int,
                 num_devices: int, num_classes: int = 1000, num_batches: Optional[int] = None):
  """Batches of ``examples`` (a tf.data of {'image', 'real_label'}) for ReaL scoring.

  Yields dicts with images [D, b, S, S, C] (the config's eval preprocessing and normalization),
  ``real`` multi-hot [D, b, K] and ``mask`` [D, b] (0 for padding), every one of the
  ``num_examples`` examples once, padded to ``num_batches`` batches (default: as few as fit;
  multi-process runs pass the largest shard's count so that every process yields as many).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from nfnets_jax.data import preprocessing  # pylint: disable=import-outside-toplevel

  size = int(config.eval_image_size)
  preproc = config.get("eval_preproc", "resize_crop_32")
  crop_pct = float(config.get("eval_crop_pct", 0.875))
  channels = 3
  norm = preprocessing.normalization_constants(config.get("normalization", "imagenet"),
                                               config.dataset, channels)
  batch = per_device_batch * num_devices
  if num_batches is None:
    num_batches = max(1, -(-num_examples // batch))
  if num_batches * batch < num_examples:
    raise ValueError(f"{num_batches} batches of {batch} cannot hold {num_examples} examples.")

  def prep(ex):
    image = preprocessing.eval_preprocess(ex["image"], preproc, size, channels, crop_pct)
    labels = tf.cast(ex["real_label"], tf.int32)
    real = tf.minimum(tf.reduce_sum(tf.one_hot(labels, num_classes), axis=0), 1.0)
    return image, real, tf.constant(1.0)

  ds = examples.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
  pad = tf.data.Dataset.from_tensors(
      (tf.zeros([size, size, channels]), tf.zeros([num_classes]), tf.constant(0.0)))
  ds = ds.concatenate(pad.repeat(num_batches * batch - num_examples))
  ds = ds.batch(batch, drop_remainder=True)

  def finish(images, real, mask):
    if norm is not None:
      images = preprocessing.normalize(images, *norm) * mask[:, None, None, None]
    return {"images": tf.reshape(images, [num_devices, per_device_batch, size, size, channels]),
            "real": tf.reshape(real, [num_devices, per_device_batch, num_classes]),
            "mask": tf.reshape(mask, [num_devices, per_device_batch])}

  return iter(tfds.as_numpy(ds.map(finish).prefetch(2)))


def real_tfds_examples(config):
  """(this process's shard of the ReaL split as tf.data, its size, the split's total size)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from nfnets_jax.data import shard_bounds  # pylint: disable=import-outside-toplevel
  split = config.eval_split
  builder = tfds.builder(config.dataset, data_dir=config.get("data_dir", None))
  try:
    total = int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError):
    total = 0
  if not total:
    raise EvaluationError(
        f"TFDS dataset {config.dataset!r} split {split!r} is not prepared in "
        f"{builder.data_dir}: build it first (it needs ImageNet's manual download), or pass "
        "--data_dir.")
  if jax.process_count() == 1:
    start, end = 0, total
  elif "[" in split:
    raise EvaluationError(f"A sliced split ({split!r}) is only supported on one process.")
  else:
    start, end = shard_bounds(total, jax.process_index(), jax.process_count())
    split = f"{split}[{start}:{end}]"
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  return ds, end - start, total


def make_real_sum_fn(apply_fn: Callable) -> Callable:
  """Per-device ReaL sums: a prediction is right when it is one of the example's real labels;
  examples without any real label are left out (``count``), as in the ReaL protocol."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def sum_fn(params, model_state, batch):
    logits = apply_fn(params, model_state, batch["images"]).astype(jnp.float32)
    real = batch["real"].astype(jnp.float32)
    labelled = (jnp.sum(real, axis=-1) > 0).astype(jnp.float32) * batch["mask"]
    top1 = jnp.take_along_axis(real, jnp.argmax(logits, -1)[:, None], axis=-1)[:, 0]
    k = min(5, logits.shape[-1])
    top5 = jnp.max(jnp.take_along_axis(real, jax.lax.top_k(logits, k)[1], axis=-1), axis=-1)
    return {"top1": jnp.sum(top1 * labelled), "top5": jnp.sum(top5 * labelled),
            "count": jnp.sum(labelled), "seen": jnp.sum(batch["mask"])}

  return sum_fn


def real_metrics(totals: Dict[str, float]) -> Dict[str, Any]:
  count = totals["count"]
  if count <= 0:
    raise EvaluationError("No example of the split has a ReaL label.")
  return {"top1": totals["top1"] / count, "top5": totals["top5"] / count,
          "count": int(round(count)), "seen": int(round(totals["seen"]))}


def sum_over(eval_step: Callable, params, model_state, batches, devices) -> Dict[str, float]:
  totals = None
  for batch in parallel.prefetch(batches, devices=devices):
    sums = eval_step(params, model_state, batch)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  if totals is None:
    raise EvaluationError("The evaluation split yielded no batches.")
  return {k: float(v) for k, v in parallel.unreplicate(totals).items()}


def evaluate_checkpoint(path: str, config, *, dataset: Optional[str] = None,
                        split: Optional[str] = None, image_size: Optional[int] = None,
                        batch_size: Optional[int] = None, data_dir: Optional[str] = None,
                        use_ema: Optional[bool] = None, step: Optional[int] = None,
                        trust: bool = False, expected_md5: Optional[str] = None,
                        num_devices: Optional[int] = None, output: Optional[str] = None,
                        log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Evaluates checkpoint ``path`` with ``config``'s model and eval data; returns a report.

  The report (also written to ``output`` as JSON when given) holds the checkpoint, model,
  dataset, split, image size, example count and ``results`` = {'raw'|'ema': {top1, top5, loss,
  count}}.
  """
  from nfnets_jax import train  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  c = eval_config(config, dataset=dataset, split=split, image_size=image_size,
                  batch_size=batch_size, data_dir=data_dir)
  is_real = c.dataset.split(":")[0].split("/")[0] == REAL_DATASET
  data_lib = _data_module(c)
  if is_real:
    real_examples, local_examples, num_examples = real_tfds_examples(c)
    num_classes = 1000
  else:
    ds_info = data_lib.get_dataset_info(c)
    num_classes = int(ds_info.num_classes)
    num_examples = int(ds_info.num_eval_examples)
  model_info = models.get_info(c.model)
  if int(c.eval_image_size) != model_info.test_image_size:
    log(f"note: evaluating at {c.eval_image_size}px; {c.model}'s test resolution is "
        f"{model_info.test_image_size}px.")
  loaded = load_for_eval(path, c, num_classes, use_ema=use_ema, step=step, trust=trust,
                         expected_md5=expected_md5)
  devices = parallel.local_devices(num_devices or c.get("num_devices", None))
  per_device = max(1, -(-int(c.eval_batch_size) // len(devices)))
  num_batches = -(-num_examples // (per_device * len(devices)))
  log(f"Evaluating {path} ({loaded['kind']}"
      f"{', step ' + str(loaded['step']) if loaded['step'] is not None else ''}) as {c.model} "
      f"on {c.dataset}:{c.eval_split} ({num_examples} examples) at {c.eval_image_size}px, "
      f"preprocessing {c.get('eval_preproc', 'resize_crop_32')}, {len(devices)} device(s) x "
      f"{per_device} per device, {num_batches} batches.")
  forward = train.make_forward(c, num_classes)
  apply_fn = train.make_eval_apply(forward)
  sum_fn = make_real_sum_fn(apply_fn) if is_real else evaluation.make_sum_fn(apply_fn)
  eval_step = parallel.make_eval_step(sum_fn, devices=devices)
  results = {}
  for label, params, model_state in loaded["variants"]:
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    rparams = parallel.replicate(params, devices)
    rstate = parallel.replicate(model_state, devices)
    if is_real:
      largest = -(-num_examples // jax.process_count())
      num_batches = -(-largest // (per_device * len(devices)))
      batches = real_batches(c, real_examples, local_examples, per_device_batch=per_device,
                             num_devices=len(devices), num_classes=num_classes,
                             num_batches=num_batches)
      metrics = real_metrics(sum_over(eval_step, rparams, rstate,
                                      _with_progress(batches, num_batches, log, label), devices))
      if metrics["seen"] != num_examples:
        raise EvaluationError(f"Saw {metrics['seen']} examples but the split has "
                              f"{num_examples}.")
      results[label] = metrics
      log(f"{label}: ReaL top1={metrics['top1']:.4f} top5={metrics['top5']:.4f} "
          f"({metrics['count']} examples with ReaL labels of {metrics['seen']})")
      continue
    batches = data_lib.eval_iterator(c, per_device_batch=per_device, num_devices=len(devices))
    metrics = evaluation.evaluate(eval_step, rparams, rstate,
                                  _with_progress(batches, num_batches, log, label),
                                  devices=devices)
    if metrics["count"] != num_examples:
      raise EvaluationError(f"Counted {metrics['count']} examples but the split has "
                            f"{num_examples}; the eval iterator is broken.")
    results[label] = metrics
    log(f"{label}: top1={metrics['top1']:.4f} top5={metrics['top5']:.4f} "
        f"loss={metrics['loss']:.4f} ({metrics['count']} examples)")
  report = {
      "checkpoint": os.path.abspath(path),
      "kind": loaded["kind"],
      "step": loaded["step"],
      "model": c.model,
      "model_kwargs": _model_kwargs(c),
      "dataset": c.dataset,
      "split": c.eval_split,
      "image_size": int(c.eval_image_size),
      "eval_preproc": c.get("eval_preproc", None),
      "num_devices": len(devices),
      "per_device_batch": per_device,
      "count": num_examples,
      "results": results,
      "seconds": time.time() - t0,
  }
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      json.dump(report, f, indent=2, default=str)
    log(f"wrote {output}")
  return report
