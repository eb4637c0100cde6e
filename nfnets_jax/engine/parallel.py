"""Data parallelism with ``jax.pmap``: the only module that knows about devices and collectives.

Layout: every array that a pmapped function sees has a leading axis of size
``jax.local_device_count()`` (one slice per local device). Replicated values (the train state)
are copies along that axis; batches are split along it. Across processes, ``pmap`` with
``axis_name=AXIS`` spans all devices of all processes, so ``lax.pmean`` over ``AXIS`` averages over
the global batch. A jit + sharding engine could replace this module without touching the
training loop: it only needs ``replicate``/``unreplicate``/``shard`` and the two step factories.
"""
from __future__ import annotations

import collections
import itertools
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

AXIS = "batch"


def local_devices(num_devices: Optional[int] = None) -> list:
  """This process's devices, or only the first ``num_devices`` of them (single-process tests)."""
  devices = jax.local_devices()
  return devices[:num_devices] if num_devices else devices


def local_sharding(devices=None) -> jax.sharding.NamedSharding:
  """Splits the leading axis of an array over ``devices`` (default: this process's devices)."""
  devices = devices or jax.local_devices()
  # Same mesh as pmap's outputs (axis named AXIS), so step 2 does not recompile for a
  # different input sharding.
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree, devices=None):
  """Copies every leaf onto each local device (leading axis of size len(devices))."""
  devices = devices or jax.local_devices()
  n = len(devices)
  sharding = local_sharding(devices)

  def rep(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else jax.device_get(x)
    return jax.device_put(np.broadcast_to(x[None], (n,) + x.shape), sharding)

  return jax.tree.map(rep, tree)


def unreplicate(tree):
  """Host (numpy) copy of the first device's slice of every replicated leaf."""

  def first(x):
    if isinstance(x, jax.Array):
      return np.asarray(jax.device_get(x.addressable_shards[0].data))[0]
    return np.asarray(x)[0]

  return jax.tree.map(first, tree)


def shard(batch, devices=None):
  """Places host arrays shaped [local_devices, ...] one slice per device (asynchronously)."""
  sharding = local_sharding(devices)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


def prefetch(iterator: Iterable, size: int = 2, devices=None) -> Iterator:
  """Shards batches ``size`` steps ahead so host-to-device copies overlap compute."""
  queue = collections.deque()
  iterator = iter(iterator)

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(shard(batch, devices))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


def check_batch_layout(batch_size: int, per_device_batch_size: Optional[int],
                       num_devices: int) -> Tuple[int, int]:
  """(micro-batch per device, accumulation steps) for a global ``batch_size``; clear errors.

  ``batch_size = num_devices * per_device_batch_size * accumulation_steps``.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if batch_size % num_devices:
    raise ValueError(
        f"batch_size={batch_size} is not divisible by the {num_devices} devices of this run; "
        f"use a multiple of {num_devices} (e.g. --config.batch_size="
        f"{max(num_devices, batch_size - batch_size % num_devices)}).")
  per_device_total = batch_size // num_devices
  micro = per_device_batch_size or per_device_total
  if micro <= 0 or per_device_total % micro:
    raise ValueError(
        f"per_device_batch_size={per_device_batch_size} does not divide the per-device share "
        f"{per_device_total} of batch_size={batch_size} over {num_devices} devices; pick a "
        f"divisor of {per_device_total} (gradient accumulation makes up the rest).")
  return micro, per_device_total // micro


def per_device_rng(rng: jax.Array, step: jax.Array) -> jax.Array:
  """Inside pmap: a key unique to (``step``, global device index)."""
  return jax.random.fold_in(jax.random.fold_in(rng, step), jax.lax.axis_index(AXIS))


GradFn = Callable[..., Tuple[Any, Tuple[Any, Dict[str, jax.Array]]]]


def make_train_step(grad_fn: GradFn, update_fn: Callable, *, accumulation_steps: int = 1,
                    donate: bool = True, devices=None) -> Callable:
  """The pmapped train step ``(state, batch) -> (state, metrics)``.

  Args:
    grad_fn: ``(params, model_state, batch, rng) -> (grads, (new_model_state, metrics))`` on one
      micro-batch (a dict of arrays with a leading batch axis); metrics are means over it.
    update_fn: ``(state, grads, model_state, metrics) -> (state, metrics)``, applied once per
      step to gradients already averaged over the whole global batch (all micro-batches of all
      devices), so AGC and the optimizer see the full-batch gradient.
    accumulation_steps: k; each device's batch of ``k * micro`` examples is split into k
      micro-batches that are run one after the other (``lax.scan``) and their gradients averaged.
    donate: donate the state's buffers to the output (halves peak memory).
    devices: None (every device of every process) or, in a single-process run only, a subset
      of the local devices; a list of local devices in a multi-process run would make the
      collectives process-local.

  ``state`` must be a dict with ``params``, ``model_state``, ``rng`` (replicated key) and
  ``step``. Each micro-batch gets the key ``fold_in(per_device_rng(rng, step), micro_index)``.
  """
  k = int(accumulation_steps)

  def step(state, batch):
    rng = per_device_rng(state["rng"], state["step"])
    params = state["params"]
    if k == 1:
      grads, (model_state, metrics) = grad_fn(params, state["model_state"], batch,
                                              jax.random.fold_in(rng, 0))
    else:
      micro = jax.tree.map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)

      def body(carry, inputs):
        grad_sum, model_state = carry
        index, micro_batch = inputs
        grads, (model_state, metrics) = grad_fn(params, model_state, micro_batch,
                                                jax.random.fold_in(rng, index))
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        return (grad_sum, model_state), metrics

      zeros = jax.tree.map(jnp.zeros_like, params)
      (grad_sum, model_state), metrics = jax.lax.scan(
          body, (zeros, state["model_state"]), (jnp.arange(k), micro))
      grads = jax.tree.map(lambda g: g / k, grad_sum)
      metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    grads = jax.lax.pmean(grads, AXIS)
    metrics = jax.lax.pmean(metrics, AXIS)
    model_state = jax.lax.pmean(model_state, AXIS)  # e.g. BatchNorm statistics
    return update_fn(state, grads, model_state, metrics)

  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,) if donate else (), devices=devices)


def make_eval_step(sum_fn: Callable, devices=None) -> Callable:
  """pmapped ``(params, model_state, batch) -> totals`` summed over every device of every host.

  ``sum_fn(params, model_state, batch)`` returns per-device sums (e.g. correct predictions over
  the masked examples); the result is the same on every device.
  """

  def step(params, model_state, batch):
    return jax.lax.psum(sum_fn(params, model_state, batch), AXIS)

  return jax.pmap(step, axis_name=AXIS, devices=devices)
