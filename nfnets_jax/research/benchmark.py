"""Throughput, compile time, FLOP/s and memory of NFNet training and eval steps.

The measured steps are the engine's own, so the numbers are those of training and evaluation.
Train: ``parallel.make_train_step(steps.make_grad_fn(...), steps.make_update_fn(...))`` over
one device without accumulation, i.e. the pmapped step ``train.build_run`` compiles: forward
(training mode: stochastic depth and dropout on) + label-smoothed loss + backward + the
optimizer update (``optim.build_optimizer``: AGC, weight decay, Nesterov SGD) with the
non-finite guard and the AGC statistics of the logged metrics; float32 parameters, gradients
and optimizer state, the compute dtype (``precision``) cast inside the loss; no EMA. Eval:
``steps.make_eval_apply`` (float32, as the engine's evaluation), jitted.

FLOP convention: ``flops.count_macs`` counts multiply-accumulates of convolutions and linear
layers (DeepMind's "FLOPs"); here one MAC = 2 FLOPs, and a training step costs 3x the forward
pass (forward + gradient w.r.t. activations + gradient w.r.t. weights). Elementwise work, the
optimizer and AGC are not counted. The fraction of peak divides by the FLOP/s of a large
matrix multiply measured in the same process (float32 on CPU, bfloat16 elsewhere).

Variants compared side by side (``compare``) are compiled first and then timed in interleaved
rounds (one step of A, one of B, ...), so background load hits both alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import os
import pathlib
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax

from nfnets_jax import data
from nfnets_jax import layers
from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax.engine import parallel
from nfnets_jax.engine import steps as engine_steps
from nfnets_jax.engine import train
from nfnets_jax.engine import validation
from nfnets_jax.research import flops

FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of convolutions and linear layers (flops.count_macs); "
    "train step = 3 x forward; elementwise ops, optimizer and AGC not counted.")

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODES = ("train", "eval")


@dataclasses.dataclass
class BenchConfig:
  """One measured configuration."""
  model: str = "nfnet_f0"
  mode: str = "train"
  batch: int = 8
  image_size: int = 192
  precision: str = "float32"
  agc: bool = True
  grouped_conv_impl: str = "auto"
  num_classes: int = 1000
  model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  label: Optional[str] = None
  label_smoothing: float = 0.1  # the recipe's (configs/default.py)
  # Train only: SAM (engine/sam.py) with this radius (0 = off) and ascent batch fraction.
  sam_rho: float = 0.0
  sam_batch_fraction: float = 1.0
  # Eval only: fold the weight standardization into the kernels once per parameter set
  # (layers.fold_weight_standardization) and run the model under layers.folded_weights().
  fold_ws: bool = False
  # XLA compile options (DebugOptions fields, e.g. ``xla_cpu_experimental_ynn_fusion_type``)
  # for this config's step only, so variants compiled with different flags run side by side
  # in one process (XLA_FLAGS would apply to every step).
  xla_options: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def validate(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}.")
    if self.mode == "eval" and self.precision != "float32":
      raise ValueError("eval mode times steps.make_eval_apply, which runs in float32 like the "
                       f"engine's evaluation; got precision={self.precision!r}.")
    if self.sam_rho and self.mode != "train":
      raise ValueError("sam_rho applies to the train step only.")
    if self.batch < 1 or self.image_size < 8:
      raise ValueError(
          f"batch must be >= 1 and image_size >= 8 (got {self.batch}, {self.image_size}).")
    if self.grouped_conv_impl not in layers.GROUPED_CONV_IMPLS:
      raise ValueError(f"grouped_conv_impl must be one of {layers.GROUPED_CONV_IMPLS}, got "
                       f"{self.grouped_conv_impl!r}.")
    models.get_info(self.model)  # Unknown names fail here with the list of known ones.

  @property
  def name(self) -> str:
    if self.label:
      return self.label
    parts = [self.model, self.mode, f"b{self.batch}", f"{self.image_size}px", self.precision]
    if self.mode == "train":
      parts.append("agc" if self.agc else "no_agc")
      if self.sam_rho:
        parts.append(f"sam(rho={self.sam_rho:g}, fraction={self.sam_batch_fraction:g})")
    if _accepts_impl(self.model):
      parts.append(f"conv={self.resolved_impl}")
    if self.fold_ws and self.mode == "eval":
      parts.append("folded")
    parts.extend(f"{k}={v}" for k, v in sorted(self.xla_options.items()))
    return " ".join(parts)

  @property
  def resolved_impl(self) -> str:
    return layers.resolve_grouped_impl(self.grouped_conv_impl)

  @property
  def optimizer_name(self) -> str:
    return "sgd_agc" if self.agc else "sgd"


# ------------------------------------------------------------------------------------------
# Machine description and the matmul peak.
# ------------------------------------------------------------------------------------------
def cpu_model_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def machine_info() -> dict:
  dev = jax.devices()[0]
  return dict(
      backend=jax.default_backend(), device_kind=dev.device_kind,
      num_devices=jax.device_count(), cpu_model=cpu_model_name(), cpu_cores=cpu_cores(),
      python=platform.python_version(), jax=jax.__version__,
      jaxlib=jaxlib.__version__, haiku=hk.__version__, optax=optax.__version__,
      numpy=np.__version__,
      xla_flags=os.environ.get("XLA_FLAGS", ""), load_average=list(os.getloadavg()))


def matmul_peak(n: Optional[int] = None, dtype: Optional[str] = None, repeats: int = 5) -> dict:
  """FLOP/s of an ``n x n`` matmul on the default device: the 'peak' fractions divide by it.

  Defaults: 4096 float32 on CPU; 8192 bfloat16 on GPU/TPU (their dense peak is bf16).
  """
  cpu = jax.default_backend() == "cpu"
  n = n or (4096 if cpu else 8192)
  dtype = dtype or ("float32" if cpu else "bfloat16")
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  best = min(times)
  return dict(n=n, dtype=dtype, seconds_best=best, seconds_median=statistics.median(times),
              flops_per_s=2.0 * n ** 3 / best)


def memory_report(device=None) -> dict:
  """Peak memory: the device allocator's peak where reported, else the process max RSS."""
  device = device or jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return dict(peak_memory_bytes=int(stats["peak_bytes_in_use"]),
                peak_memory_source="device.memory_stats()['peak_bytes_in_use'] (process-wide)")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB.
  return dict(peak_memory_bytes=int(rss),
              peak_memory_source="process max RSS (device reports no memory stats)")


