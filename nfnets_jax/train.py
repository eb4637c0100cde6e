"""``train_and_evaluate(config, workdir)``: the training loop of every experiment.

One run: validate the config (before anything compiles), build the model, optimizer and data
iterators, restore the latest checkpoint of ``workdir`` if there is one, then loop over
pmapped steps (``parallel``), logging (``logging_utils``), evaluating raw and EMA parameters
(``evaluation``) and saving checkpoints (``checkpointing``), and finally write
``summary.json`` and print ``final: top1=... top5=...``.

Numerics: parameters, gradients, optimizer state and the EMA are float32; the forward and
backward passes run in ``config.compute_dtype`` (params and images cast inside the loss, logits
cast back to float32); evaluation is float32. Non-finite updates are never applied: with
``config.nonfinite='skip'`` they are dropped and counted, with ``'stop'`` the run ends at the
next check with ``NonFiniteLossError`` naming the first bad step, and no checkpoint is written
after it.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from typing import Any, Dict, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nfnets_jax import agc
from nfnets_jax import checkpointing
from nfnets_jax import config_validation
from nfnets_jax import evaluation
from nfnets_jax import logging_utils
from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax import parallel


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN/Inf and ``config.nonfinite == 'stop'``."""


_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}


# ---------------------------------------------------------------------------------------------
# Model, loss and update.


def make_forward(config, num_classes: int) -> hk.TransformedWithState:
  """``forward(images, is_training) -> {'logits', 'pool'}`` as a stateful Haiku transform."""
  kwargs = dict(config.get("model_kwargs", ml_collections.ConfigDict()).items())

  def forward(images, is_training):
    model = models.create(config.model, num_classes, **kwargs)
    return model(images, is_training)

  return hk.transform_with_state(forward)


def _cast_floats(tree, dtype):
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def smoothed_cross_entropy(logits, labels, label_smoothing: float):
  """Mean softmax cross-entropy against soft ``labels`` smoothed toward uniform."""
  num_classes = labels.shape[-1]
  labels = labels * (1.0 - label_smoothing) + label_smoothing / num_classes
  return jnp.mean(optax.softmax_cross_entropy(logits, labels))


def make_grad_fn(forward, config):
  """``(params, model_state, batch, rng) -> (grads, (model_state, metrics))`` on one micro-batch."""
  dtype = _DTYPES[config.compute_dtype]
  label_smoothing = float(config.label_smoothing)

  def loss_fn(params, model_state, batch, rng):
    images = batch["images"].astype(dtype)
    out, new_state = forward.apply(_cast_floats(params, dtype), model_state, rng, images, True)
    logits = out["logits"].astype(jnp.float32)
    labels = batch["labels"].astype(jnp.float32)
    loss = smoothed_cross_entropy(logits, labels, label_smoothing)
    top1 = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))
    # Keep the model state's dtypes (BatchNorm statistics stay float32).
    new_state = jax.tree.map(lambda n, o: n.astype(o.dtype), new_state, model_state)
    return loss, (new_state, {"loss": loss, "top1": top1})

  def grad_fn(params, model_state, batch, rng):
    grads, aux = jax.grad(loss_fn, has_aux=True)(params, model_state, batch, rng)
    return grads, aux

  return grad_fn


def _uses_agc(opt_config) -> bool:
  name = opt_config.get("name", "sgd_agc")
  clipping = opt_config.get("clipping", 0.0) or 0.0
  return name == "sgd_agc" or (name == "adamw" and float(clipping) > 0)


