"""Haiku's key stream drawn ahead, so a jitted init compiles a few random draws, not thousands.

``hk.next_rng_key()`` splits the sequence's key once per call: a chain of ``jax.random.split``
in which each key depends on the one before. Traced into one ``jax.jit`` of F7's init (1,661
initializers), that chain and one random op per parameter are most of a 92 s compile. Here the
chain is one ``lax.scan`` whose keys are queued in the sequence, so every later
``hk.next_rng_key()`` returns exactly the key it would have split, and a run of identical blocks
draws each parameter's values for all its blocks with one ``vmap``-ed initializer
(:class:`RunInit`). Same seed, same values, bit for bit (tests/models/test_stacking.py).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

# Keys queued before the first block of a run: more than one block draws (an NFNet block: 7).
FIRST_BLOCK_KEYS = 64


def key_chain(key: jax.Array, n: int) -> Tuple[jax.Array, jax.Array]:
  """``(key_n, subkeys)``: ``n`` times ``key, sub = split(key)`` (Haiku's rule), as one scan."""
  def step(k, _):
    k, sub = jax.random.split(k)
    return k, sub
  return jax.lax.scan(step, key, None, length=n)


def pending_keys() -> Optional[int]:
  """How many keys Haiku's sequence holds queued, or None without a sequence."""
  state = hk.maybe_get_rng_sequence_state()
  return None if state is None else len(state[1])


def queue_keys(n: int) -> bool:
  """Queues the sequence's next keys until ``n`` are pending; False without a sequence."""
  state = hk.maybe_get_rng_sequence_state()
  if state is None:
    return False
  key, pending = state
  if len(pending) >= n:
    return True
  key, subs = key_chain(key, n - len(pending))
  hk.replace_rng_sequence_state((key, tuple(pending) + tuple(subs[i] for i in range(len(subs)))))
  return True


def init_with_keys(init: Callable, shape, dtype, keys: jax.Array, count: int):
  """``init(shape, dtype)`` with its ``count`` draws of ``hk.next_rng_key()`` returning
  ``keys[0..count-1]`` (vmap-able over a leading axis of ``keys``)."""
  with hk.with_rng(keys[0]):  # a private sequence: the outer one is left as it is
    hk.replace_rng_sequence_state((keys[0], tuple(keys[t] for t in range(count))))
    return init(shape, dtype)


class RunInit:
  """Initial values for a run of ``length`` identical blocks, drawn as the blocks one by one
  would draw them: block 0 draws normally (recording which of its keys each initializer
  takes); every later block's values then come from one vmapped initializer per parameter,
  and its draws only pop keys already queued. Use: :meth:`start`, then :meth:`create` for each
  parameter of each block in order, :meth:`first_block_done` after block 0, :meth:`stacked`.
  """

  def __init__(self, length: int):
    self.length = length
    # key -> (offset of its draws in a block's keys, how many, block 0's value, init, shape,
    # dtype); and key -> the values of blocks 1.. (leading axis).
    self.records: Dict[Hashable, Tuple[int, int, Any, Callable, Any, Any]] = {}
    self.later: Dict[Hashable, jax.Array] = {}
    self.fast = False
    self._queued = 0  # keys queued before block 0

  @classmethod
  def start(cls, length: int) -> "RunInit":
    run = cls(length)
    run.fast = length > 1 and queue_keys(FIRST_BLOCK_KEYS)
    if run.fast:
      run._queued = pending_keys()
    return run

  def create(self, key: Hashable, block: int, shape, dtype, init: Callable):
    if not self.fast:
      return init(shape, dtype)
    if block == 0:
      before = pending_keys()
      value = init(shape, dtype)
      after = pending_keys()
      self.records[key] = (self._queued - before, before - after, value, init, shape, dtype)
      return value
    for _ in range(self.records[key][1]):  # its draws, already queued: only popped
      hk.next_rng_key()
    return self.later[key][block - 1]

  def first_block_done(self) -> None:
    if not self.fast:
      return
    left = pending_keys()
    if left == 0:  # the queue ran dry: the block's number of draws is unknown; draw normally
      self.fast = False
      return
    per_block = self._queued - left
    later = self.length - 1
    queue_keys(later * per_block)
    _, pending = hk.maybe_get_rng_sequence_state()
    for key, (offset, count, value, init, shape, dtype) in self.records.items():
      if count == 0:  # no random draw: the same value for every block
        self.later[key] = jnp.broadcast_to(value, (later,) + tuple(np.shape(value)))
        continue
      keys = jnp.stack([jnp.stack([pending[b * per_block + offset + t] for t in range(count)])
                        for b in range(later)])
      self.later[key] = jax.vmap(
          lambda k, init=init, shape=shape, dtype=dtype, count=count: init_with_keys(
              init, shape, dtype, k, count))(keys)

  def stacked(self, key: Hashable, values: List[Any]) -> jax.Array:
    """All blocks' values of ``key`` (``values``: what :meth:`create` returned, in order)."""
    if not self.fast:
      return jnp.stack(values)
    return jnp.concatenate([self.records[key][2][None], self.later[key]])
