"""Input pipelines (facts section 6): TFDS ImageNet with the paper's augmentations, and
Fashion-MNIST built offline as the embedded default. Any TFDS image classification dataset
(``list_supported()``) works by name from a config once its data is prepared.
"""
import os as _os

# TensorFlow only feeds the host here: keep its C++ INFO chatter (oneDNN banners) quiet unless
# the user asked for it. Has no effect if TensorFlow was imported before.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
from nfnets_jax.data.pipeline import DatasetInfo
from nfnets_jax.data.pipeline import DatasetNotFoundError
from nfnets_jax.data.pipeline import eval_dataset
from nfnets_jax.data.pipeline import eval_iterator
from nfnets_jax.data.pipeline import get_dataset_info
from nfnets_jax.data.pipeline import list_supported
from nfnets_jax.data.pipeline import shard_bounds
from nfnets_jax.data.pipeline import train_dataset
from nfnets_jax.data.pipeline import train_iterator

__all__ = [
    "DatasetInfo", "DatasetNotFoundError", "eval_dataset", "eval_iterator", "get_dataset_info",
    "list_supported", "shard_bounds", "train_dataset", "train_iterator",
]
