"""``train_and_evaluate(config, workdir)``: the training loop of every experiment.

One run, top to bottom: validate the config (before anything compiles), check a previous run
in ``workdir`` (a resume must keep its schedule; a finished run is not evaluated again unless
``config.eval_on_finished``), build the run (model, optimizer, pmapped steps, writers,
checkpointer), restore the newest readable checkpoint of ``workdir`` or initialise, loop over
train steps (logging, periodic eval, checkpoints, SIGTERM), evaluate the raw and EMA parameters,
write ``summary.json`` and print ``final: top1=...``.

Numerics live in ``steps.py``; devices in ``parallel.py``; saving and restoring in
``checkpoint.py``; console, ``metrics.jsonl`` and TensorBoard in ``reporting.py``. Non-finite
updates are never applied: with ``config.nonfinite='skip'`` they are dropped and counted, with
``'stop'`` the run ends at the next check with ``NonFiniteLossError`` naming the first bad step,
and no checkpoint is written after it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Dict, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax import data
from nfnets_jax import layers
from nfnets_jax import optim
from nfnets_jax import pretrained
from nfnets_jax.engine import evaluation
from nfnets_jax.engine import finetune
from nfnets_jax.engine import parallel
from nfnets_jax.engine import reporting
from nfnets_jax.engine import steps
from nfnets_jax.engine import validation
from nfnets_jax.errors import NonFiniteLossError
from nfnets_jax.weights import checkpoint

__all__ = ["NonFiniteLossError", "train_and_evaluate"]

SUMMARY_FILE = "summary.json"
ACCURACIES = ("top1", "top5")  # the final lines: accuracies only
CHECKPOINT_DIR = "checkpoints"
PROFILE_DIR = "profile"


@dataclasses.dataclass
class Run:
  """Everything one training run is built from (and nothing that changes while it runs)."""
  config: ml_collections.ConfigDict
  setup: validation.Setup
  workdir: str
  engine: parallel.Engine
  forward: Any
  tx: Any
  train_step: Any
  eval_step: Any
  ckpt: checkpoint.Checkpointer
  console: reporting.Console
  writer: reporting.MetricWriter

  @property
  def stop_on_nonfinite(self) -> bool:
    return self.config.get("nonfinite", "stop") == "stop"


@dataclasses.dataclass
class LoopResult:
  """What the train loop reports back for the summary."""
  step: int
  preempted: bool
  compile_seconds: Optional[float]
  train_seconds: float
  steady_images: int
  steady_seconds: float
  eval_results: Dict[str, Any]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint); returns the summary.

  The summary (also written to ``workdir/summary.json``) has ``final`` (raw params: top1, top5,
  loss) and ``final_ema`` (EMA params, when ``ema_decay`` is set), ``steps``, timings, images/s,
  ``preempted`` (True when SIGTERM ended the run early after saving) and the config. A finished
  run (its final checkpoint and summary in ``workdir``) returns its saved summary.
  """
  t_start = time.time()
  config, source = finetune.resolve_config(config)  # config.init_from: pretrained weights
  setup = validation.validate_config(config)  # before anything is compiled
  validation.check_workdir(workdir)
  finished = check_previous_run(config, setup, workdir)
  if finished is not None:
    reporting.Console(setup.total_steps, int(config.batch_size)).print(
        finished_line(workdir, finished, setup.num_classes))
    return finished
  run = build_run(config, workdir, setup)
  write_run_file(run)
  try:
    num_params = count_params(run)  # said before the initialisation compiles, not after
    run.console.print(describe_run(run, num_params))
    warning = validation.warmup_warning(config, setup)
    if warning:
      run.console.print(warning)
    rstate, start_step = start_state(run, source)
    rstate, result = train_loop(run, rstate, start_step)
    if not result.preempted:
      result.eval_results = evaluate_state(run, rstate, result.step)
    nonfinite = int(run.engine.get(rstate["nonfinite_count"]))
  finally:
    try:
      run.ckpt.close()  # waits for a pending asynchronous save; its failure raises here
    finally:
      run.writer.close()
  summary = make_summary(run, result, start_step=start_step, num_params=num_params,
                         nonfinite_steps=nonfinite, total_seconds=time.time() - t_start)
  write_summary(run, summary)
  return summary