def make_update_fn(tx, config):
  """``(state, grads, model_state, metrics) -> (state, metrics)``: one optimizer step.

  Gradients arrive averaged over the global batch. A non-finite loss or gradient leaves params,
  optimizer state, EMA and model state untouched and records the step.
  """
  ema_decay = config.get("ema_decay", None)
  opt = config.optimizer
  with_clip_stats = _uses_agc(opt)
  nan_step = config.get("debug_nan_at_step", None)
  nan_step = -1 if nan_step is None else int(nan_step)

  def update_fn(state, grads, model_state, metrics):
    step = state["step"]
    params = state["params"]
    if nan_step >= 0:  # Test hook: poison this step's loss and gradients.
      poison = jnp.where(step == nan_step, jnp.nan, 1.0)
      grads = jax.tree.map(lambda g: g * poison, grads)
      metrics = dict(metrics, loss=metrics["loss"] * poison)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = grad_norm
    metrics["learning_rate"] = optim.get_learning_rate(new_opt_state)
    if with_clip_stats:
      stats = agc.clip_stats(
          grads, params, float(opt.clipping), float(opt.get("agc_eps", 1e-3)),
          mask=functools.partial(agc.exclusion_mask, spec=opt.get("agc_exclude", "reference")),
          per_group=False)
      metrics.update(stats)
    new_state = dict(state)
    new_state["params"] = new_params
    new_state["opt_state"] = new_opt_state
    new_state["model_state"] = model_state
    if ema_decay is not None:
      new_state["ema_params"] = optim.ema_update(state["ema_params"], new_params, step,
                                                 float(ema_decay))
    # Never apply a non-finite update.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    for key in ("params", "opt_state", "model_state", "ema_params"):
      if key in state:
        new_state[key] = keep(new_state[key], state[key])
    new_state["nonfinite_count"] = state["nonfinite_count"] + (~finite).astype(jnp.int32)
    new_state["first_nonfinite_step"] = jnp.where(
        (~finite) & (state["first_nonfinite_step"] < 0), step, state["first_nonfinite_step"])
    new_state["step"] = step + 1
    metrics["nonfinite"] = (~finite).astype(jnp.float32)
    return new_state, metrics

  return update_fn


def make_eval_apply(forward):
  """float32 inference logits: ``(params, model_state, images) -> logits``."""

  def apply(params, model_state, images):
    params = _cast_floats(params, jnp.float32)
    out, _ = forward.apply(params, model_state, None, images.astype(jnp.float32), False)
    return out["logits"]

  return apply


# ---------------------------------------------------------------------------------------------
# Data.


def _data_module(config):
  if config.dataset == config_validation.SYNTHETIC:
    from nfnets_jax import synthetic_data  # pylint: disable=g-import-not-at-top
    return synthetic_data
  from nfnets_jax import data  # pylint: disable=g-import-not-at-top
  return data


# ---------------------------------------------------------------------------------------------
# Preemption.


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


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


# ---------------------------------------------------------------------------------------------
# The loop.


def _initial_state(forward, tx, config, setup) -> Dict[str, Any]:
  rng = jax.random.PRNGKey(int(config.seed))
  init_rng, train_rng = jax.random.split(rng)
  dummy = jnp.zeros((1,) + tuple(setup.image_shape), jnp.float32)
  params, model_state = jax.jit(forward.init, static_argnums=(2,))(init_rng, dummy, True)
  state = {
      "params": params,
      "model_state": model_state,
      "opt_state": tx.init(params),
      "step": jnp.zeros([], jnp.int32),
      "rng": train_rng,
      "nonfinite_count": jnp.zeros([], jnp.int32),
      "first_nonfinite_step": jnp.full([], -1, jnp.int32),
  }
  if config.get("ema_decay", None) is not None:
    state["ema_params"] = jax.tree.map(jnp.copy, params)
  return jax.tree.map(np.asarray, jax.device_get(state))


