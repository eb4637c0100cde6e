"""Builds the TFDS ``fashion_mnist`` dataset offline from Debian's ``dataset-fashion-mnist`` files.

Debian's gzip files wrap the same idx contents as upstream but with other gzip headers, so
TFDS's recorded checksums do not match. We subclass TFDS's own builder (same name, version,
features) and feed it the decoded idx contents; the result is a genuine TFDS dataset that
``tfds.load('fashion_mnist', data_dir=...)`` reads like any other.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
NUM_EXAMPLES = {"train": 60000, "test": 10000}
NUM_CLASSES = 10
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """Parses an idx file (gzipped or not): magic 0x0000, dtype byte, ndim, big-endian dims."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path} is not an idx file (bad magic {data[:4]!r}).")
  dtype, ndim = data[2], data[3]
  if dtype not in _IDX_DTYPES:
    raise ValueError(f"{path}: unknown idx dtype code {dtype:#x}.")
  dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  array = np.frombuffer(data, dtype=_IDX_DTYPES[dtype], offset=4 + 4 * ndim)
  if array.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} values), file has "
                     f"{array.size}.")
  return array.reshape(dims)


def source_paths(source_dir: str = DEFAULT_SOURCE_DIR) -> Dict[str, tuple]:
  return {split: tuple(os.path.join(source_dir, f) for f in files)
          for split, files in FILES.items()}


def missing_files(source_dir: str = DEFAULT_SOURCE_DIR):
  return [p for paths in source_paths(source_dir).values() for p in paths if not os.path.exists(p)]


def load_split(split: str, source_dir: str = DEFAULT_SOURCE_DIR):
  """(images uint8 [n, 28, 28], labels uint8 [n]) straight from the idx files."""
  image_path, label_path = source_paths(source_dir)[split]
  images, labels = read_idx(image_path), read_idx(label_path)
  if images.shape != (NUM_EXAMPLES[split], 28, 28) or labels.shape != (NUM_EXAMPLES[split],):
    raise ValueError(f"Fashion-MNIST {split}: unexpected shapes {images.shape}, {labels.shape}.")
  return images, labels


def make_builder_class(source_dir: str):
  """TFDS's FashionMNIST builder reading the local idx files instead of downloading."""

  class OfflineFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
    name = "fashion_mnist"

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return {split: self._generate_examples(split) for split in FILES}

    def _generate_examples(self, split):  # pylint: disable=arguments-differ
      images, labels = load_split(split, source_dir)
      for index in range(len(labels)):
        yield index, {"image": images[index][:, :, None], "label": int(labels[index])}

  return OfflineFashionMNIST


def ensure_source_files(source_dir: str = DEFAULT_SOURCE_DIR, log: Callable = print) -> None:
  """Installs Debian's package when root, else raises with the command to run."""
  missing = missing_files(source_dir)
  if not missing:
    return
  if source_dir == DEFAULT_SOURCE_DIR and hasattr(os, "geteuid") and os.geteuid() == 0 \
      and shutil.which("apt-get"):
    log(f"Fashion-MNIST files missing ({missing[0]}...); installing {DEBIAN_PACKAGE} with apt-get")
    subprocess.run(["apt-get", "install", "-y", DEBIAN_PACKAGE], check=False)
    missing = missing_files(source_dir)
    if missing:
      subprocess.run(["apt-get", "update"], check=False)
      subprocess.run(["apt-get", "install", "-y", DEBIAN_PACKAGE], check=False)
      missing = missing_files(source_dir)
  if missing:
    raise FileNotFoundError(
        f"Fashion-MNIST source files missing: {missing}. Install them with "
        f"`sudo apt-get install {DEBIAN_PACKAGE}` (or pass --download where the internet is "
        "reachable, or --source_dir pointing at the four idx .gz files).")


def is_built(data_dir: str) -> bool:
  """True when a complete fashion_mnist (60,000 / 10,000) is prepared in data_dir."""
  try:
    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    if not builder.is_prepared():
      return False
    return all(builder.info.splits[s].num_examples == n for s, n in NUM_EXAMPLES.items())
  except Exception:  # pylint: disable=broad-except
    return False


def build(data_dir: str, source_dir: str = DEFAULT_SOURCE_DIR, log: Callable = print):
  """download_and_prepare from the local files; returns the prepared builder."""
  ensure_source_files(source_dir, log)
  builder = make_builder_class(source_dir)(data_dir=data_dir)
  log(f"Building TFDS fashion_mnist {builder.version} from {source_dir} into {builder.data_dir}")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False))
  return tfds.builder("fashion_mnist", data_dir=data_dir)


def download_build(data_dir: str, log: Callable = print):
  """TFDS's own download (needs the internet)."""
  log("Building fashion_mnist with TFDS's own download")
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def verify(data_dir: str, source_dir: Optional[str] = DEFAULT_SOURCE_DIR, log: Callable = print):
  """Checks counts per split and class, and that (image, label) pairs equal the idx files.

  TFDS shuffles example order at write time, so pairs are matched by image content.
  Raises AssertionError on any mismatch; returns {split: per-class counts}.
  """
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  result = {}
  for split, expected_n in NUM_EXAMPLES.items():
    images, labels = [], []
    for batch in tfds.as_numpy(builder.as_dataset(split=split, batch_size=10000)):
      images.append(batch["image"])
      labels.append(batch["label"])
    images = np.concatenate(images)[..., 0]
    labels = np.concatenate(labels)
    if len(labels) != expected_n:
      raise AssertionError(f"{split}: {len(labels)} examples, expected {expected_n}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if split == "train" and not np.all(counts == expected_n // NUM_CLASSES):
      raise AssertionError(f"{split}: per-class counts {counts.tolist()}, expected 6000 each")
    if split == "test" and not np.all(counts == expected_n // NUM_CLASSES):
      raise AssertionError(f"{split}: per-class counts {counts.tolist()}, expected 1000 each")
    if source_dir is not None:
      src_images, src_labels = load_split(split, source_dir)
      if not np.array_equal(np.bincount(src_labels, minlength=NUM_CLASSES), counts):
        raise AssertionError(f"{split}: class counts differ from the idx labels")
      pairs = {}
      for img, lab in zip(src_images, src_labels):
        key = (img.tobytes(), int(lab))
        pairs[key] = pairs.get(key, 0) + 1
      for img, lab in zip(images, labels):
        key = (img.tobytes(), int(lab))
        if pairs.get(key, 0) <= 0:
          raise AssertionError(f"{split}: an (image, label={lab}) pair is not in the idx files")
        pairs[key] -= 1
    result[split] = counts
    log(f"verified {split}: {len(labels)} examples, per class {counts.tolist()}")
  return result


def prepare(data_dir: str, source_dir: str = DEFAULT_SOURCE_DIR, download: bool = False,
            force: bool = False, verify_existing: bool = False, log: Callable = print):
  """Idempotent: builds (offline, or by download) unless already built, then verifies."""
  if is_built(data_dir) and not force:
    log(f"fashion_mnist already built in {data_dir} (60000 train / 10000 test); skipping")
    if verify_existing:
      verify(data_dir, source_dir if not missing_files(source_dir) else None, log)
    return
  if force:
    path = os.path.join(data_dir, "fashion_mnist")
    if os.path.isdir(path):
      shutil.rmtree(path)
  if download:
    download_build(data_dir, log)
  else:
    build(data_dir, source_dir, log)
  verify(data_dir, source_dir if not missing_files(source_dir) else None, log)