# ---------------------------------------------------------------------------------------------
# A previous run in the workdir.


def _latest_checkpoint_step(workdir: str) -> Optional[int]:
  # From the file system, not an orbax manager: every process must reach the same orbax calls
  # in the same order, and process 0 may already be creating the checkpoint folder.
  steps = checkpoint.saved_steps(os.path.join(workdir, CHECKPOINT_DIR))
  return steps[-1] if steps else None


def check_previous_run(config, setup: validation.Setup, workdir: str) -> Optional[Dict[str, Any]]:
  """The saved summary when ``workdir`` already holds this run finished (and
  ``config.eval_on_finished`` is off), else None; a resume that would change the schedule of
  the workdir's checkpoints raises ``ConfigError`` (``validation.check_resume``)."""
  step = _latest_checkpoint_step(workdir)
  if step is None:
    return None  # nothing to resume
  if os.path.exists(os.path.join(workdir, pretrained.RUN_FILE)):
    validation.check_resume(config, pretrained.read_run_file(workdir).get("config"), workdir)
  summary_path = os.path.join(workdir, SUMMARY_FILE)
  if (step != setup.total_steps or config.get("eval_on_finished", False)
      or not os.path.exists(summary_path)):
    return None
  with open(summary_path) as f:
    summary = json.load(f)
  if summary.get("preempted") or summary.get("steps") != setup.total_steps:
    return None
  # Finished only if that final checkpoint is readable; else training resumes before it.
  readable, _ = checkpoint.read(workdir, log=lambda message: None)
  return summary if readable == setup.total_steps else None


def finished_line(workdir: str, summary: Dict[str, Any], num_classes: int) -> str:
  final = reporting.format_metrics(summary["final"], num_classes, ACCURACIES)
  return (f"{workdir} already holds this run finished ({summary['steps']} steps, final: "
          f"{final}): nothing to do. Pass --config.eval_on_finished=True to evaluate it again, "
          "or a new --workdir to train again.")


# ---------------------------------------------------------------------------------------------
# Building the run.


def build_run(config, workdir: str, setup: validation.Setup) -> Run:
  """Model, optimizer, the engine's steps, writers and checkpointer for ``config``."""
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  engine = parallel.make_engine(config)
  forward = steps.make_forward(config, setup.num_classes)
  tx = optim.build_optimizer(config.optimizer, batch_size=int(config.batch_size),
                             steps_per_epoch=setup.steps_per_epoch,
                             total_steps=setup.total_steps)
  train_step = engine.make_train_step(
      steps.make_grad_fn(forward, config, axis_name=engine.axis_name),
      steps.make_update_fn(tx, config), accumulation_steps=setup.accumulation_steps)
  eval_apply = steps.make_eval_apply(forward, flip=bool(config.get("eval_flip", False)))
  eval_step = engine.make_eval_step(evaluation.make_sum_fn(eval_apply))
  console = reporting.Console(setup.total_steps, int(config.batch_size), enabled=is_main)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                                 keep=int(config.keep_checkpoints),
                                 async_save=bool(config.get("async_checkpointing", True)),
                                 log=console.print)
  return Run(config=config, setup=setup, workdir=workdir, engine=engine, forward=forward,
             tx=tx, train_step=train_step, eval_step=eval_step, ckpt=ckpt, console=console,
             writer=reporting.MetricWriter(workdir, enabled=is_main))


