"""nfnets_jax: Normalizer-Free networks and Adaptive Gradient Clipping in JAX/Haiku.

Rooms (imports flow downwards only; see docs/layout.md):
  research/    sweep, signal propagation, benchmark, FLOP counting
  engine/      train_and_evaluate, steps, pmap, checkpoints, evaluation, reporting
  pretrained   one door for every weight source
  weights/     formats made elsewhere (DeepMind's release, timm)
  models/      the families and the registry;   optim/  AGC and the recipe;   data/  pipelines
  layers       WS-conv, scaled activations, SE, stochastic depth
  errors       the expected errors, below everything
"""
from nfnets_jax.optim import agc  # `from nfnets_jax import agc` keeps working

__version__ = "0.1.0"
