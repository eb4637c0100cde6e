"""Input pipelines (facts section 6), one room for every source of images.

``get_dataset_info``, ``train_iterator`` and ``eval_iterator`` take a config and dispatch on
``config.dataset``: ``'synthetic'`` (``synthetic.py``, in-memory, device-count invariant, for
tests and benchmarks), ``'folder'`` (your images in ``config.data_dir/<split>/<class>/``, read
by ``folder.py``'s TFDS builder through ``pipeline.py``) or any TFDS image classification
dataset (``pipeline.py``: ImageNet with the paper's augmentations, Fashion-MNIST built offline
by ``fashion_mnist.py``, ...). Imports nothing of the package but ``errors``.
"""
import os as _os

# TensorFlow only feeds the host here: keep its C++ INFO chatter (oneDNN banners) quiet unless
# the user asked for it. Has no effect if TensorFlow was imported before.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from nfnets_jax.data import folder
from nfnets_jax.data import pipeline
from nfnets_jax.data import synthetic
from nfnets_jax.data.pipeline import DatasetInfo
from nfnets_jax.data.pipeline import eval_dataset
from nfnets_jax.data.pipeline import list_supported
from nfnets_jax.data.pipeline import shard_bounds
from nfnets_jax.data.pipeline import train_dataset
from nfnets_jax.errors import DatasetError
from nfnets_jax.errors import DatasetNotFoundError
from nfnets_jax.errors import UnknownDatasetError

SYNTHETIC = synthetic.NAME


def source(config):
  """The module that serves ``config.dataset``: ``synthetic`` or the TFDS ``pipeline``."""
  return synthetic if config.dataset == SYNTHETIC else pipeline


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
