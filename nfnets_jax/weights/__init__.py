"""Formats of weights made elsewhere, read and written without running anyone's code.

``deepmind``: DeepMind's released ``F*_haiku.npz`` pickles (MD5 table, restricted unpickler,
name/shape validation) and our plain ``.npz`` conversion. The engine's own checkpoints are
``engine/checkpoint.py``; ``nfnets_jax.pretrained`` is the one door to all of them.
"""
from nfnets_jax.weights import deepmind

__all__ = ["deepmind"]