def write_run_file(run: Run) -> None:
  """``workdir/run.json``: what ``pretrained.load(workdir)`` needs to rebuild and use the model
  (architecture, classes and their names, input size and channels, eval recipe, config)."""
  if jax.process_index() != 0:
    return
  c, s = run.config, run.setup
  channels = int(s.image_shape[-1])
  eval_size, eval_preproc = int(c.eval_image_size), c.get("eval_preproc", "resize_crop_32")
  crop_pct = float(c.get("eval_crop_pct", 0.875))
  if c.dataset == data.SYNTHETIC:
    # Synthetic images are made as model inputs (class template + N(0, 1) noise) at the train
    # size: evaluation and predict take them unchanged (no resize, crop or normalization).
    norm, eval_size, eval_preproc, crop_pct = None, int(c.train_image_size), "none", 1.0
  else:
    norm = data.preprocessing.config_normalization(c, channels)
  # In [0, 1] pixel units (timm's); without normalization: mean 0, std 1/255, the identity.
  mean, std = ([m / 255.0 for m in norm[0]], [v / 255.0 for v in norm[1]]) if norm else (
      [0.0] * channels, [1.0 / 255.0] * channels)
  record = {
      "model": c.model,
      "model_kwargs": dict(c.get("model_kwargs", ml_collections.ConfigDict()).to_dict()),
      "num_classes": s.num_classes,
      "class_names": list(s.class_names) if s.class_names else None,
      "dataset": c.dataset,
      "channels": channels,
      "train_image_size": int(c.train_image_size),
      "eval_image_size": eval_size,
      "eval_preproc": eval_preproc,
      "eval_crop_pct": crop_pct,
      "mean": mean,
      "std": std,
      "config": c.to_dict(),
  }
  path = os.path.join(run.workdir, pretrained.RUN_FILE)
  with open(path + ".tmp", "w") as f:
    reporting.dump_json(record, f, indent=2)
  os.replace(path + ".tmp", path)


def param_shapes(run: Run):
  """The model's parameters as shape structs (nothing is compiled or allocated)."""
  dummy = jax.ShapeDtypeStruct((1,) + tuple(run.setup.image_shape), jnp.float32)
  params, _ = jax.eval_shape(lambda rng, x: run.forward.init(rng, x, True),
                             jax.random.PRNGKey(0), dummy)
  return params


def count_params(run: Run) -> int:
  """The model's parameter count, from shapes alone."""
  return layers.count_params(param_shapes(run))


def describe_run(run: Run, num_params: int) -> str:
  c, s = run.config, run.setup
  return (f"{c.model}: {num_params:,} params | {c.dataset} {s.num_train_examples:,} "
          f"train / {s.num_eval_examples:,} eval examples | global batch {c.batch_size} = "
          f"{s.num_devices} devices x {s.micro_batch} x {s.accumulation_steps} "
          f"accumulation | {s.total_steps} steps ({s.steps_per_epoch:.1f}/epoch) | "
          f"compute {c.compute_dtype}{describe_engine(run)}")


def describe_step(run: Run) -> str:
  """``'nfnet_f0, 8 devices x 16, bfloat16'`` (with ``x 4 accumulation`` when accumulating)."""
  s = run.setup
  devices = f"{s.num_devices} device{'s' if s.num_devices > 1 else ''} x {s.micro_batch}"
  if s.accumulation_steps > 1:
    devices += f" x {s.accumulation_steps} accumulation"
  return f"{run.config.model}, {devices}, {run.config.compute_dtype}{describe_engine(run)}"


def describe_engine(run: Run) -> str:
  """``''`` for plain pmap, else e.g. ``', mesh fsdp=8, remat blocks, SAM rho=0.05 ...'``."""
  c, parts = run.config, []
  if run.engine.name != "pmap":
    parts.append(f"{run.engine.name} fsdp={run.engine.fsdp}")
  if c.get("remat", "none") != "none":
    parts.append(f"remat {c.remat}")
  sam = c.get("sam", None)
  if sam is not None and float(sam.get("rho", 0.0)):
    parts.append(f"SAM rho={sam.rho:g} fraction={sam.get('batch_fraction', 1.0):g}"
                 + (" sync" if sam.get("sync", False) else ""))
  return "".join(", " + p for p in parts)