def _compiled_memory(compiled) -> Optional[dict]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}
  if {"argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"} <= set(out):
    out["total_live_estimate_bytes"] = (
        out["argument_size_in_bytes"] + out["output_size_in_bytes"]
        + out["temp_size_in_bytes"] - out.get("alias_size_in_bytes", 0))
  return out


# ------------------------------------------------------------------------------------------
# The measured steps.
# ------------------------------------------------------------------------------------------
def _accepts_impl(model: str) -> bool:
  try:
    return "grouped_conv_impl" in inspect.signature(models.get_info(model).constructor).parameters
  except (TypeError, ValueError):
    return False


def _forward_fn(cfg: BenchConfig) -> hk.TransformedWithState:
  kwargs = dict(cfg.model_kwargs)
  if _accepts_impl(cfg.model):
    kwargs["grouped_conv_impl"] = cfg.grouped_conv_impl
  elif cfg.grouped_conv_impl != "auto":
    raise ValueError(f"Model {cfg.model!r} has no grouped_conv_impl argument; leave "
                     "grouped_conv_impl='auto' for it.")
  return models.transform(cfg.model, cfg.num_classes, **kwargs)


def engine_config(cfg: BenchConfig) -> ml_collections.ConfigDict:
  """The fields of a training config that the engine's step builders read, for ``cfg``."""
  return ml_collections.ConfigDict(dict(
      compute_dtype=cfg.precision, label_smoothing=float(cfg.label_smoothing),
      optimizer=ml_collections.ConfigDict(dict(name=cfg.optimizer_name)), ema_decay=None,
      sam=ml_collections.ConfigDict(dict(rho=float(cfg.sam_rho),
                                         batch_fraction=float(cfg.sam_batch_fraction)))))


