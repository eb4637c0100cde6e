"""ImageNet-ReaL (Beyer et al. 2020): multi-label top-1 / top-5 over the validation images.

A prediction is right when it is one of the example's real labels; examples without any real
label are left out of the count, as in the ReaL protocol. TensorFlow and TFDS are imported only
when ReaL data is read (the engine imports this module at start-up).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp

from nfnets_jax import data
from nfnets_jax.errors import EvaluationError

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
  size = int(config.eval_image_size)
  preproc = config.get("eval_preproc", "resize_crop_32")
  crop_pct = float(config.get("eval_crop_pct", 0.875))
  channels = 3
  norm = data.preprocessing.config_normalization(config, channels)
  batch = per_device_batch * num_devices
  if num_batches is None:
    num_batches = max(1, -(-num_examples // batch))
  if num_batches * batch < num_examples:
    raise ValueError(f"{num_batches} batches of {batch} cannot hold {num_examples} examples.")

  def prep(ex):
    image = data.preprocessing.eval_preprocess(ex["image"], preproc, size, channels, crop_pct)
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
      images = data.preprocessing.normalize(images, *norm) * mask[:, None, None, None]
    return {"images": tf.reshape(images, [num_devices, per_device_batch, size, size, channels]),
            "real": tf.reshape(real, [num_devices, per_device_batch, num_classes]),
            "mask": tf.reshape(mask, [num_devices, per_device_batch])}

  return ds.map(finish).prefetch(2).as_numpy_iterator()


def real_tfds_examples(config):
  """(this process's shard of the ReaL split as tf.data, its size, the split's total size)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
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
    start, end = data.shard_bounds(total, jax.process_index(), jax.process_count())
    split = f"{split}[{start}:{end}]"
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  return ds, end - start, total


def make_real_sum_fn(apply_fn: Callable) -> Callable:
  """Per-device ReaL sums: a prediction is right when it is one of the example's real labels;
  examples without any real label are left out (``count``), as in the ReaL protocol."""

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
