"""The two device engines, and the only module that knows about devices and collectives.

``config.parallel='pmap'`` (default, the reference's data parallelism): every array a pmapped
function sees has a leading axis of size ``jax.local_device_count()``; the train state is
replicated along it, batches are split along it, and ``lax.pmean`` over ``AXIS`` spans all devices
of all processes. ``config.parallel='mesh'``: ``jax.jit`` over a ``(data, fsdp)`` device mesh with
the state sharded over ``fsdp`` (``config.fsdp``; see ``MeshEngine``). Both run the same
per-device gradient code (``device_grads``), so they give the same numbers, and both save host
(numpy) states: a run saved under one engine or mesh shape resumes under another. The training
loop talks to either through ``Engine`` (``make_engine(config)``).
"""
from __future__ import annotations

import collections
import itertools
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from nfnets_jax import layers

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


def owned_by_xla(tree):
  """``tree`` as buffers XLA owns. On the CPU, ``device_put`` of a numpy array shares the
  array's memory, a buffer XLA cannot donate: the first train step would then write a second
  state beside the first (F7: 6 GB more to page in, ~30 s; docs/benchmarks.md "Time to first
  step"). Accelerators copy on ``device_put`` anyway; there this returns ``tree`` unchanged."""
  leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
  if not any(d.platform == "cpu" for x in leaves for d in x.sharding.device_set):
    return tree
  # A runtime copy on the same devices: nothing to compile, unlike jnp.copy per shape.
  return jax.tree.map(
      lambda x: jax.device_put(x, x.sharding, may_alias=False) if isinstance(x, jax.Array)
      else x, tree)


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


def prefetch(iterator: Iterable, size: int = 2, devices=None,
             put: Optional[Callable] = None) -> Iterator:
  """Places batches ``size`` steps ahead so host-to-device copies overlap compute; ``put``
  places one batch (default: ``shard`` over ``devices``, pmap's layout)."""
  queue = collections.deque()
  iterator = iter(iterator)
  put = put or (lambda batch: shard(batch, devices))

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(put(batch))

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


def step_rng(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The key of a train step: the same on every device and micro-batch (layout-free)."""
  return jax.random.fold_in(rng, step)


def device_grads(grad_fn: "GradFn", params, model_state, batch, rng, step, *,
                 accumulation_steps: int, device_index):
  """One device's share of a train step, before any cross-device reduction.

  Splits the device's ``k * micro`` examples into ``k`` micro-batches (``lax.scan``) and averages
  their gradients and metrics. Example ``e`` of the device's share has the global id
  ``device_index * k * micro + e`` (the row it holds in the global batch), set with
  ``layers.example_ids`` around each ``grad_fn`` call: stochastic depth and dropout then draw
  every example's mask from its id and the step's key alone, so the numbers do not depend on the
  number of devices, the engine or the accumulation split.
  """
  k = int(accumulation_steps)
  rng = step_rng(rng, step)
  per_device = jax.tree.leaves(batch)[0].shape[0]
  micro = per_device // k
  first_id = device_index * per_device

  def run(micro_batch, model_state, index):
    ids = (first_id + index * micro + jnp.arange(micro)).astype(jnp.int32)
    with layers.example_ids(ids):
      return grad_fn(params, model_state, micro_batch, rng)

  if k == 1:
    grads, (model_state, metrics) = run(batch, model_state, 0)
    return grads, model_state, metrics
  micro_batches = jax.tree.map(lambda x: x.reshape((k, micro) + x.shape[1:]), batch)

  def body(carry, inputs):
    grad_sum, model_state = carry
    index, micro_batch = inputs
    grads, (model_state, metrics) = run(micro_batch, model_state, index)
    return (jax.tree.map(jnp.add, grad_sum, grads), model_state), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grad_sum, model_state), metrics = jax.lax.scan(
      body, (zeros, model_state), (jnp.arange(k), micro_batches))
  grads = jax.tree.map(lambda g: g / k, grad_sum)
  metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
  return grads, model_state, metrics


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
  ``step``. Every micro-batch of every device gets the key ``step_rng(rng, step)``; examples
  differ by their global ids (``device_grads``).
  """

  def step(state, batch):
    grads, model_state, metrics = device_grads(
        grad_fn, state["params"], state["model_state"], batch, state["rng"], state["step"],
        accumulation_steps=accumulation_steps, device_index=jax.lax.axis_index(AXIS))
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


# ---------------------------------------------------------------------------------------------
# The mesh engine: ``jax.jit`` over a (data, fsdp) device mesh.
#
# The batch is split over every device of the mesh. Parameters, optimizer state and EMA are
# sharded over the ``fsdp`` axis (ZeRO/FSDP: each array split along one dimension that the axis
# divides, else replicated) and replicated over ``data``. The gradient of each device's share is
# per-device code (``jax.shard_map``): the parameters are gathered, ``device_grads`` runs exactly
# as under pmap, and the gradients are averaged over ``data`` and reduce-scattered over ``fsdp``,
# so each device keeps only its shard. The optimizer update then runs on the shards (GSPMD).

MESH_AXES = ("data", "fsdp")
MIN_SHARDED_SIZE = 1024  # smaller arrays (gains, biases, counters) stay replicated


def make_mesh(devices, fsdp: int = 1) -> jax.sharding.Mesh:
  """A ``(data, fsdp)`` mesh over ``devices`` (in order: processes, then local devices)."""
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"fsdp={fsdp} must divide the {n} devices of this run (1 = replicated).")
  return jax.sharding.Mesh(np.array(devices).reshape(n // fsdp, fsdp), MESH_AXES)


def fsdp_spec(shape, fsdp: int) -> jax.sharding.PartitionSpec:
  """How one state array is laid out: split along its largest dimension that ``fsdp`` divides
  (the last of equals), or replicated (``fsdp == 1``, small or indivisible arrays)."""
  P = jax.sharding.PartitionSpec
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
    return P()
  candidates = [d for d, size in enumerate(shape) if size % fsdp == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], d))
  return P(*([None] * dim + ["fsdp"]))