def _build_tx(opt_config, batch: int) -> optax.GradientTransformation:
  """``optim.build_optimizer`` at global batch ``batch``; the schedule's length only sets the
  learning rate, not the cost of a step."""
  return optim.build_optimizer(opt_config, batch_size=batch, steps_per_epoch=1000,
                               total_steps=100_000)


@dataclasses.dataclass
class Step:
  """A jitted (eval) or pmapped (train) step, its abstract arguments and a maker of concrete
  ones."""
  cfg: BenchConfig
  fn: Callable
  abstract_args: tuple
  make_args: Callable[[], tuple]
  carry: Callable[[tuple, Any], tuple]  # (args, outputs) -> args of the next call


def build_step(cfg: BenchConfig) -> Step:
  """The train or eval step of ``cfg``, not compiled, no parameter allocated."""
  cfg.validate()
  transformed = _forward_fn(cfg)
  shape = (cfg.batch, cfg.image_size, cfg.image_size, 3)
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  rng0 = jax.random.PRNGKey(0)

  def init_model(rng):
    return transformed.init(rng, jnp.zeros(shape, jnp.float32), True)

  def make_images_labels():
    x = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)
    lab = jax.random.randint(jax.random.PRNGKey(2), (cfg.batch,), 0, cfg.num_classes)
    return x, jax.nn.one_hot(lab, cfg.num_classes, dtype=jnp.float32)

  if cfg.mode == "eval":
    eval_apply = engine_steps.make_eval_apply(transformed)

    def eval_step(params, state, x):
      with layers.folded_weights() if cfg.fold_ws else contextlib.nullcontext():
        return eval_apply(params, state, x)

    def init_eval(rng):
      params, state = init_model(rng)
      # The fold records each block's kernel by its own name: per-block parameters.
      return (models.unstack_blocks(params) if cfg.fold_ws else params), state

    def make_args():
      params, state = jax.jit(init_eval)(rng0)
      if cfg.fold_ws:  # Once per parameter set, not timed with the step.
        params = layers.fold_weight_standardization(
            transformed, params, state, jnp.zeros((1, 32, 32, 3), jnp.float32))
      return params, state, make_images_labels()[0]

    abstract = jax.eval_shape(init_eval, rng0) + (images,)
    return Step(cfg, jax.jit(eval_step), abstract, make_args, carry=lambda args, out: args)

  config = engine_config(cfg)
  tx = _build_tx(config.optimizer, cfg.batch)
  device = jax.local_devices()[0]
  train_step = parallel.make_train_step(
      engine_steps.make_grad_fn(transformed, config), engine_steps.make_update_fn(tx, config),
      devices=[device])

  def make_state(rng):
    params, model_state = init_model(rng)
    return engine_steps.make_train_state(params, model_state, tx, rng, with_ema=False)

  def make_args():
    x, labels = make_images_labels()
    return (parallel.replicate(jax.jit(make_state)(rng0), [device]),
            parallel.shard({"images": x[None], "labels": labels[None]}, [device]))

  # pmap's arguments carry a leading axis of one slice per device.
  per_device = lambda s: jax.ShapeDtypeStruct((1,) + tuple(s.shape), s.dtype)
  abstract = jax.tree.map(per_device, (
      jax.eval_shape(make_state, rng0),
      {"images": images,
       "labels": jax.ShapeDtypeStruct((cfg.batch, cfg.num_classes), jnp.float32)}))
  return Step(cfg, train_step, abstract, make_args, carry=lambda args, out: (out[0], args[1]))


def step_flops(cfg: BenchConfig) -> int:
  """FLOPs of one step of ``cfg`` under ``FLOP_CONVENTION``."""
  macs = flops.count_macs(cfg.model, cfg.image_size, cfg.num_classes, **cfg.model_kwargs)
  forward = 2 * macs * cfg.batch
  return 3 * forward if cfg.mode == "train" else forward


class _Timed:
  """Warm-up and timed calls of a subclass's ``_run() -> seconds``; times in ``self.times``."""

  def warmup(self, n: int):
    for _ in range(n):
      self._run()

  def timed(self):
    self.times.append(self._run())


