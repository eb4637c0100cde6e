"""TFDS input pipelines: per-process shards, deterministic resumable training, exact-once eval.

Training order is a function of (seed, process, epoch) only: each epoch is a seeded shuffle of
this process's shard, every random augmentation draws from a stateless seed keyed by the global
example (or batch) index. So the stream started at ``start_step=k`` equals the stream from 0
without its first k batches, and restarting costs at most one partial epoch of reading.

Datasets whose decoded images fit in memory (Fashion-MNIST, CIFAR) are decoded once, cached
per process and shuffled exactly per epoch; large ones (ImageNet) stream encoded records through
a shuffle buffer and decode (only the crop window of a JPEG) in parallel.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Iterator, List, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from nfnets_jax.errors import ConfigError, DatasetNotFoundError, UnknownDatasetError, sentence

from nfnets_jax.data import folder
from nfnets_jax.data import mixing
from nfnets_jax.data import preprocessing
from nfnets_jax.data import randaugment as randaugment_lib
from nfnets_jax.data import randaugment_batch

try:  # TF only feeds the host; leave accelerators to JAX.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
  pass

# Decoded splits at most this large are cached in memory and shuffled exactly.
IN_MEMORY_MAX_BYTES = 512 << 20
_INT64_MAX = np.iinfo(np.int64).max
_CACHE: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}

# TFDS image-classification datasets known to work by name (when their data is prepared).
SUPPORTED = {
    "imagenet2012": "ImageNet-1k (manual download of the ILSVRC2012 tars); test = 'validation'",
    "fashion_mnist": "built offline by scripts/prepare_fashion_mnist.py; splits train/test",
    "mnist": "splits train/test",
    "cifar10": "splits train/test",
    "cifar100": "splits train/test",
    "imagenette": "ImageNet subset (e.g. imagenette/320px-v2); splits train/validation",
    folder.NAME: "your images: --config.data_dir=ROOT holding ROOT/<split>/<class>/<image> "
                 "(data/folder.py)",
}


def list_supported() -> Dict[str, str]:
  """Dataset names usable as ``config.dataset`` (any TFDS image classification set works)."""
  return dict(SUPPORTED)




@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: Tuple[int, int, int]
  # Label names by class index (folder: sorted class folder names); None when the dataset has
  # only a class count (e.g. TFDS's mnist). Not part of ==, which compares the shapes and sizes.
  class_names: Optional[Tuple[str, ...]] = dataclasses.field(default=None, compare=False)


def _prepare_hint(name: str, data_dir: str) -> str:
  base = name.split("/")[0].split(":")[0]
  if base == "fashion_mnist":
    return (f"Build it offline with `python scripts/prepare_fashion_mnist.py --data_dir={data_dir}` "
            "(or `make data`).")
  if base.startswith("imagenet2012"):
    return ("ImageNet needs a manual download: put ILSVRC2012_img_train.tar and "
            f"ILSVRC2012_img_val.tar in {os.path.join(data_dir, 'downloads', 'manual')} and run "
            f"`tfds build imagenet2012 --data_dir={data_dir}`.")
  return f"Prepare it with `tfds build {name} --data_dir={data_dir}` (needs its source files)."


def _builder(config):
  name = config.dataset
  if name == folder.NAME:
    return folder.builder(config)
  try:
    return tfds.builder(name, data_dir=config.get("data_dir", None))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UnknownDatasetError(
        f"config.dataset={name!r} is not a TFDS dataset name. Supported here: "
        f"{sorted(SUPPORTED)} (any TFDS image classification dataset works).") from e


def _check_prepared(builder, split: str) -> str:
  """Raises DatasetNotFoundError (where TFDS looked, how to prepare) if data is missing.

  Returns the builder's name for ``split`` (folders map test/val/validation to theirs).
  """
  if hasattr(builder, "resolve_split"):
    split = builder.resolve_split(split)
  try:
    builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
    data_dir = os.path.dirname(os.path.dirname(str(builder.data_dir)))
    raise DatasetNotFoundError(
        f"TFDS dataset {builder.name!r} (split {split!r}) is not prepared: looked in "
        f"{builder.data_dir}. {_prepare_hint(builder.name, data_dir)}") from e
  except (ValueError, KeyError) as e:
    raise ValueError(f"Bad split {split!r} for {builder.name}: {sentence(str(e))} Known "
                     f"splits: {sorted(builder.info.splits)}.") from e
  return split


def _absolute_ranges(builder, split: str) -> Optional[List[Tuple[str, int, int]]]:
  """[(split_name, from, to)] of a split spec, or None when TFDS lacks split sizes (mocks)."""
  split_infos = dict(builder.info.splits.items())
  if not split_infos:
    return None
  instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
  return [(i.splitname, i.from_ or 0,
           split_infos[i.splitname].num_examples if i.to is None else i.to)
          for i in instructions]


def split_size(builder, split: str) -> int:
  ranges = _absolute_ranges(builder, split)
  if ranges is None:
    return int(builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()}
                                  ).cardinality().numpy())
  return sum(to - fr for _, fr, to in ranges)


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> Tuple[int, int]:
  """Contiguous balanced shard [start, end) of process ``process_index``."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def _shard_dataset(builder, split: str, process_index: int, process_count: int,
                   decoders=None) -> Tuple[tf.data.Dataset, int]:
  """This process's contiguous shard of ``split`` (files read in order) and its size."""
  ranges = _absolute_ranges(builder, split)
  read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=4,
                                try_autocache=False)
  if ranges is None:  # No split sizes known (e.g. mocked TFDS): read all, keep our part.
    ds = builder.as_dataset(split=split, decoders=decoders, read_config=read_config)
    n = int(ds.cardinality().numpy())
    start, end = shard_bounds(n, process_index, process_count)
    return ds.skip(start).take(end - start), end - start
  total = sum(to - fr for _, fr, to in ranges)
  start, end = shard_bounds(total, process_index, process_count)
  instructions = []
  offset = 0
  for name, fr, to in ranges:
    lo, hi = max(start, offset), min(end, offset + to - fr)
    if lo < hi:
      instructions.append(tfds.core.ReadInstruction(
          name, from_=fr + lo - offset, to=fr + hi - offset, unit="abs"))
    offset += to - fr
  if not instructions:  # Empty shard: an empty slice of the first split.
    name, fr, _ = ranges[0]
    instructions = [tfds.core.ReadInstruction(name, from_=fr, to=fr, unit="abs")]
  ri = instructions[0]
  for extra in instructions[1:]:
    ri = ri + extra
  ds = builder.as_dataset(split=ri, decoders=decoders, read_config=read_config,
                          shuffle_files=False)
  return ds, end - start


