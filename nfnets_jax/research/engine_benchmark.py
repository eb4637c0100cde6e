"""The engine at scale: per-device memory of its real train step, and its throughput and MFU.

``memory``: XLA's compiled memory analysis (arguments, outputs, temporaries, per device) of the
train step ``train.build_run`` would compile for a config (``config.parallel``, ``fsdp``,
``remat``, compute dtype, EMA on), lowered from shapes alone: nothing is allocated, so F7 on 8
simulated CPU devices reports what each device of an 8-accelerator host would hold. Arguments
are the state (parameters, momentum, EMA) and one batch; with donation the outputs alias them.

``throughput``: the same step run for real over every local device; images/s, and model FLOP
utilisation (MFU) = FLOPs per step (``benchmark.step_flops``: 3 x the forward pass's
2 x MACs) x steps/s over the devices' bfloat16 dense peak (``PEAK_BF16_TFLOPS``, by device
name; None where unknown, e.g. a CPU).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax.engine import parallel
from nfnets_jax.engine import steps
from nfnets_jax.research import flops

# Dense bfloat16 peak per device (vendor data sheets, without sparsity), TFLOP/s. Matched as a
# case-insensitive substring of ``device.device_kind``, first match wins (longer names first).
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("V100", 125.0),  # float16 tensor cores (V100 has no bfloat16)
    ("TPU v3", 123.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v6 lite", 918.0),
)


def peak_bf16_flops(device=None) -> Optional[float]:
  """The device's dense bfloat16 peak in FLOP/s, or None when its name is not in the table."""
  kind = (device or jax.local_devices()[0]).device_kind.lower()
  for name, tflops in PEAK_BF16_TFLOPS:
    if name.lower() in kind:
      return tflops * 1e12
  return None


@dataclasses.dataclass
class EngineCase:
  """One measured layout of one model's train step."""
  model: str = "nfnet_f0"
  per_device_batch: int = 4
  image_size: int = 0  # 0 = the model's train size
  precision: str = "bfloat16"
  parallel: str = "mesh"
  fsdp: int = 1
  remat: str = "none"
  num_classes: int = 1000
  model_kwargs: Dict = dataclasses.field(default_factory=dict)

  @property
  def size(self) -> int:
    return self.image_size or models.get_info(self.model).train_image_size

  @property
  def name(self) -> str:
    engine = "pmap" if self.parallel == "pmap" else f"mesh fsdp={self.fsdp}"
    return (f"{self.model} {self.size}px {self.precision} {engine} remat={self.remat} "
            f"{self.per_device_batch}/device")


def case_config(case: EngineCase) -> ml_collections.ConfigDict:
  """The training-config fields the engine's step builders read, for ``case`` (EMA on)."""
  return ml_collections.ConfigDict(dict(
      model=case.model, model_kwargs=dict(case.model_kwargs), compute_dtype=case.precision,
      label_smoothing=0.1, optimizer=optim.default_optimizer_config(), ema_decay=0.99999,
      sam=dict(rho=0.0, batch_fraction=1.0, sync=False), parallel=case.parallel,
      fsdp=case.fsdp, remat=case.remat, num_devices=None))


class BuiltStep:
  """The engine, its train step and the abstract (shape-only) state and batch of ``case``."""

  def __init__(self, case: EngineCase):
    self.case = case
    config = case_config(case)
    self.engine = parallel.make_engine(config)
    forward = steps.make_forward(config, case.num_classes)
    n = jax.device_count()
    batch = case.per_device_batch * n
    self.tx = optim.build_optimizer(config.optimizer, batch_size=batch, steps_per_epoch=1000,
                                    total_steps=100_000)
    self.train_step = self.engine.make_train_step(
        steps.make_grad_fn(forward, config, axis_name=self.engine.axis_name),
        steps.make_update_fn(self.tx, config))
    shape = (1, case.size, case.size, 3)

    def make_state(rng):
      params, model_state = forward.init(rng, jnp.zeros(shape, jnp.float32), True)
      return steps.make_train_state(params, model_state, self.tx, rng, with_ema=True)

    self.make_state = make_state
    self.state_shapes = jax.eval_shape(make_state, jax.random.PRNGKey(0))
    self.batch_shapes = {
        "images": jax.ShapeDtypeStruct((batch, case.size, case.size, 3), jnp.float32),
        "labels": jax.ShapeDtypeStruct((batch, case.num_classes), jnp.float32)}

  def abstract_args(self):
    """Shape structs with the engine's shardings (pmap: a leading axis per device)."""
    if isinstance(self.engine, parallel.MeshEngine):
      shard = self.engine.shardings(self.state_shapes)
      state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                           self.state_shapes, shard)
      batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
          s.shape, s.dtype, sharding=self.engine.batch_sharding), self.batch_shapes)
      return state, batch
    n = jax.local_device_count()
    lead = lambda s, k=1: jax.ShapeDtypeStruct((n,) + tuple(s.shape[1:] if k else s.shape),
                                               s.dtype)
    state = jax.tree.map(lambda s: lead(s, 0), self.state_shapes)
    batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
        (n, s.shape[0] // n) + tuple(s.shape[1:]), s.dtype), self.batch_shapes)
    return state, batch


def state_bytes(tree) -> int:
  return int(sum(np.prod(x.shape, dtype=np.int64) * x.dtype.itemsize
                 for x in jax.tree.leaves(tree)))


def memory(case: EngineCase) -> dict:
  """Per-device compiled memory of ``case``'s train step (and the time its compile took)."""
  built = BuiltStep(case)
  t0 = time.time()
  compiled = built.train_step.lower(*built.abstract_args()).compile()
  compile_s = time.time() - t0
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                         "temp_size_in_bytes", "alias_size_in_bytes")}
  out["peak_estimate_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  return dict(case=case.name, **dict(dataclasses.asdict(case), image_size=case.size),
              devices=jax.device_count(), state_bytes_total=state_bytes(built.state_shapes),
              compile_s=compile_s, **out)


