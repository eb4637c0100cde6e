"""nfnets_jax: Normalizer-Free networks and Adaptive Gradient Clipping in JAX/Haiku."""

__version__ = "0.1.0"
