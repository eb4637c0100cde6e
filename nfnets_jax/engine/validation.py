"""Checks an experiment config before anything is compiled, with errors that say the fix.

``validate_config`` resolves what the engine needs (device count, micro-batch, accumulation
steps, dataset and model metadata) and raises ``ConfigError`` for an unknown model, optimizer,
schedule or dtype, a batch size that does not divide over the devices, or a missing dataset
(with the command that prepares it). ``check_resume`` refuses to resume checkpoints under a
different schedule; ``warmup_warning`` names runs too short to leave warm-up.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional

import jax

from nfnets_jax import data
from nfnets_jax import models
from nfnets_jax.errors import ConfigError
from nfnets_jax import optim
from nfnets_jax.engine import parallel
from nfnets_jax.engine import steps

COMPUTE_DTYPES = ("bfloat16", "float32", "float16")
NONFINITE_MODES = ("stop", "skip")
# The fields that set the step count and the learning rate of every step: resuming a checkpoint
# with other values would continue it on another schedule than the one it was trained on.
SCHEDULE_FIELDS = ("num_train_steps", "num_epochs", "batch_size", "optimizer.schedule",
                   "optimizer.warmup_epochs", "optimizer.base_lr", "optimizer.lr_scale_batch",
                   "optimizer.end_lr")


@dataclasses.dataclass(frozen=True)
class Setup:
  """What ``validate_config`` resolved from a config and the devices of this run."""
  num_local_devices: int
  num_devices: int  # global, over all processes
  micro_batch: int  # per device per forward pass
  accumulation_steps: int
  eval_per_device_batch: int
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  image_shape: tuple
  steps_per_epoch: float
  total_steps: int
  model_info: Any
  class_names: Optional[tuple] = None


def _device_counts(config):
  local = jax.local_device_count()
  requested = config.get("num_devices", None)
  if requested:
    if jax.process_count() > 1:
      raise ConfigError("config.num_devices only applies to single-process runs; leave it None "
                        "to use every device of every process.")
    if not 0 < int(requested) <= local:
      raise ConfigError(f"config.num_devices={requested} but this process has {local} devices; "
                        f"use 1..{local} or None (all).")
    return int(requested), int(requested)
  return local, local * jax.process_count()


def check_engine(config, num_devices: int) -> None:
  """``config.parallel``, ``fsdp``, ``remat`` and ``profile_steps``, with the fix in the error."""
  mode = config.get("parallel", "pmap")
  if mode not in parallel.PARALLEL_MODES:
    raise ConfigError(f"config.parallel={mode!r}; use 'pmap' (every device holds the whole "
                      "state) or 'mesh' (jax.jit over a device mesh, with config.fsdp).")
  fsdp = int(config.get("fsdp", 1))
  if fsdp != 1 and mode != "mesh":
    raise ConfigError(f"config.fsdp={fsdp} shards the state only with --config.parallel=mesh.")
  if fsdp < 1 or num_devices % fsdp:
    divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    raise ConfigError(f"config.fsdp={fsdp} must divide the {num_devices} devices of this run; "
                      f"use one of {divisors} (1 = replicated).")
  remat = config.get("remat", "none")
  if remat not in steps.REMAT_MODES:
    raise ConfigError(f"config.remat={remat!r}; use one of {steps.REMAT_MODES}.")
  profile = config.get("profile_steps", None)
  if profile is not None:
    if (len(profile) != 2 or not all(isinstance(v, int) for v in profile)
        or not 0 <= profile[0] < profile[1]):
      raise ConfigError(f"config.profile_steps={profile!r}; give (start, stop) train steps with "
                        "0 <= start < stop, e.g. --config.profile_steps='(10, 13)'.")


def dataset_info(config):
  """The data module's ``get_dataset_info`` (or the synthetic one); missing data -> ConfigError."""
  try:
    return data.get_dataset_info(config)
  except data.DatasetNotFoundError as e:
    raise ConfigError(f"Dataset {config.dataset!r} is missing (config.data_dir="
                      f"{config.get('data_dir', None)!r}). {e}") from e
  except data.UnknownDatasetError as e:
    raise ConfigError(str(e)) from None


def check_workdir(workdir: str) -> None:
  """A workdir must be a directory (or not exist yet); the error says which path to use."""
  if not workdir:
    raise ConfigError("--workdir is empty: give the directory for checkpoints and metrics.")
  path = os.path.abspath(workdir)
  probe = path
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe) if os.path.dirname(probe) != probe else ""
  if probe and not os.path.isdir(probe):
    raise ConfigError(f"--workdir={workdir}: {probe} is an existing file, not a directory; "
                      "pass a directory path (it is created when missing).")
  if probe and not os.access(probe, os.W_OK):
    raise ConfigError(f"--workdir={workdir}: {probe} is not writable; pass a directory you can "
                      "write to.")