def _channels(builder, config=None) -> int:
  """The dataset's own channel count, or with a config its ``image_channels`` when set (1 or 3:
  images are then decoded from their stored bytes to that many channels)."""
  shape = builder.info.features["image"].shape
  natural = int(shape[-1]) if shape[-1] is not None else 3
  wanted = config.get("image_channels", None) if config is not None else None
  if not wanted:
    return natural
  if int(wanted) not in (1, 3):
    raise ConfigError(f"config.image_channels={wanted} must be 1 or 3 (or None/0: the dataset's "
                      f"own, {natural}).")
  return int(wanted)


def _num_classes(builder) -> int:
  return int(builder.info.features["label"].num_classes)


def _class_names(builder) -> Optional[Tuple[str, ...]]:
  label = builder.info.features["label"]
  if getattr(label, "_int2str", True) is None:  # only num_classes was given: names are '0', ...
    return None
  return tuple(str(n) for n in label.names)


def _fits_in_memory(builder, num_examples: int) -> bool:
  shape = builder.info.features["image"].shape
  if any(d is None for d in shape):
    return False
  return num_examples * int(np.prod(shape)) <= IN_MEMORY_MAX_BYTES


def _load_in_memory(builder, split, process_index, process_count):
  """Decoded (images uint8 [n, H, W, C], labels int64 [n]) of this shard, cached."""
  key = (builder.name, str(builder.data_dir), split, process_index, process_count)
  cacheable = _absolute_ranges(builder, split) is not None  # never cache mocked TFDS data
  if key not in _CACHE or not cacheable:
    ds, n = _shard_dataset(builder, split, process_index, process_count)
    images, labels = [], []
    for batch in tfds.as_numpy(ds.batch(8192).prefetch(2)):
      images.append(batch["image"])
      labels.append(batch["label"])
    shape = builder.info.features["image"].shape
    images = np.concatenate(images) if images else np.zeros((0,) + tuple(shape), np.uint8)
    labels = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    if len(labels) != n:
      raise RuntimeError(f"Read {len(labels)} examples from {builder.name} {split}, expected {n}.")
    if not cacheable:
      return images, labels.astype(np.int64)
    _CACHE[key] = (images, labels.astype(np.int64))
  return _CACHE[key]


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(2, min(16, os.cpu_count() or 2))
  options.threading.max_intra_op_parallelism = 1
  options.experimental_optimization.map_parallelization = True
  return options