def _to_host_floats(metrics) -> Dict[str, float]:
  return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint); returns the summary.

  The summary (also written to ``workdir/summary.json``) has ``final`` (raw params: top1, top5,
  loss) and ``final_ema`` (EMA params, when ``ema_decay`` is set), ``steps``, timings, images/s,
  ``preempted`` (True when SIGTERM ended the run early after saving) and the config.
  """
  t_start = time.time()
  setup = config_validation.validate_config(config)  # before anything is compiled
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  devices = parallel.local_devices(config.get("num_devices", None))
  # pmap over a device list only for a single-process subset; None = every device of every
  # process (a list of local devices would make the collectives process-local).
  pmap_devices = devices if config.get("num_devices", None) else None
  console = logging_utils.Console(setup.total_steps, int(config.batch_size), enabled=is_main)
  writer = logging_utils.MetricWriter(workdir, enabled=is_main)
  data_lib = _data_module(config)

  forward = make_forward(config, setup.num_classes)
  tx = optim.build_optimizer(config.optimizer, batch_size=int(config.batch_size),
                             steps_per_epoch=setup.steps_per_epoch,
                             total_steps=setup.total_steps)
  state = _initial_state(forward, tx, config, setup)
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(state["params"])))

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    keep=int(config.keep_checkpoints))
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(state, latest)
    console.print(f"Resumed from checkpoint {latest} in {ckpt.directory}.")
  start_step = int(state["step"])
  console.print(
      f"{config.model}: {num_params:,} params | {config.dataset} {setup.num_train_examples:,} "
      f"train / {setup.num_eval_examples:,} eval examples | global batch {config.batch_size} = "
      f"{setup.num_devices} devices x {setup.micro_batch} x {setup.accumulation_steps} "
      f"accumulation | {setup.total_steps} steps ({setup.steps_per_epoch:.1f}/epoch) | "
      f"compute {config.compute_dtype}")

  train_step = parallel.make_train_step(
      make_grad_fn(forward, config), make_update_fn(tx, config),
      accumulation_steps=setup.accumulation_steps, devices=pmap_devices)
  eval_step = parallel.make_eval_step(
      evaluation.make_sum_fn(make_eval_apply(forward)), devices=pmap_devices)

  def run_eval(rstate, step):
    t0 = time.time()
    results = {}
    variants = [("", "params")]
    if "ema_params" in rstate:
      variants.append(("ema_", "ema_params"))
    for prefix, key in variants:
      batches = data_lib.eval_iterator(config, per_device_batch=setup.eval_per_device_batch,
                                       num_devices=len(devices))
      metrics = evaluation.evaluate(eval_step, rstate[key], rstate["model_state"], batches,
                                    devices=devices)
      results.update({prefix + k: v for k, v in metrics.items()})
    results["eval_seconds"] = time.time() - t0
    writer.write(step, {k: v for k, v in results.items() if not k.endswith("count")},
                 split="eval")
    line = f"eval @ step {step}: top1={results['top1']:.4f} top5={results['top5']:.4f} " \
           f"loss={results['loss']:.4f}"
    if "ema_top1" in results:
      line += f" | ema top1={results['ema_top1']:.4f} top5={results['ema_top5']:.4f}"
    console.print(line + f" ({results['count']} examples, {results['eval_seconds']:.1f}s)")
    return results

  def save(rstate, step):
    host = parallel.unreplicate(rstate)
    if int(host["nonfinite_count"]) and config.get("nonfinite", "stop") == "stop":
      return  # never checkpoint a run that is about to stop for a NaN
    ckpt.save(step, host)

  def check_nonfinite(rstate):
    if config.get("nonfinite", "stop") != "stop":
      return
    first = int(parallel.unreplicate(rstate["first_nonfinite_step"]))
    if first >= 0:
      raise NonFiniteLossError(
          f"Non-finite loss or gradient at step {first} (0-based update index); the run stopped "
          f"without applying it. The last checkpoint in {ckpt.directory} is step "
          f"{ckpt.latest_step()} and is finite. Lower the learning rate or set "
          "--config.nonfinite=skip to drop such updates.")

  rstate = parallel.replicate(state, devices)
  train_iter = data_lib.train_iterator(
      config, per_device_batch=setup.micro_batch * setup.accumulation_steps,
      num_devices=len(devices), seed=int(config.seed), start_step=start_step)
  batches = parallel.prefetch(train_iter, size=2, devices=devices)

  eval_every = int(config.get("eval_every_steps", 0) or 0)
  log_every = int(config.log_every_steps)
  ckpt_every = int(config.checkpoint_every_steps)
  step = start_step
  preempted = False
  train_time = 0.0
  steady_images = 0
  steady_time = 0.0
  compile_time = None
  eval_results = {}
  metric_sum, metric_count = None, 0
  t_loop = time.time()
  last_log_time = t_loop
  with _SignalFlag() as sigterm:
    while step < setup.total_steps:
      batch = next(batches)
      rstate, metrics = train_step(rstate, batch)
      step += 1
      metric_sum = metrics if metric_sum is None else jax.tree.map(jnp.add, metric_sum, metrics)
      metric_count += 1
      if compile_time is None:
        jax.block_until_ready(metrics)
        compile_time = time.time() - t_loop
        last_log_time = time.time()
        last_log_step = step
      is_last = step == setup.total_steps
      if step % log_every == 0 or is_last:
        host = _to_host_floats(parallel.unreplicate(metric_sum))
        host = {k: v / metric_count for k, v in host.items()}
        host["nonfinite"] *= metric_count  # a count over the interval, not a mean
        metric_sum, metric_count = None, 0
        now = time.time()
        if step > last_log_step:
          rate = (step - last_log_step) * int(config.batch_size) / max(now - last_log_time, 1e-9)
          steady_images += (step - last_log_step) * int(config.batch_size)
          steady_time += now - last_log_time
        else:
          rate = float("nan")
        last_log_time, last_log_step = now, step
        host["images_per_sec"] = rate
        writer.write(step, host, split="train")
        console.log_train(step, host, rate)
        check_nonfinite(rstate)
      if eval_every and step % eval_every == 0 and not is_last:
        check_nonfinite(rstate)
        t0 = time.time()
        eval_results = run_eval(rstate, step)
        last_log_time += time.time() - t0
      if step % ckpt_every == 0 or is_last:
        check_nonfinite(rstate)
        t0 = time.time()
        save(rstate, step)
        last_log_time += time.time() - t0
      if jax.process_count() == 1:
        stop_now = sigterm.received
      else:  # every process must reach the same decision at the same step
        stop_now = step % log_every == 0 and _any_process(sigterm.received)
      if stop_now:
        check_nonfinite(rstate)
        if not is_last:
          save(rstate, step)
          console.print(f"SIGTERM received: saved checkpoint {step} in {ckpt.directory}; "
                        "exiting cleanly. Run the same command again to resume.")
          preempted = True
          break
  jax.block_until_ready(rstate)
  train_time = time.time() - t_loop
  batches.close()  # stop the input pipeline (a live TF iterator can hang interpreter exit)
  del train_iter
  check_nonfinite(rstate)

  if not preempted:
    eval_results = run_eval(rstate, step)
  host_state = parallel.unreplicate({"nonfinite_count": rstate["nonfinite_count"]})
  ckpt.close()

  summary = {
      "steps": step,
      "start_step": start_step,
      "total_steps": setup.total_steps,
      "preempted": preempted,
      "num_params": num_params,
      "num_devices": setup.num_devices,
      "accumulation_steps": setup.accumulation_steps,
      "nonfinite_steps": int(host_state["nonfinite_count"]),
      "compile_seconds": compile_time,
      "train_seconds": train_time,
      "total_seconds": time.time() - t_start,
      "images_per_sec": steady_images / steady_time if steady_time else None,
      "config": config.to_dict(),
  }
  if not preempted:
    summary["final"] = {k: eval_results[k] for k in ("top1", "top5", "loss", "count")}
    if "ema_top1" in eval_results:
      summary["final_ema"] = {k: eval_results["ema_" + k] for k in ("top1", "top5", "loss")}
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=str)
  writer.close()
  if not preempted:
    if "final_ema" in summary:
      console.print(f"final_ema: top1={summary['final_ema']['top1']:.4f} "
                    f"top5={summary['final_ema']['top5']:.4f}")
    console.print(f"final: top1={summary['final']['top1']:.4f} "
                  f"top5={summary['final']['top5']:.4f}")
  return summary