def throughput(case: EngineCase, steps_timed: int = 10, warmup: int = 2) -> dict:
  """images/s and MFU of ``case``'s train step over every device (synthetic batch)."""
  built = BuiltStep(case)
  host = jax.device_get(jax.jit(built.make_state)(jax.random.PRNGKey(0)))
  state = built.engine.put_state(jax.tree.map(np.asarray, host))
  n_local = jax.local_device_count()
  rng = np.random.default_rng(0)
  per = case.per_device_batch
  labels = np.eye(case.num_classes, dtype=np.float32)[rng.integers(0, case.num_classes,
                                                                    (n_local, per))]
  host_batch = {"images": rng.standard_normal((n_local, per, case.size, case.size, 3),
                                              dtype=np.float32), "labels": labels}
  batch = next(built.engine.batches(iter([host_batch]), size=1))
  t0 = time.time()
  state, metrics = built.train_step(state, batch)
  jax.block_until_ready(metrics)
  first_step_s = time.time() - t0
  for _ in range(warmup):
    state, metrics = built.train_step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.time()
  for _ in range(steps_timed):
    state, metrics = built.train_step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.time() - t0) / steps_timed
  global_batch = per * jax.device_count()
  step_flops = 3 * 2 * flops.count_macs(case.model, case.size, case.num_classes,
                                        **case.model_kwargs) * global_batch
  peak = peak_bf16_flops()
  mfu = step_flops / seconds / (peak * jax.device_count()) if peak else None
  return dict(case=case.name, **dict(dataclasses.asdict(case), image_size=case.size),
              devices=jax.device_count(), device_kind=jax.local_devices()[0].device_kind, first_step_s=first_step_s,
              step_s=seconds, images_per_s=global_batch / seconds,
              model_tflops_per_s=step_flops / seconds / 1e12, mfu=mfu,
              peak_bf16_tflops_per_device=peak / 1e12 if peak else None)


def memory_table(results: Sequence[dict]) -> str:
  """Markdown: per-device MiB and the state's share against the replicated case's."""
  gib = lambda b: f"{b / 2**30:.2f}"
  lines = ["| model | engine | remat | per device batch | arguments GiB | outputs GiB | "
           "temporaries GiB | peak estimate GiB | arguments vs fsdp=1 |",
           "|---|---|---|---|---|---|---|---|---|"]
  base = {}
  for r in results:
    if r["fsdp"] == 1 and r["remat"] == "none":
      base[r["model"]] = r["argument_size_in_bytes"]
  for r in results:
    engine = "pmap" if r["parallel"] == "pmap" else f"mesh fsdp={r['fsdp']}"
    share = (f"{r['argument_size_in_bytes'] / base[r['model']]:.3f}"
             if r["model"] in base else "")
    lines.append(f"| {r['model']} {r['image_size']} px | {engine} | {r['remat']} | "
                 f"{r['per_device_batch']} | {gib(r['argument_size_in_bytes'])} | "
                 f"{gib(r['output_size_in_bytes'])} | {gib(r['temp_size_in_bytes'])} | "
                 f"{gib(r['peak_estimate_bytes'])} | {share} |")
  return "\n".join(lines)


def throughput_table(results: Sequence[dict]) -> str:
  lines = ["| case | device | img/s | step s | model TFLOP/s | MFU |", "|---|---|---|---|---|---|"]
  for r in results:
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    lines.append(f"| {r['case']} | {r['devices']} x {r['device_kind']} | "
                 f"{r['images_per_s']:.1f} | {r['step_s']:.4f} | "
                 f"{r['model_tflops_per_s']:.2f} | {mfu} |")
  return "\n".join(lines)


def memory_cases(models_: Sequence[str], per_device_batch: int, precision: str,
                 fsdps: Sequence[int] = (1, 8), remats: Sequence[str] = ("none", "blocks"),
                 ) -> List[EngineCase]:
  return [EngineCase(model=m, per_device_batch=per_device_batch, precision=precision,
                     parallel="mesh", fsdp=f, remat=r)
          for m in models_ for r in remats for f in fsdps]
