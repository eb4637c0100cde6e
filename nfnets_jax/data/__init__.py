"""Input pipelines (facts section 6), one room for every source of images.

``get_dataset_info``, ``train_iterator`` and ``eval_iterator`` take a config and dispatch on
``config.dataset``: ``'synthetic'`` (``synthetic.py``, in-memory, device-count invariant, for
tests and benchmarks), ``'folder'`` (your images in ``config.data_dir/<split>/<class>/``, read
by ``folder.py``'s TFDS builder through ``pipeline.py``) or any TFDS image classification
dataset (``pipeline.py``: ImageNet with the paper's augmentations, Fashion-MNIST built offline
by ``fashion_mnist.py``, ...). Imports nothing of the package but ``errors``.

The TensorFlow-backed modules and the names they define are imported on first use (PEP 562
``__getattr__``): importing this package, as every entry point does, costs no TensorFlow.
"""
import importlib as _importlib
import os as _os

# TensorFlow only feeds the host here: keep its C++ INFO chatter (oneDNN banners) quiet unless
# the user asked for it. Has no effect if TensorFlow was imported before.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from nfnets_jax.data import synthetic
from nfnets_jax.errors import DatasetError
from nfnets_jax.errors import DatasetNotFoundError
from nfnets_jax.errors import UnknownDatasetError

SYNTHETIC = synthetic.NAME

# Modules that import TensorFlow or TFDS, and the public names taken from one of them.
_TF_MODULES = ("fashion_mnist", "folder", "image_files", "mixing", "pipeline", "preprocessing",
               "randaugment", "randaugment_batch")
_FROM_PIPELINE = ("DatasetInfo", "eval_dataset", "list_supported", "shard_bounds",
                  "train_dataset")


def __getattr__(name):
  """Imports a TensorFlow-backed module (or a name of ``pipeline``) when first asked for."""
  if name in _TF_MODULES:
    return _importlib.import_module(f"{__name__}.{name}")
  if name in _FROM_PIPELINE:
    value = getattr(_importlib.import_module(f"{__name__}.pipeline"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_TF_MODULES) | set(_FROM_PIPELINE))


def source(config):
  """The module that serves ``config.dataset``: ``synthetic`` or the TFDS ``pipeline``."""
  return synthetic if config.dataset == SYNTHETIC else __getattr__("pipeline")


def get_dataset_info(config):
  """Classes, split sizes and the model's input shape (``DatasetInfo``) of ``config.dataset``."""
  return source(config).get_dataset_info(config)


def train_iterator(config, **kwargs):
  """Endless iterator of host batches shaped [devices, batch, ...] (see ``pipeline``)."""
  return source(config).train_iterator(config, **kwargs)


def eval_iterator(config, **kwargs):
  """Finite, padded iterator covering the eval split exactly once (``mask`` marks real ones)."""
  return source(config).eval_iterator(config, **kwargs)


__all__ = [
    "DatasetError", "DatasetInfo", "DatasetNotFoundError", "SYNTHETIC", "UnknownDatasetError",
    "eval_dataset", "eval_iterator", "folder", "get_dataset_info", "list_supported",
    "shard_bounds", "source", "train_dataset", "train_iterator",
]
