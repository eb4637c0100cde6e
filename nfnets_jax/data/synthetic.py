"""A deterministic in-memory dataset (``config.dataset = 'synthetic'``) for tests and benchmarks.

Same interface as ``nfnets_jax.data`` (``get_dataset_info``, ``train_iterator``,
``eval_iterator``), but the global batch of step ``t`` is a pure function of (seed, t) and each
process takes its contiguous slice of it. So the examples of a step, and their order over the
global batch, do not depend on the number of devices or processes: runs on 1 device, 8 devices
or 2 processes see exactly the same data, which makes the engine's equivalences testable.
Images are a per-class template plus noise, so a model can learn them.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import jax
import numpy as np

NAME = "synthetic"

_DEFAULTS = dict(num_classes=10, channels=3, num_train_examples=1024, num_eval_examples=100,
                 noise=1.0)


@dataclasses.dataclass(frozen=True)
class SyntheticInfo:
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: tuple


def _opts(config):
  opts = dict(_DEFAULTS)
  given = config.get("synthetic", None)
  if given is not None:
    opts.update(dict(given.items()))
  return opts


def get_dataset_info(config) -> SyntheticInfo:
  o = _opts(config)
  size = int(config.train_image_size)
  return SyntheticInfo(int(o["num_classes"]), int(o["num_train_examples"]),
                       int(o["num_eval_examples"]), (size, size, int(o["channels"])))


def _templates(config, size):
  o = _opts(config)
  rng = np.random.default_rng([int(config.get("seed", 0)), 7])
  return rng.normal(size=(int(o["num_classes"]), size, size, int(o["channels"]))).astype(
      np.float32)


def _examples(config, size, indices, split_key):
  """Images and labels of the given example indices (a pure function of the index)."""
  o = _opts(config)
  templates = _templates(config, size)
  labels = np.asarray(indices) % int(o["num_classes"])
  noise = np.stack([
      np.random.default_rng([int(config.get("seed", 0)), split_key, int(i)]).normal(
          size=templates.shape[1:]).astype(np.float32) for i in indices])
  return templates[labels] + float(o["noise"]) * noise, labels


def _process(process_index, process_count):
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def train_iterator(config, *, per_device_batch: int, num_devices: Optional[int] = None,
                   seed: Optional[int] = None, start_step: int = 0,
                   process_index: Optional[int] = None, process_count: Optional[int] = None
                   ) -> Iterator[dict]:
  """Infinite {'images': [D, b, H, W, C], 'labels': one-hot [D, b, K]} of this process."""
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  process_index, process_count = _process(process_index, process_count)
  seed = int(config.get("seed", 0) if seed is None else seed)
  info = get_dataset_info(config)
  size = info.image_shape[0]
  local = num_devices * per_device_batch
  global_batch = local * process_count
  step = int(start_step)
  while True:
    order = np.random.default_rng([seed, 11, step]).integers(
        0, info.num_train_examples, global_batch)
    mine = order[process_index * local:(process_index + 1) * local]
    images, labels = _examples(config, size, mine, 1)
    onehot = np.eye(info.num_classes, dtype=np.float32)[labels]
    yield {"images": images.reshape((num_devices, per_device_batch) + images.shape[1:]),
           "labels": onehot.reshape(num_devices, per_device_batch, info.num_classes)}
    step += 1


def eval_iterator(config, *, per_device_batch: int, num_devices: Optional[int] = None,
                  split: Optional[str] = None, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """Every eval example exactly once over all processes (mask 1), padded with mask 0."""
  del split
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  process_index, process_count = _process(process_index, process_count)
  info = get_dataset_info(config)
  size = info.image_shape[0]
  n = info.num_eval_examples
  start, end = n * process_index // process_count, n * (process_index + 1) // process_count
  batch = num_devices * per_device_batch
  largest = -(-n // process_count)
  num_batches = -(-largest // batch)
  indices = np.arange(start, end)
  for b in range(num_batches):
    idx = indices[b * batch:(b + 1) * batch]
    images = np.zeros((batch, size, size, info.image_shape[2]), np.float32)
    labels = np.zeros((batch,), np.int32)
    mask = np.zeros((batch,), np.float32)
    if len(idx):
      im, lb = _examples(config, size, idx, 2)
      images[:len(idx)], labels[:len(idx)], mask[:len(idx)] = im, lb, 1.0
    yield {"images": images.reshape((num_devices, per_device_batch) + images.shape[1:]),
           "labels": labels.reshape(num_devices, per_device_batch),
           "mask": mask.reshape(num_devices, per_device_batch)}