class Runner(_Timed):
  """A compiled step with its live arguments; ``__call__`` runs and times one step."""

  def __init__(self, step: Step, compile_only: bool = False):
    self.step = step
    self.cfg = step.cfg
    t0 = time.perf_counter()
    lowered = step.fn.lower(*step.abstract_args)
    t1 = time.perf_counter()
    self.compiled = lowered.compile(compiler_options=dict(step.cfg.xla_options) or None)
    t2 = time.perf_counter()
    self.lower_s = t1 - t0
    self.compile_s = t2 - t1
    self.compiled_memory = _compiled_memory(self.compiled)
    self.times: List[float] = []
    self.first_step_s = None
    self.args = None
    if not compile_only:
      self.args = step.make_args()
      self.first_step_s = self._run()

  def _run(self) -> float:
    t0 = time.perf_counter()
    out = self.compiled(*self.args)
    jax.block_until_ready(out)
    dt = time.perf_counter() - t0
    self.args = self.step.carry(self.args, out)
    return dt

  def result(self, peak_flops: Optional[float], flops_per_step: Optional[int]) -> dict:
    cfg = self.cfg
    r = dict(name=cfg.name, model=cfg.model, mode=cfg.mode, batch=cfg.batch,
             image_size=cfg.image_size, precision=cfg.precision,
             optimizer=cfg.optimizer_name if cfg.mode == "train" else None,
             grouped_conv_impl=cfg.grouped_conv_impl, grouped_conv_resolved=cfg.resolved_impl,
             model_kwargs=dict(cfg.model_kwargs), xla_options=dict(cfg.xla_options),
             lower_s=self.lower_s, compile_s=self.compile_s, first_step_s=self.first_step_s,
             compiled_memory=self.compiled_memory)
    r.update(timing_fields(self.times, cfg.batch, flops_per_step, peak_flops))
    return r


def timing_fields(times: Sequence[float], batch: int, flops_per_step: Optional[int],
                  peak_flops: Optional[float]) -> dict:
  """Median/min step time, images/s and FLOP/s (and fraction of peak) of measured ``times``."""
  if not times:
    return {}
  med = statistics.median(times)
  r = dict(step_times_s=list(times), step_time_median_s=med, step_time_min_s=min(times),
           images_per_s=batch / med)
  if flops_per_step:
    r["flops_per_step"] = int(flops_per_step)
    r["achieved_flops_per_s"] = flops_per_step / med
    if peak_flops:
      r["fraction_of_peak"] = flops_per_step / med / peak_flops
  return r


def _warm_up_xla():
  """Compiles and runs a tiny conv + grad so one-time backend set-up is not billed to the
  first measured compile."""
  x = jnp.ones((1, 8, 8, 4))
  w = jnp.ones((3, 3, 4, 4))
  f = jax.jit(jax.grad(lambda w: jnp.sum(layers.conv2d(x, w, 1, "SAME", 1) ** 2)))
  jax.block_until_ready(f(w))


def measure(configs: Sequence[BenchConfig], steps: int = 5, warmup: int = 1,
            peak_flops: Optional[float] = None, compile_only: bool = False,
            count_flops: bool = True, log: Callable[[str], None] = print) -> List[dict]:
  """Compiles every config, then times them in ``steps`` interleaved rounds; one dict each."""
  _warm_up_xla()
  runners = []
  for cfg in configs:
    log(f"[compile] {cfg.name}")
    runner = Runner(build_step(cfg), compile_only=compile_only)
    log(f"  lower {runner.lower_s:.1f}s compile {runner.compile_s:.1f}s"
        + ("" if compile_only else f" first step {runner.first_step_s:.2f}s"))
    if not compile_only:
      runner.warmup(warmup)
    runners.append(runner)
  if not compile_only:
    for i in range(steps):
      for runner in runners:
        runner.timed()
      log(f"  round {i + 1}/{steps}: "
          + ", ".join(f"{r.times[-1]:.3f}s" for r in runners))
  results = []
  for runner in runners:
    fl = step_flops(runner.cfg) if count_flops else None
    r = runner.result(peak_flops, fl)
    r.update(memory_report())
    results.append(r)
    runner.args = None  # Free the buffers.
  return results