def _sharded_dim(spec) -> Optional[int]:
  for d, name in enumerate(spec):
    if name == "fsdp":
      return d
  return None


def state_specs(tree, fsdp: int):
  """``fsdp_spec`` of every leaf of ``tree`` (host arrays, device arrays or shape structs)."""
  return jax.tree.map(lambda x: fsdp_spec(np.shape(x), fsdp), tree)


class Engine:
  """What the training loop needs from a device layout; ``PmapEngine`` or ``MeshEngine``.

  ``put_state``/``get_state`` move a host state (the same numpy tree on every process) onto the
  devices and back; ``init_state`` creates a fresh one on the devices (no host copy);
  ``get`` reads a small replicated result (metrics, counters); ``batches`` places host
  batches shaped ``[local_devices, per_device, ...]`` a few steps ahead.
  """
  name: str
  axis_name: Any  # the device axes of the per-device code (``grad_fn``'s collectives)

  def __init__(self, devices, pmap_devices):
    self.devices = devices
    self._pmap_devices = pmap_devices

  @property
  def num_devices(self) -> int:
    return len(self._pmap_devices) if self._pmap_devices else jax.device_count()


class PmapEngine(Engine):
  """The reference's data parallelism: every device holds the whole state (``jax.pmap``)."""
  name = "pmap"
  axis_name = AXIS

  def put_state(self, host_state):
    return owned_by_xla(replicate(host_state, self.devices))

  def init_state(self, make, *args):
    """``make(*args)`` (a jittable state factory) computed where the state lives: on each
    device, in buffers XLA owns (the first step can donate them; nothing passes the host)."""
    n = len(self.devices)
    def placed(*a):
      return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), make(*a))
    return jax.jit(placed, out_shardings=local_sharding(self.devices))(*args)

  def get_state(self, state):
    return unreplicate(state)

  def get(self, tree):
    return unreplicate(tree)

  def put_batch(self, batch):
    """Host ``[local_devices, per_device, ...]`` -> one slice per local device."""
    return shard(batch, self.devices)

  def batches(self, iterator, size: int = 2):
    return prefetch(iterator, size=size, put=self.put_batch)

  def make_train_step(self, grad_fn, update_fn, *, accumulation_steps: int = 1,
                      donate: bool = True):
    return make_train_step(grad_fn, update_fn, accumulation_steps=accumulation_steps,
                           donate=donate, devices=self._pmap_devices)

  def make_eval_step(self, sum_fn):
    return make_eval_step(sum_fn, devices=self._pmap_devices)