def validate_config(config, check_data: bool = True) -> Setup:
  """Validates ``config`` for this process's devices; returns the resolved ``Setup``."""
  # Model.
  try:
    model_info = models.get_info(config.model)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  # Optimizer (name, schedule, fields) via the optimizer's own resolver.
  try:
    optim.peak_learning_rate(config.optimizer, max(int(config.batch_size), 1))
  except ValueError as e:
    raise ConfigError(f"config.optimizer: {e}") from None
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r}; use one of "
                      f"{COMPUTE_DTYPES} (params, gradients and optimizer state stay float32).")
  nonfinite = config.get("nonfinite", "stop")
  if nonfinite not in NONFINITE_MODES:
    raise ConfigError(f"config.nonfinite={nonfinite!r}; use 'stop' (end the run naming the step) "
                      "or 'skip' (drop that update).")
  if config.get("ema_decay", None) is not None and not 0.0 <= float(config.ema_decay) < 1.0:
    raise ConfigError(f"config.ema_decay={config.ema_decay} must be in [0, 1) (None disables).")
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if int(config.get(field, 1)) < 1:
      raise ConfigError(f"config.{field} must be >= 1, got {config.get(field)}.")
  if int(config.get("eval_every_steps", 0)) < 0:
    raise ConfigError(f"config.eval_every_steps must be >= 0 (0 = only at the end), got "
                      f"{config.eval_every_steps}.")
  if not 0.0 <= float(config.label_smoothing) < 1.0:
    raise ConfigError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}.")

  # Batch layout.
  num_local, num_global = _device_counts(config)
  try:
    micro, accum = parallel.check_batch_layout(
        int(config.batch_size), config.get("per_device_batch_size", None), num_global)
  except ValueError as e:
    raise ConfigError(f"config.batch_size / config.per_device_batch_size: {e}") from None
  check_engine(config, num_global)
  eval_batch = int(config.eval_batch_size)
  if eval_batch <= 0 or eval_batch % num_global:
    example = num_global * max(1, eval_batch // num_global)
    raise ConfigError(f"config.eval_batch_size={eval_batch} must be a positive multiple of the "
                      f"{num_global} devices (e.g. {example}).")

  # Data.
  if check_data:
    info = dataset_info(config)
    num_classes, n_train, n_eval = info.num_classes, info.num_train_examples, info.num_eval_examples
    image_shape = tuple(info.image_shape)
    class_names = getattr(info, "class_names", None)
  else:
    class_names = None
    num_classes, n_train, n_eval, image_shape = 0, 0, 0, ()
  steps_per_epoch = n_train / int(config.batch_size) if n_train else 0.0
  if config.get("num_train_steps", None):
    total_steps = int(config.num_train_steps)
  elif check_data:
    if not steps_per_epoch:
      raise ConfigError(f"The train split {config.train_split!r} is empty.")
    total_steps = int(math.ceil(float(config.num_epochs) * steps_per_epoch))
  else:
    total_steps = 0
  if check_data and total_steps <= 0:
    raise ConfigError(f"No training steps: num_epochs={config.num_epochs}, num_train_steps="
                      f"{config.get('num_train_steps', None)}.")
  return Setup(num_local_devices=num_local, num_devices=num_global, micro_batch=micro,
               accumulation_steps=accum, eval_per_device_batch=eval_batch // num_global,
               num_classes=num_classes, num_train_examples=n_train, num_eval_examples=n_eval,
               image_shape=image_shape, steps_per_epoch=steps_per_epoch or 1.0,
               total_steps=total_steps, model_info=model_info,
               class_names=tuple(class_names) if class_names else None)


def _schedule_values(config) -> dict:
  """``SCHEDULE_FIELDS`` of a config (a ConfigDict or a saved dict), optimizer defaults filled."""
  optimizer = optim.resolve_config(config.get("optimizer", None))
  prefix = "optimizer."
  return {f: optimizer.get(f[len(prefix):]) if f.startswith(prefix) else config.get(f, None)
          for f in SCHEDULE_FIELDS}


def _same(old, new) -> bool:
  """Equal values; numbers by value (run.json may hold 6 where the config has 6.0)."""
  if isinstance(old, (int, float)) and isinstance(new, (int, float)):
    return float(old) == float(new)
  return old == new


def check_resume(config, saved_config: Optional[dict], workdir: str) -> None:
  """Raises ``ConfigError`` when ``config`` would resume the checkpoints of ``workdir`` (trained
  with ``saved_config``, from its run.json) on another schedule, naming the first such field."""
  if not saved_config:
    return
  try:
    old = _schedule_values(saved_config)
  except ValueError:
    return  # an optimizer this version does not know: nothing to compare with
  new = _schedule_values(config)
  for field in SCHEDULE_FIELDS:
    if field == "num_epochs" and new["num_train_steps"]:
      continue  # num_train_steps sets the step count: num_epochs is not used
    if not _same(old[field], new[field]):
      raise ConfigError(
          f"--workdir={workdir} holds checkpoints trained with config.{field}={old[field]!r}, "
          f"but this config has {new[field]!r}: resuming would continue them on another "
          f"schedule. Use a new --workdir, or set --config.{field}={old[field]!r} to resume.")


def warmup_warning(config, setup: Setup) -> Optional[str]:
  """A warning line when every step of the run is a warm-up step (the peak rate is never
  reached), else None."""
  opt = optim.resolve_config(config.optimizer)
  warmup = int(round(float(opt.warmup_epochs) * setup.steps_per_epoch))
  if warmup < setup.total_steps:
    return None
  peak = optim.peak_learning_rate(opt, int(config.batch_size))
  schedule = optim.learning_rate_schedule(opt, batch_size=int(config.batch_size),
                                          steps_per_epoch=setup.steps_per_epoch,
                                          total_steps=setup.total_steps)
  last = float(schedule(setup.total_steps - 1))
  return (f"Warning: all {setup.total_steps} steps are warm-up (optimizer.warmup_epochs="
          f"{opt.warmup_epochs} = {warmup} steps): the learning rate ends at {last:.3g}, never "
          f"reaching its peak {peak:.3g}. Lower --config.optimizer.warmup_epochs or train "
          "longer.")