def ratio(results: Sequence[dict], numerator: int, denominator: int, what: str) -> dict:
  """images/s of ``results[numerator]`` over ``results[denominator]`` (and step-time ratio)."""
  a, b = results[numerator], results[denominator]
  out = dict(kind=what, numerator=a["name"], denominator=b["name"])
  if "images_per_s" in a and "images_per_s" in b:
    out["throughput_ratio"] = a["images_per_s"] / b["images_per_s"]
    out["step_time_ratio"] = a["step_time_median_s"] / b["step_time_median_s"]
    # Ratio of per-round times is robust to slow drifts in background load.
    per_round = [x / y for x, y in zip(a["step_times_s"], b["step_times_s"])]
    out["step_time_ratio_per_round_median"] = statistics.median(per_round)
  return out


# ------------------------------------------------------------------------------------------
# Input pipeline.
# ------------------------------------------------------------------------------------------
BENCH_DATASET = "nfnets_bench_jpegs"
_BUILDER_CLASS = None


def _synthetic_jpeg_images(num_images: int, seed: int = 0, min_side: int = 300,
                           max_side: int = 500):
  """Smooth colour fields with mild noise at ImageNet-like sizes (JPEG sizes like photos')."""
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    chans = []
    for _ in range(3):
      fx, fy, ph = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 6.3)
      chans.append(127.5 + 100 * np.sin(fx * 6.28 * xx + ph) * np.cos(fy * 6.28 * yy))
    img = np.stack(chans, -1) + rng.normal(0, 12, (h, w, 3))
    yield i, np.clip(img, 0, 255).astype(np.uint8)


def _bench_builder_class():
  """A TFDS builder of generated JPEGs (variable size, 1000 classes), defined once."""
  global _BUILDER_CLASS
  if _BUILDER_CLASS is not None:
    return _BUILDER_CLASS
  # Lazy so that TFDS registers this builder only when the pipeline benchmark runs.
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class NfnetsBenchJpegs(tfds.core.GeneratorBasedBuilder):
    """ImageNet-like generated JPEGs for input-pipeline benchmarks (no download)."""
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"n{n}") for n in (64, 256, 1024, 4096)]

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=1000)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(int(self.builder_config.name[1:]))}

    def _generate_examples(self, n):
      for i, img in _synthetic_jpeg_images(n):
        yield i, {"image": img, "label": i % 1000}

  _BUILDER_CLASS = NfnetsBenchJpegs
  return _BUILDER_CLASS


def build_bench_dataset(data_dir: str, num_images: int = 256) -> str:
  """Generates (once per ``data_dir``) the benchmark JPEG dataset; returns its TFDS name."""
  sizes = (64, 256, 1024, 4096)
  if num_images not in sizes:
    raise ValueError(f"num_images must be one of {sizes} (builder configs), got {num_images}.")
  cls = _bench_builder_class()
  builder = cls(config=f"n{num_images}", data_dir=data_dir)
  builder.download_and_prepare()
  return f"{BENCH_DATASET}/n{num_images}"


def imagenet_train_config(dataset: str, data_dir: str, image_size: int = 192):
  """The F0 ImageNet train-pipeline config (facts section 5/6) pointed at ``dataset``."""
  return ml_collections.ConfigDict(dict(
      seed=0, dataset=dataset, data_dir=data_dir, train_split="train",
      train_image_size=image_size, train_preproc="inception_crop", normalization="imagenet",
      augment=ml_collections.ConfigDict(dict(
          flip=True, pad=0, randaugment_layers=4, randaugment_magnitude=5, mixup_alpha=0.2,
          cutmix=True)),
      shuffle_buffer=16384))


