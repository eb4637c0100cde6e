"""Parts every Normalizer-Free family of this package shares.

The per-block betas and stochastic-depth rates (expected-std bookkeeping), the classifier head,
the signal-propagation metrics convention, the input check, timm's width rounding and the
zero-initialised last gain of timm-style blocks. Imports only ``layers``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax import layers


def nf_betas_and_rates(depths: Sequence[int], alpha: float, stochdepth_rate: float):
  """Per-block (beta, stochastic depth rate), in network order.

  ``beta = 1 / expected_std``; expected_std starts at 1, is reset to 1 after the first block
  of each stage (so a stage's first block sees the previous stage's value) and after every
  block grows to ``sqrt(expected_std**2 + alpha**2)``. Block
  ``i`` of ``N`` drops with rate ``stochdepth_rate * i / N``.
  """
  out = []
  num_blocks = sum(depths)
  index = 0
  expected_std = 1.0
  for depth in depths:
    for block_index in range(depth):
      beta = 1.0 / expected_std
      out.append((beta, stochdepth_rate * index / num_blocks))
      if block_index == 0:
        expected_std = 1.0
      expected_std = (expected_std ** 2 + alpha ** 2) ** 0.5
      index += 1
  return out


def block_metrics(index: int, out: jax.Array, res_var: jax.Array) -> dict:
  """The per-block signal-propagation metrics shared by every family in this package.

  Keys: ``block_{i}_avg_sq_mean`` and ``block_{i}_avg_var`` of the block's output and
  ``block_{i}_res_var``, the average channel variance of its residual branch (before skip
  gain and stochastic depth).
  """
  metrics = layers.signal_metrics(out, f"block_{index}")
  metrics[f"block_{index}_res_var"] = res_var
  return metrics


def channel_var(x: jax.Array) -> jax.Array:
  """Average over channels of the per-channel variance of NHWC ``x``."""
  return jnp.mean(jnp.var(x, axis=(0, 1, 2)))


def classifier_head(pool: jax.Array, fc: hk.Module, drop_rate: float,
                    is_training: bool) -> jax.Array:
  """Dropout (training only) followed by the classifier."""
  if is_training and drop_rate:
    pool = layers.dropout(pool, drop_rate, hk.next_rng_key())
  return fc(pool)


REMAT_MODES = ("none", "blocks")


def check_remat(remat: str) -> str:
  """``remat``: 'none' or 'blocks' (each residual block recomputed in the backward pass)."""
  if remat not in REMAT_MODES:
    raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}.")
  return remat


def check_input(x: jax.Array, module_name: str) -> None:
  if x.ndim != 4:
    raise ValueError(
        f"{module_name} expects NHWC images of rank 4, got shape {tuple(x.shape)}; add a batch "
        "dimension or transpose NCHW input to NHWC.")


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None,
                   round_limit: float = 0.9) -> int:
  """Rounds ``v`` to the nearest multiple of ``divisor`` (never more than 10% down)."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < round_limit * v:
    new_v += divisor
  return new_v


def zero_last_gain_creator(next_creator, shape, dtype, init, context):
  """Haiku creator: the gain of a block's last conv (``conv2``) starts at zero (timm's
  zero-init of the last BN-free conv, instead of a skip gain)."""
  if context.full_name.endswith("/conv2/gain"):
    init = jnp.zeros
  return next_creator(shape, dtype, init)