def _process(process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  return process_index, process_count


def _mix_seed(*values: int) -> int:
  """Deterministic 62-bit combination of small integers (Python's hash is salted)."""
  acc = 0x9E3779B97F4A7C15
  for v in values:
    acc = (acc * 6364136223846793005 + int(v) + 1442695040888963407) % (1 << 62)
  return acc


def get_dataset_info(config) -> DatasetInfo:
  """Classes, split sizes (whole splits, all processes) and the model's input shape."""
  builder = _builder(config)
  train_split = _check_prepared(builder, config.train_split)
  eval_split = _check_prepared(builder, config.eval_split)
  size = int(config.train_image_size)
  return DatasetInfo(
      num_classes=_num_classes(builder),
      num_train_examples=split_size(builder, train_split),
      num_eval_examples=split_size(builder, eval_split),
      image_shape=(size, size, _channels(builder, config)),
      class_names=_class_names(builder))


def _augment_cfg(config):
  aug = config.get("augment", None)
  get = (lambda k, d: aug.get(k, d)) if aug is not None else (lambda k, d: d)
  return dict(flip=bool(get("flip", False)), pad=int(get("pad", 0) or 0),
              pad_mode=str(get("pad_mode", "reflect")),
              ra_layers=int(get("randaugment_layers", 0) or 0),
              ra_magnitude=float(get("randaugment_magnitude", 0) or 0),
              mixup_alpha=float(get("mixup_alpha", 0) or 0), cutmix=bool(get("cutmix", False)),
              ra_impl=_ra_impl(get("randaugment_impl", "per_example")))


RANDAUGMENT_IMPLS = ("per_example", "batch")


def _ra_impl(name) -> str:
  """``config.augment.randaugment_impl``: 'per_example' (one image per tf.data element, the
  default) or 'batch' (randaugment_batch: each drawn op once on its group of the batch). Both
  give the same images; 'batch' was not measurably faster (docs/benchmarks.md)."""
  name = str(name or "per_example")
  if name not in RANDAUGMENT_IMPLS:
    raise ConfigError(f"config.augment.randaugment_impl={name!r}; expected one of "
                      f"{RANDAUGMENT_IMPLS}.")
  return name


def train_batch_keys(seed: int, process_index: int, step) -> tf.Tensor:
  """[3, 2] stateless keys of train batch ``step`` of a process: pad-crop, flip, mixing.

  A function of (seed, process, step) only, so a resumed stream draws the same."""
  return tf.random.experimental.stateless_split(
      tf.stack([tf.constant(_mix_seed(seed, process_index, 3), tf.int64),
                tf.cast(step, tf.int64)]), 3)


def train_iterator(config, *, per_device_batch: int, num_devices: Optional[int] = None,
                   seed: Optional[int] = None, start_step: int = 0,
                   process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """Infinite iterator of {'images': [D, b, H, W, C] f32 normalized, 'labels': [D, b, K] f32}."""
  ds = train_dataset(config, per_device_batch=per_device_batch, num_devices=num_devices,
                     seed=seed, start_step=start_step, process_index=process_index,
                     process_count=process_count)
  return iter(tfds.as_numpy(ds))


def train_dataset(config, *, per_device_batch: int, num_devices: Optional[int] = None,
                  seed: Optional[int] = None, start_step: int = 0,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> tf.data.Dataset:
  """The tf.data pipeline behind ``train_iterator``."""
  num_devices = jax.local_device_count() if num_devices is None else int(num_devices)
  seed = int(config.get("seed", 0) if seed is None else seed)
  process_index, process_count = _process(process_index, process_count)
  if per_device_batch <= 0 or num_devices <= 0 or start_step < 0:
    raise ValueError(f"Need per_device_batch > 0, num_devices > 0, start_step >= 0; got "
                     f"{per_device_batch}, {num_devices}, {start_step}.")
  batch = per_device_batch * num_devices
  preproc = config.get("train_preproc", "inception_crop")
  if preproc not in preprocessing.TRAIN_PREPROCS:
    raise ValueError(f"Unknown train_preproc {preproc!r}; expected one of "
                     f"{preprocessing.TRAIN_PREPROCS}.")
  aug = _augment_cfg(config)
  size = int(config.train_image_size)

  builder = _builder(config)
  split = _check_prepared(builder, config.train_split)
  channels = _channels(builder, config)
  num_classes = _num_classes(builder)
  norm = preprocessing.config_normalization(config, channels)
  total = split_size(builder, split)
  n = shard_bounds(total, process_index, process_count)
  n = n[1] - n[0]
  if n == 0:
    raise ValueError(f"Process {process_index} of {process_count} gets no examples of "
                     f"{config.dataset} {split!r}.")

  base_seed = _mix_seed(seed, process_index, 1)
  elem_seed = _mix_seed(seed, process_index, 2)
  start_elem = start_step * batch
  first_epoch, skip = divmod(start_elem, n)

  in_memory = _fits_in_memory(builder, n) and channels == _channels(builder)
  if in_memory:
    images_np, labels_np = _load_in_memory(builder, split, process_index, process_count)
    images_t = tf.constant(images_np)
    labels_t = tf.constant(labels_np)
    source = tf.data.Dataset.range(n)
    buffer = n  # exact shuffle of indices
  else:
    source, _ = _shard_dataset(builder, split, process_index, process_count,
                               decoders={"image": tfds.decode.SkipDecoding()})
    source = source.map(lambda ex: (ex["image"], ex["label"]))
    buffer = max(1, min(int(config.get("shuffle_buffer", 16384)), n))

  def epoch(e):
    return source.shuffle(buffer, seed=tf.constant(base_seed, tf.int64) + e,
                          reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(first_epoch, _INT64_MAX).flat_map(epoch).skip(skip)
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(start_elem, _INT64_MAX))

  # Per-example work: everything that cannot be vectorized over a batch of equal shapes.
  vectorized = in_memory and preproc != "inception_crop"
  # After an inception crop, the flip (the batch's draw for this example) is done here, on one
  # image: the same values as flip_batch on the batch, without a pass over unflipped images.
  flip_here = aug["flip"] and preproc == "inception_crop"

  def batch_keys(step):
    return train_batch_keys(seed, process_index, step)

  if not vectorized:
    def first_stage(x, index):
      if in_memory:
        image, label = tf.gather(images_t, x), tf.gather(labels_t, x)
      else:
        image, label = x
      key = tf.stack([tf.constant(elem_seed, tf.int64), index])
      if preproc == "inception_crop":
        image = preprocessing.inception_crop(image, key, size, channels)
      else:
        image = preprocessing.resize_if_needed(image, size, channels)
      if flip_here:
        flip = preprocessing.flip_draws(batch_keys(index // batch)[1], batch)[index % batch]
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
      return image, label, index

  if not vectorized:
    ds = ds.map(first_stage, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True)
  ra_batched = aug["ra_layers"] > 0 and aug["ra_impl"] == "batch"
  ra_key = _mix_seed(seed, process_index, 4)

  def batch_stage(*args):
    if vectorized:
      idx, index = args
      images = tf.cast(tf.gather(images_t, idx), tf.float32)
      labels = tf.gather(labels_t, idx)
      if images.shape[1] != size or images.shape[2] != size:  # 'none'/'pad_crop' at a new size
        images = tf.clip_by_value(
            tf.image.resize(images, [size, size], method="bicubic"), 0.0, 255.0)
    else:
      images, labels, index = args
      images = tf.cast(images, tf.float32)
    keys = batch_keys(index[0] // batch)
    if preproc == "pad_crop" and aug["pad"] > 0:
      images = preprocessing.pad_crop_batch(images, keys[0], aug["pad"], aug["pad_mode"])
    if aug["flip"] and not flip_here:
      images = preprocessing.flip_batch(images, keys[1])
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    images, onehot = mixing.mix_batch(images, onehot, keys[2], aug["mixup_alpha"], aug["cutmix"])
    if ra_batched:  # RandAugment after mixing, each image keyed by its example index.
      ra_keys = tf.stack([tf.fill(tf.shape(index), tf.constant(ra_key, tf.int64)), index], 1)
      images = randaugment_batch.randaugment_batch(images, ra_keys, aug["ra_layers"],
                                                   aug["ra_magnitude"])
    return images, onehot, index

  ds = ds.map(batch_stage, num_parallel_calls=tf.data.AUTOTUNE)

  if aug["ra_layers"] > 0 and not ra_batched:  # the same RandAugment, one image at a time
    def ra(image, label, index):
      key = tf.stack([tf.constant(ra_key, tf.int64), index])
      return (randaugment_lib.randaugment(image, key, aug["ra_layers"], aug["ra_magnitude"]),
              label, index)
    ds = ds.unbatch().map(ra, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)

  def finish(images, labels, index):
    del index
    if norm is not None:
      images = preprocessing.normalize(images, *norm)
    images = tf.reshape(images, [num_devices, per_device_batch, size, size, channels])
    labels = tf.reshape(labels, [num_devices, per_device_batch, num_classes])
    return {"images": images, "labels": labels}

  ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


def _eval_plan(config, per_device_batch, num_devices, split, process_index, process_count):
  """Everything the eval pipelines need, validated."""
  num_devices = jax.local_device_count() if num_devices is None else int(num_devices)
  process_index, process_count = _process(process_index, process_count)
  if per_device_batch <= 0 or num_devices <= 0:
    raise ValueError(f"Need per_device_batch > 0 and num_devices > 0; got {per_device_batch}, "
                     f"{num_devices}.")
  split = split or config.eval_split
  preproc = config.get("eval_preproc", "resize_crop_32")
  if preproc not in preprocessing.EVAL_PREPROCS:
    raise ValueError(f"Unknown eval_preproc {preproc!r}; expected one of "
                     f"{preprocessing.EVAL_PREPROCS}.")
  builder = _builder(config)
  split = _check_prepared(builder, split)
  channels = _channels(builder, config)
  total = split_size(builder, split)
  start, end = shard_bounds(total, process_index, process_count)
  batch = per_device_batch * num_devices
  return dict(
      builder=builder, split=split, preproc=preproc, channels=channels,
      num_devices=num_devices, per_device_batch=per_device_batch, batch=batch,
      process_index=process_index, process_count=process_count, n=end - start,
      size=int(config.eval_image_size), crop_pct=float(config.get("eval_crop_pct", 0.875)),
      norm=preprocessing.config_normalization(config, channels),
      # The largest shard decides the number of batches, identical on every process.
      num_batches=-(-(-(-total // process_count)) // batch),
      in_memory=_fits_in_memory(builder, end - start) and channels == _channels(builder))


def eval_iterator(config, *, per_device_batch: int, num_devices: Optional[int] = None,
                  split: Optional[str] = None, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """Finite iterator: images [D, b, H, W, C] f32, labels int32 [D, b], mask f32 [D, b].

  Every example of the split is yielded exactly once over all processes (mask 1); padding has
  mask 0 (and zero images), and every process yields the same number of batches.
  """
  plan = _eval_plan(config, per_device_batch, num_devices, split, process_index, process_count)
  shape = tuple(plan["builder"].info.features["image"].shape)
  if (plan["in_memory"] and plan["preproc"] == "none"
      and shape[:2] == (plan["size"], plan["size"])):
    return _eval_numpy(plan)  # already model-sized and decoded: no tf.data needed
  return iter(tfds.as_numpy(_eval_tf(plan)))


def _eval_numpy(plan) -> Iterator[Dict[str, np.ndarray]]:
  """Same batches as ``eval_dataset`` for decoded in-memory images with eval_preproc 'none'."""
  images, labels = _load_in_memory(plan["builder"], plan["split"], plan["process_index"],
                                   plan["process_count"])
  batch, d, b = plan["batch"], plan["num_devices"], plan["per_device_batch"]
  mean, std = ((np.asarray(plan["norm"][0], np.float32), np.asarray(plan["norm"][1], np.float32))
               if plan["norm"] is not None else (None, None))
  for i in range(plan["num_batches"]):
    chunk = images[i * batch:(i + 1) * batch].astype(np.float32)
    k = len(chunk)
    out = np.zeros((batch,) + images.shape[1:], np.float32)
    out[:k] = chunk if mean is None else (chunk - mean) / std
    lab = np.zeros((batch,), np.int32)
    lab[:k] = labels[i * batch:i * batch + k]
    mask = np.zeros((batch,), np.float32)
    mask[:k] = 1.0
    yield {"images": out.reshape((d, b) + images.shape[1:]), "labels": lab.reshape(d, b),
           "mask": mask.reshape(d, b)}


def eval_dataset(config, *, per_device_batch: int, num_devices: Optional[int] = None,
                 split: Optional[str] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> tf.data.Dataset:
  """The tf.data pipeline of ``eval_iterator`` (which may bypass it for small decoded data)."""
  return _eval_tf(_eval_plan(config, per_device_batch, num_devices, split, process_index,
                             process_count))


def _eval_tf(plan) -> tf.data.Dataset:
  builder, size, channels, batch = plan["builder"], plan["size"], plan["channels"], plan["batch"]
  norm, n = plan["norm"], plan["n"]
  if plan["in_memory"]:
    images_np, labels_np = _load_in_memory(builder, plan["split"], plan["process_index"],
                                           plan["process_count"])
    ds = tf.data.Dataset.from_tensor_slices((images_np, labels_np))
  else:
    ds, _ = _shard_dataset(builder, plan["split"], plan["process_index"], plan["process_count"],
                           decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))

  def prep(image, label):
    image = preprocessing.eval_preprocess(image, plan["preproc"], size, channels,
                                          plan["crop_pct"])
    return image, tf.cast(label, tf.int32), tf.constant(1.0, tf.float32)

  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
  num_pad = plan["num_batches"] * batch - n
  pad = tf.data.Dataset.from_tensors(
      (tf.zeros([size, size, channels], tf.float32), tf.constant(0, tf.int32),
       tf.constant(0.0, tf.float32))).repeat(num_pad)
  ds = ds.concatenate(pad).batch(batch, drop_remainder=True)
  d, b = plan["num_devices"], plan["per_device_batch"]

  def finish(images, labels, mask):
    if norm is not None:
      images = preprocessing.normalize(images, *norm) * mask[:, None, None, None]
    return {"images": tf.reshape(images, [d, b, size, size, channels]),
            "labels": tf.reshape(labels, [d, b]),
            "mask": tf.reshape(mask, [d, b])}

  ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())