def input_pipeline_benchmark(num_images: int = 256, batches: int = 10, batch: int = 32,
                             image_size: int = 192, data_dir: Optional[str] = None,
                             log: Callable[[str], None] = print) -> dict:
  """images/s of ``data.train_iterator`` (inception crop, flip, RandAugment 4x5, MixUp/CutMix).

  The source is a generated TFDS dataset of JPEGs read exactly like ImageNet (encoded records
  streamed through the shuffle buffer, decode of the crop window only). The first batch (which
  fills the shuffle buffer and starts the threads) is not timed.
  """
  owned = data_dir is None
  tmp = tempfile.TemporaryDirectory(prefix="nfnets_bench_") if owned else None
  data_dir = tmp.name if owned else data_dir
  try:
    t0 = time.perf_counter()
    name = build_bench_dataset(data_dir, num_images)
    build_s = time.perf_counter() - t0
    log(f"[pipeline] generated {num_images} JPEGs in {build_s:.1f}s")
    cfg = imagenet_train_config(name, data_dir, image_size)
    it = data.train_iterator(cfg, per_device_batch=batch, num_devices=1)
    t0 = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - t0
    shapes = {k: list(v.shape) for k, v in first.items()}
    times = []
    t_all = time.perf_counter()
    for _ in range(batches):
      t0 = time.perf_counter()
      next(it)
      times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    cores = cpu_cores()
    ips = batches * batch / total
    log(f"[pipeline] {batches} batches of {batch}: {ips:.1f} img/s")
    return dict(dataset=name, num_images=num_images, batch=batch, image_size=image_size,
                batches_timed=batches, first_batch_s=first_s, batch_times_s=times,
                images_per_s=ips, cpu_cores=cores, images_per_s_per_core=ips / cores,
                output_shapes=shapes, augmentations="inception_crop, flip, RandAugment(4, 5), "
                "MixUp(0.2)/CutMix, imagenet normalization")
  finally:
    if tmp is not None:
      tmp.cleanup()