def initial_state(forward, tx, config, image_shape, engine: Optional[parallel.Engine] = None
                  ) -> Dict[str, Any]:
  """The step-0 state: params, model state, optimizer state, EMA, step, RNG, counters. As host
  numpy, or with ``engine``, created in place on its devices (``engine.init_state``)."""
  rng = jax.random.PRNGKey(int(config.seed))
  init_rng, train_rng = jax.random.split(rng)
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  with_ema = config.get("ema_decay", None) is not None

  def make(init_rng, train_rng, dummy):  # one program: init, optimizer zeros, EMA copy
    params, model_state = forward.init(init_rng, dummy, True)
    return steps.make_train_state(params, model_state, tx, train_rng, with_ema=with_ema)

  if engine is not None:  # host values: the same on every process
    return engine.init_state(make, *map(np.asarray, (init_rng, train_rng, dummy)))
  return jax.tree.map(np.asarray, jax.device_get(jax.jit(make)(init_rng, train_rng, dummy)))


def start_state(run: Run, source=None) -> Tuple[Any, int]:
  """The state on the engine's devices and its step: a fresh start is created there directly
  (F7: 6 GB that never pass the host, and a first step that reuses them); a resume or a
  fine-tuning start goes through the host (``restore_or_init``)."""
  fresh = run.ckpt.latest_step() is None and not (
      source is not None and run.config.get("init_params", True))
  if not fresh:
    state = restore_or_init(run, source)
    return run.engine.put_state(state), int(state["step"])
  if run.config.optimizer.get("freeze", ""):
    print_frozen(run, param_shapes(run))
  return initial_state(run.forward, run.tx, run.config, run.setup.image_shape, run.engine), 0


def print_frozen(run: Run, params) -> None:
  """Says how many tensors ``config.optimizer.freeze`` freezes (one that matches none fails)."""
  frozen = finetune.frozen_summary(params, run.config.optimizer.get("freeze", ""))
  if frozen:
    run.console.print(frozen)


def restore_or_init(run: Run, source=None) -> Dict[str, Any]:
  """The newest readable checkpoint of the workdir, or else the initial state (with the
  pretrained ``source``'s weights copied in when fine-tuning)."""
  state = initial_state(run.forward, run.tx, run.config, run.setup.image_shape)
  print_frozen(run, state["params"])
  restored = run.ckpt.restore_latest(state)
  if restored is None:
    if source is not None and run.config.get("init_params", True):
      state = finetune.init_state(state, source, run.config, run.tx, log=run.console.print)
    return state
  step, state = restored
  run.console.print(f"Resumed from checkpoint {step} in {run.ckpt.directory}.")
  return state


# ---------------------------------------------------------------------------------------------
# The loop.


class _SignalFlag:
  """Sets a flag on SIGTERM (main thread only); the loop saves and exits at a step boundary."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _Profiler:
  """``config.profile_steps = (start, stop)``: a ``jax.profiler`` trace of train steps
  ``start..stop-1`` in ``workdir/profile`` (TensorBoard's profile plugin, or Perfetto)."""

  def __init__(self, run: Run, steps_range):
    self.run, self.range, self.active = run, steps_range, False
    self.directory = os.path.join(run.workdir, PROFILE_DIR)

  def before(self, step: int):
    if self.range and step == self.range[0] and not self.active:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, rstate):
    if self.active and step >= self.range[1]:
      jax.block_until_ready(rstate)
      self.stop()

  def stop(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self.run.console.print(f"Wrote a profile of train steps {self.range[0]}.."
                             f"{self.range[1] - 1} to {self.directory} (tensorboard --logdir "
                             f"{self.directory}, or open the .trace.json.gz in Perfetto).")


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class _Meter:
  """Train metrics summed over a log interval, and the steady-state images/s between logs."""

  def __init__(self, batch_size: int, engine: parallel.Engine):
    self.batch_size, self.engine = batch_size, engine
    self.sums, self.count = None, 0
    self.steady_images, self.steady_seconds = 0, 0.0
    self.last_time, self.last_step = time.time(), 0

  def add(self, metrics):
    self.sums = metrics if self.sums is None else jax.tree.map(jnp.add, self.sums, metrics)
    self.count += 1

  def restart_clock(self, step: int):
    self.last_time, self.last_step = time.time(), step

  def pause(self, seconds: float):
    """Excludes ``seconds`` (eval, checkpointing) from the measured rate."""
    self.last_time += seconds

  def flush(self, step: int) -> Dict[str, float]:
    host = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in self.engine.get(self.sums).items()}
    host = {k: v / self.count for k, v in host.items()}
    host["nonfinite"] *= self.count  # a count over the interval, not a mean
    self.sums, self.count = None, 0
    now = time.time()
    if step > self.last_step:
      images = (step - self.last_step) * self.batch_size
      rate = images / max(now - self.last_time, 1e-9)
      self.steady_images += images
      self.steady_seconds += now - self.last_time
    else:
      rate = float("nan")
    self.restart_clock(step)
    host["images_per_sec"] = rate
    return host


