"""Moved to :mod:`nfnets_jax.weights.checkpoint`, below both the engine and ``pretrained``;
this name keeps ``from nfnets_jax.engine import checkpoint`` working (same module object)."""
import sys

from nfnets_jax.weights import checkpoint as _checkpoint

sys.modules[__name__] = _checkpoint