class MeshEngine(Engine):
  """``jax.jit`` over a ``(data, fsdp)`` mesh; state sharded over ``fsdp`` (module comment)."""
  name = "mesh"
  axis_name = MESH_AXES

  def __init__(self, devices, pmap_devices, fsdp: int = 1):
    super().__init__(devices, pmap_devices)
    global_devices = list(pmap_devices) if pmap_devices else jax.devices()
    self.fsdp = int(fsdp)
    self.mesh = make_mesh(global_devices, self.fsdp)

  def sharding(self, spec=None) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh, spec or jax.sharding.PartitionSpec())

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return self.sharding(jax.sharding.PartitionSpec(MESH_AXES))

  def shardings(self, tree):
    return jax.tree.map(self.sharding, state_specs(tree, self.fsdp),
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))

  def put_state(self, host_state):
    def put(x, sharding):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return owned_by_xla(jax.tree.map(put, host_state, self.shardings(host_state)))

  def init_state(self, make, *args):
    """``make(*args)`` computed straight into the state's shards (fsdp: no device and no host
    ever holds the whole state)."""
    def placed(*a):
      state = make(*a)
      return jax.lax.with_sharding_constraint(state, self.shardings(state))
    return jax.jit(placed)(*args)  # traced once: the shardings come from the traced shapes

  def get_state(self, state):
    return jax.tree.map(_host_value, state)

  def get(self, tree):
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def put_batch(self, batch):
    """Host ``[local_devices, per_device, ...]`` -> one global array split over the mesh."""
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_process_local_data(
          self.batch_sharding, x.reshape((-1,) + x.shape[2:]))
    return jax.tree.map(put, batch)

  def batches(self, iterator, size: int = 2):
    return prefetch(iterator, size=size, put=self.put_batch)

  def make_train_step(self, grad_fn, update_fn, *, accumulation_steps: int = 1,
                      donate: bool = True):
    """The jitted ``(state, batch) -> (state, metrics)``, same numbers as the pmap step."""
    P = jax.sharding.PartitionSpec
    fsdp, mesh = self.fsdp, self.mesh
    compiled = {}

    def build(state):
      param_specs = state_specs(state["params"], fsdp)

      def per_device(params, model_state, rng, step, batch):
        grads, model_state, metrics = device_grads(
            grad_fn, params, model_state, batch, rng, step,
            accumulation_steps=accumulation_steps, device_index=jax.lax.axis_index(MESH_AXES))

        def reduce(g, spec):
          dim = _sharded_dim(spec)
          if dim is None:
            return jax.lax.pmean(g, MESH_AXES)
          g = jax.lax.pmean(g, "data")
          return jax.lax.psum_scatter(g, "fsdp", scatter_dimension=dim, tiled=True) / fsdp

        grads = jax.tree.map(reduce, grads, param_specs)
        return (grads, jax.lax.pmean(model_state, MESH_AXES),
                jax.lax.pmean(metrics, MESH_AXES))

      grads_of = jax.shard_map(
          per_device, mesh=mesh, in_specs=(P(), P(), P(), P(), P(MESH_AXES)),
          out_specs=(param_specs, P(), P()), check_vma=False)

      def step(state, batch):
        grads, model_state, metrics = grads_of(state["params"], state["model_state"],
                                               state["rng"], state["step"], batch)
        return update_fn(state, grads, model_state, metrics)

      state_sh = self.shardings(state)
      return jax.jit(step, in_shardings=(state_sh, self.batch_sharding),
                     out_shardings=(state_sh, self.sharding()),
                     donate_argnums=(0,) if donate else ())

    def train_step(state, batch):
      key = jax.tree.structure(state)
      if key not in compiled:
        compiled[key] = build(state)
      return compiled[key](state, batch)

    train_step.lower = lambda state, batch: build(state).lower(state, batch)
    return train_step

  def make_eval_step(self, sum_fn):
    """Jitted ``(params, model_state, batch) -> totals`` over the whole mesh (replicated)."""
    P = jax.sharding.PartitionSpec

    def per_device(params, model_state, batch):
      return jax.lax.psum(sum_fn(params, model_state, batch), MESH_AXES)

    return jax.jit(jax.shard_map(per_device, mesh=self.mesh,
                                 in_specs=(P(), P(), P(MESH_AXES)), out_specs=P(),
                                 check_vma=False))


def _host_value(x):
  """The whole value of a (possibly sharded, possibly multi-process) array, as numpy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


PARALLEL_MODES = ("pmap", "mesh")


def make_engine(config) -> Engine:
  """The engine ``config.parallel`` names (``'pmap'`` default, or ``'mesh'`` with
  ``config.fsdp``), over ``config.num_devices`` local devices or every device."""
  mode = config.get("parallel", "pmap")
  requested = config.get("num_devices", None)
  devices = local_devices(requested)
  pmap_devices = devices if requested else None
  if mode == "pmap":
    return PmapEngine(devices, pmap_devices)
  if mode == "mesh":
    return MeshEngine(devices, pmap_devices, fsdp=int(config.get("fsdp", 1)))
  raise ValueError(f"config.parallel={mode!r}; use one of {PARALLEL_MODES}.")