def train_loop(run: Run, rstate, start_step: int):
  """Runs steps ``start_step..total_steps`` (or until SIGTERM); returns (state, LoopResult)."""
  config, setup = run.config, run.setup
  train_iter = data.train_iterator(
      config, per_device_batch=setup.micro_batch * setup.accumulation_steps,
      num_devices=len(run.engine.devices), seed=int(config.seed), start_step=start_step)
  batches = run.engine.batches(train_iter, size=2)
  eval_every = int(config.get("eval_every_steps", 0) or 0)
  log_every = int(config.log_every_steps)
  ckpt_every = int(config.checkpoint_every_steps)
  meter = _Meter(int(config.batch_size), run.engine)
  profiler = _Profiler(run, config.get("profile_steps", None))
  step, preempted, compile_time, eval_results = start_step, False, None, {}
  if step < setup.total_steps:
    run.console.print(f"Compiling the train step ({describe_step(run)})...")
  t_loop = time.time()
  train_step = run.train_step
  # Compiled ahead of its first run, so the console tells the two apart. Not across processes:
  # pmap's compiled form takes the global shapes there, and its calls pass the local ones.
  ahead = jax.process_count() == 1
  try:
    with _SignalFlag() as sigterm:
      while step < setup.total_steps:
        batch = next(batches)
        if compile_time is None and ahead:
          train_step = run.train_step.lower(rstate, batch).compile()
          compile_time = time.time() - t_loop
          run.console.print(f"Compiled the train step in {compile_time:.1f}s.")
        profiler.before(step)
        with jax.profiler.StepTraceAnnotation("train_step", step_num=step):
          rstate, metrics = train_step(rstate, batch)
        del batch
        step += 1
        profiler.after(step, rstate)
        meter.add(metrics)
        if step == start_step + 1:  # the steady rate starts after the first step
          jax.block_until_ready(metrics)
          if compile_time is None:
            compile_time = time.time() - t_loop
            run.console.print(f"Compiled the train step in {compile_time:.1f}s (with its first "
                              "step).")
          meter.restart_clock(step)
        is_last = step == setup.total_steps
        if step % log_every == 0 or is_last:
          host = meter.flush(step)
          run.writer.write(step, host, split="train")
          run.console.log_train(step, host, host["images_per_sec"])
          check_nonfinite(run, rstate)
        if eval_every and step % eval_every == 0 and not is_last:
          check_nonfinite(run, rstate)
          t0 = time.time()
          eval_results = evaluate_state(run, rstate, step)
          meter.pause(time.time() - t0)
        if step % ckpt_every == 0 or is_last:
          check_nonfinite(run, rstate)
          t0 = time.time()
          save_checkpoint(run, rstate, step)
          meter.pause(time.time() - t0)
        if jax.process_count() == 1:
          stop_now = sigterm.received
        else:  # every process must reach the same decision at the same step
          stop_now = step % log_every == 0 and _any_process(sigterm.received)
        if stop_now and not is_last:
          check_nonfinite(run, rstate)
          save_checkpoint(run, rstate, step)
          run.ckpt.wait()
          run.console.print(f"SIGTERM received: saved checkpoint {step} in "
                            f"{run.ckpt.directory}; exiting cleanly. Run the same command "
                            "again to resume.")
          preempted = True
          break
    jax.block_until_ready(rstate)
  finally:
    profiler.stop()
    batches.close()  # stop the input pipeline's threads before anything else
    del train_iter
  check_nonfinite(run, rstate)
  return rstate, LoopResult(step=step, preempted=preempted, compile_seconds=compile_time,
                            train_seconds=time.time() - t_loop,
                            steady_images=meter.steady_images,
                            steady_seconds=meter.steady_seconds, eval_results=eval_results)