def optimizer_update_benchmark(cfg: BenchConfig, optimizers: Sequence[str] = ("sgd_agc", "sgd"),
                               rounds: int = 20) -> dict:
  """Times the optimizer update alone on ``cfg``'s parameter shapes, interleaved.

  The AGC overhead of a training step is the difference of the two updates (the forward and
  backward passes are identical); this isolates it from the much larger and noisier step.
  """
  transformed = _forward_fn(cfg)
  shape = (1, cfg.image_size, cfg.image_size, 3)
  params, _ = jax.jit(lambda r: transformed.init(r, jnp.zeros(shape, jnp.float32), True))(
      jax.random.PRNGKey(0))
  grads = jax.tree.map(lambda p: 1e-3 * jax.random.normal(jax.random.PRNGKey(4), p.shape,
                                                          p.dtype), params)
  runs = {}
  for name in optimizers:
    tx = _build_tx({"name": name}, cfg.batch)

    def update(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    fn = jax.jit(update, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    s = tx.init(p)
    p, s = jax.block_until_ready(fn(p, s, grads))
    runs[name] = [fn, p, s, []]
  for _ in range(rounds):
    for name, run in runs.items():
      t0 = time.perf_counter()
      run[1], run[2] = jax.block_until_ready(run[0](run[1], run[2], grads))
      run[3].append(time.perf_counter() - t0)
  num_params = layers.count_params(params)
  return dict(num_params=num_params, rounds=rounds, **{
      name: dict(median_s=statistics.median(run[3]), min_s=min(run[3]), times_s=run[3])
      for name, run in runs.items()})


# ---------------------------------------------------------------------------------------------
# Checkpoint stall: how long a save holds up training, synchronous vs asynchronous orbax.

CHECKPOINT_TARGETS = ("demo", "f0")


def checkpoint_target_config(target: str, batch: int = 2):
  """The engine config of a checkpoint-stall target, on synthetic data of the same shape.

  'demo': ``configs/fashion_mnist.py`` (nf_demo, batch 128, 28x28x1); 'f0':
  ``configs/nfnet.py:F0`` (192 px, 1000 classes, bfloat16 compute) at global batch ``batch``.
  """
  root = pathlib.Path(__file__).resolve().parents[2]
  sys.path.insert(0, str(root))
  name, arg = {"demo": ("fashion_mnist", None), "f0": ("nfnet", "F0")}[target]
  spec = importlib.util.spec_from_file_location(f"bench_cfg_{name}",
                                                root / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.dataset = "synthetic"
  c.synthetic.channels = 1 if target == "demo" else 3
  c.synthetic.num_classes = 10 if target == "demo" else 1000
  if target == "f0":
    c.batch_size = batch
    c.eval_batch_size = batch
  c.num_train_steps = 10 ** 6
  return c


def checkpoint_stall_benchmark(config, *, async_save: bool, saves: int = 3, window: int = 5,
                               warmup: int = 2, log=print) -> dict:
  """Training stall of one checkpoint save in the engine (``train.save_checkpoint``).

  Alternates ``saves`` baseline windows (``window`` train steps) with save windows (a save,
  then ``window`` steps, so a background write's interference is counted); stall = median save
  window - median baseline window. For async saves the write is then awaited untimed (in a run
  it has ``checkpoint_every_steps`` steps to finish). Amortised = stall / (step time x
  ``config.checkpoint_every_steps``).
  """
  config = config.copy_and_resolve_references()
  config.async_checkpointing = bool(async_save)
  setup = validation.validate_config(config)
  workdir = tempfile.mkdtemp(prefix="nfnets_ckpt_bench_")
  run = train.build_run(config, workdir, setup)
  try:
    state = train.initial_state(run.forward, run.tx, config, setup.image_shape)
    state_bytes = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))
    rstate = parallel.replicate(state, run.devices)
    batch = parallel.shard(next(data.train_iterator(
        config, per_device_batch=setup.micro_batch * setup.accumulation_steps,
        num_devices=len(run.devices), seed=0)), run.devices)

    def steps(rstate, n):
      for _ in range(n):
        rstate, metrics = run.train_step(rstate, batch)
      jax.block_until_ready((rstate, metrics))
      return rstate

    rstate = steps(rstate, warmup + 1)  # compile + warm up
    base, with_save, calls, finish = [], [], [], []
    for i in range(saves):
      t0 = time.perf_counter()
      rstate = steps(rstate, window)
      base.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      train.save_checkpoint(run, rstate, 1000 * (i + 1))
      calls.append(time.perf_counter() - t0)
      rstate = steps(rstate, window)
      with_save.append(time.perf_counter() - t0)
      t1 = time.perf_counter()
      run.ckpt.wait()
      finish.append(time.perf_counter() - t1)
    step_s = float(np.median(base)) / window
    stall_s = max(0.0, float(np.median(with_save)) - float(np.median(base)))
    interval = int(config.checkpoint_every_steps)
    result = dict(model=config.model, batch=int(config.batch_size), async_save=bool(async_save),
                  state_mb=state_bytes / 2**20, step_s=step_s,
                  save_call_s=float(np.median(calls)), stall_s=stall_s,
                  stall_steps=stall_s / step_s, checkpoint_every_steps=interval,
                  amortised_fraction=stall_s / (step_s * interval),
                  untimed_wait_after_window_s=float(np.median(finish)),
                  saves=saves, window=window)
    log(f"{config.model} b{config.batch_size} {'async' if async_save else 'sync '}: "
        f"step {step_s * 1e3:.1f} ms, save call {result['save_call_s'] * 1e3:.1f} ms, stall "
        f"{stall_s * 1e3:.1f} ms = {result['stall_steps']:.2f} steps, amortised over {interval}: "
        f"{100 * result['amortised_fraction']:.4f}% of a step")
    return result
  finally:
    run.ckpt.close()
    run.writer.close()
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# timm side by side (torch is imported here, lazily, and nowhere else in the library).
# ------------------------------------------------------------------------------------------
# Our model name -> timm's architecture of the same function (the registry's default).
TIMM_MODELS = {name: models.get_info(name).timm_names[0] for name in models.list_models()
               if models.get_info(name).timm_names}


def timm_available() -> Optional[str]:
  """None when torch + timm import, else the reason."""
  try:  # Optional and heavy: only the timm comparison imports them.
    import timm  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return None


class TimmRunner(_Timed):
  """timm's ``TIMM_MODELS[cfg.model]``, same batch/size/classes as ``cfg``, Runner's interface.

  train: ``model.train()``, label-smoothed (``cfg.label_smoothing``) cross-entropy on the same
  kind of labels, backward, ``timm.utils.adaptive_clip_grad`` (clip 0.01, eps 1e-3) on every
  parameter but the classifier, then ``torch.optim.SGD(momentum=0.9, nesterov=True,
  weight_decay=2e-5)``. eval: ``model.eval()`` under ``torch.inference_mode()``. float32, NCHW,
  torch threads = cores.
  """

  def __init__(self, cfg: BenchConfig):
    # Optional and heavy: only the timm comparison imports them.
    import timm  # pylint: disable=import-outside-toplevel
    import timm.utils  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    if cfg.precision != "float32":
      raise ValueError("the timm comparison runs float32 only.")
    self.cfg = cfg
    self.torch = torch
    torch.set_num_threads(cpu_cores())
    torch.manual_seed(0)
    t0 = time.perf_counter()
    self.model = timm.create_model(TIMM_MODELS[cfg.model], pretrained=False,
                                   num_classes=cfg.num_classes)
    self.lower_s, self.compile_s = 0.0, 0.0
    self.build_s = time.perf_counter() - t0
    self.compiled_memory = None
    g = torch.Generator().manual_seed(1)
    self.x = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size, generator=g)
    self.y = torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g)
    if cfg.mode == "train":
      self.model.train()
      head = self.model.get_classifier()
      head_ids = {id(head.weight)}
      self.clip_params = [p for p in self.model.parameters() if id(p) not in head_ids]
      self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                 weight_decay=2e-5)
      self.clip = timm.utils.adaptive_clip_grad
    else:
      self.model.eval()
    self.times: List[float] = []
    self.first_step_s = self._run()

  def _step(self):
    torch = self.torch
    if self.cfg.mode == "eval":
      with torch.inference_mode():
        return self.model(self.x)
    self.opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y,
                                             label_smoothing=self.cfg.label_smoothing)
    loss.backward()
    self.clip(self.clip_params, clip_factor=0.01, eps=1e-3)
    self.opt.step()
    return loss

  def _run(self) -> float:
    t0 = time.perf_counter()
    self._step()
    return time.perf_counter() - t0

  def result(self, peak_flops: Optional[float], flops_per_step: Optional[int]) -> dict:
    cfg = self.cfg
    name = f"timm {TIMM_MODELS[cfg.model]} {cfg.mode} b{cfg.batch} {cfg.image_size}px float32"
    r = dict(name=name, implementation="timm", timm_model=TIMM_MODELS[cfg.model],
             torch=self.torch.__version__, torch_threads=self.torch.get_num_threads(),
             model=cfg.model, mode=cfg.mode, batch=cfg.batch, image_size=cfg.image_size,
             precision="float32", optimizer="sgd_nesterov+timm_agc" if cfg.mode == "train"
             else None, lower_s=None, compile_s=None, build_s=self.build_s,
             first_step_s=self.first_step_s, compiled_memory=None)
    r.update(timing_fields(self.times, cfg.batch, flops_per_step, peak_flops))
    return r