def check_nonfinite(run: Run, rstate) -> None:
  """Raises ``NonFiniteLossError`` when a step was non-finite and the config says stop."""
  if not run.stop_on_nonfinite:
    return
  first = int(run.engine.get(rstate["first_nonfinite_step"]))
  if first >= 0:
    raise NonFiniteLossError(
        f"Non-finite loss or gradient at step {first} (0-based update index); the run stopped "
        f"without applying it. The last checkpoint in {run.ckpt.directory} is step "
        f"{run.ckpt.latest_step()} and is finite. Lower the learning rate or set "
        "--config.nonfinite=skip to drop such updates.", step=first)


def save_checkpoint(run: Run, rstate, step: int) -> None:
  """Saves the device state as checkpoint ``step`` (asynchronously when enabled)."""
  host = run.engine.get_state(rstate)
  if int(host["nonfinite_count"]) and run.stop_on_nonfinite:
    return  # never checkpoint a run that is about to stop for a NaN
  run.ckpt.save(step, host)


# ---------------------------------------------------------------------------------------------
# Evaluation and summary.


def evaluate_state(run: Run, rstate, step: int) -> Dict[str, Any]:
  """Exact-once eval of the raw (and EMA) parameters; logged and returned with ``ema_`` keys."""
  t0 = time.time()
  results = {}
  variants = [("", "params")]
  if "ema_params" in rstate:
    variants.append(("ema_", "ema_params"))
  for prefix, key in variants:
    batches = data.eval_iterator(run.config, per_device_batch=run.setup.eval_per_device_batch,
                                 num_devices=len(run.engine.devices))
    metrics = evaluation.evaluate(run.eval_step, rstate[key], rstate["model_state"], batches,
                                  engine=run.engine)
    results.update({prefix + k: v for k, v in metrics.items()})
  results["eval_seconds"] = time.time() - t0
  run.writer.write(step, {k: v for k, v in results.items() if not k.endswith("count")},
                   split="eval")
  n = run.setup.num_classes
  line = f"eval @ step {step}: {reporting.format_metrics(results, n)}"
  if "ema_top1" in results:
    ema = {k[len("ema_"):]: v for k, v in results.items() if k.startswith("ema_")}
    line += f" | ema {reporting.format_metrics(ema, n, ACCURACIES)}"
  run.console.print(line + f" ({results['count']} examples, {results['eval_seconds']:.1f}s)")
  return results


def make_summary(run: Run, result: LoopResult, *, start_step: int, num_params: int,
                 nonfinite_steps: int, total_seconds: float) -> Dict[str, Any]:
  setup = run.setup
  summary = {
      "steps": result.step,
      "start_step": start_step,
      "total_steps": setup.total_steps,
      "preempted": result.preempted,
      "num_params": num_params,
      "num_devices": setup.num_devices,
      "accumulation_steps": setup.accumulation_steps,
      "nonfinite_steps": nonfinite_steps,
      "compile_seconds": result.compile_seconds,
      "train_seconds": result.train_seconds,
      "total_seconds": total_seconds,
      "images_per_sec": (result.steady_images / result.steady_seconds
                         if result.steady_seconds else None),
      "config": run.config.to_dict(),
  }
  if not result.preempted:
    r = result.eval_results
    summary["final"] = {k: r[k] for k in ("top1", "top5", "loss", "count")}
    if "ema_top1" in r:
      summary["final_ema"] = {k: r["ema_" + k] for k in ("top1", "top5", "loss")}
  return summary


def write_summary(run: Run, summary: Dict[str, Any]) -> None:
  """Writes ``summary.json`` (process 0) and prints the ``final:`` lines of a finished run."""
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, SUMMARY_FILE), "w") as f:
      reporting.dump_json(summary, f, indent=2)
  if summary["preempted"]:
    return
  n = run.setup.num_classes
  if "final_ema" in summary:
    ema = reporting.format_metrics(summary["final_ema"], n, ACCURACIES)
    run.console.print(f"final_ema: {ema}")
  run.console.print(f"final: {reporting.format_metrics(summary['final'], n, ACCURACIES)}")