def measure_with_timm(configs: Sequence[BenchConfig], steps: int = 5, warmup: int = 1,
                      peak_flops: Optional[float] = None,
                      log: Callable[[str], None] = print) -> List[dict]:
  """Our ``configs`` and timm's same model (one per distinct model/mode/batch/size), all timed
  in the same interleaved rounds. The timm results come last, in ``configs`` order."""
  _warm_up_xla()
  runners = []
  for cfg in configs:
    log(f"[compile] {cfg.name}")
    runner = Runner(build_step(cfg))
    log(f"  lower {runner.lower_s:.1f}s compile {runner.compile_s:.1f}s first step "
        f"{runner.first_step_s:.2f}s")
    runner.warmup(warmup)
    runners.append(runner)
  seen = set()
  for cfg in configs:
    key = (cfg.model, cfg.mode, cfg.batch, cfg.image_size, cfg.num_classes)
    if key in seen:
      continue
    seen.add(key)
    log(f"[timm] {TIMM_MODELS[cfg.model]} {cfg.mode}")
    runner = TimmRunner(cfg)
    log(f"  build {runner.build_s:.1f}s first step {runner.first_step_s:.2f}s")
    runner.warmup(warmup)
    runners.append(runner)
  for i in range(steps):
    for runner in runners:
      runner.timed()
    log(f"  round {i + 1}/{steps}: " + ", ".join(f"{r.times[-1]:.3f}s" for r in runners))
  results = []
  for runner in runners:
    r = runner.result(peak_flops, step_flops(runner.cfg))
    r.update(memory_report())
    results.append(r)
    if isinstance(runner, Runner):
      runner.args = None
  return results
