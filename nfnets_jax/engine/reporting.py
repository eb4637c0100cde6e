"""Where metrics go: the console (with images/s and ETA), ``metrics.jsonl`` and TensorBoard.

Only process 0 writes; on other processes every method is a no-op, so callers need no checks.
Every JSON file holds numbers as numbers: NaN/Inf as ``null`` (``json_value``, ``dump_json``).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import jax
import numpy as np


def format_duration(seconds: float) -> str:
  """``3725`` -> ``'1h02m05s'``; ``65`` -> ``'1m05s'``; ``9.4`` -> ``'9s'``."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m{s:02d}s"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"


def json_value(value):
  """``value`` as strict JSON holds it: numpy scalars and arrays as Python numbers and lists,
  NaN and Inf as None (``null``). A bare NaN is not JSON (strict readers reject the file) and a
  number written as the string "nan" is no longer a number."""
  if isinstance(value, dict):
    return {str(k): json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_value(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_value(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def dump_json(obj, stream, **kwargs) -> None:
  """``json.dump`` of ``json_value(obj)``; other objects (a config) are written as strings."""
  json.dump(json_value(obj), stream, allow_nan=False, default=str, **kwargs)


def shows_top5(num_classes: int) -> bool:
  """Top-5 accuracy says something only with more than 5 classes (else every label is in it)."""
  return int(num_classes) > 5


def format_metrics(metrics: Dict[str, Any], num_classes: int,
                   keys=("top1", "top5", "loss")) -> str:
  """``'top1=0.9326 top5=0.9994 loss=0.2100'``: the ``keys`` that ``metrics`` has, top-5 only
  where ``shows_top5``."""
  return " ".join(f"{k}={float(metrics[k]):.4f}" for k in keys
                  if k in metrics and (k != "top5" or shows_top5(num_classes)))


def _scalar(value) -> float:
  return float(np.asarray(value).reshape(()))


class MetricWriter:
  """Appends ``{"step": s, "split": ..., name: value}`` lines to ``workdir/metrics.jsonl`` and
  writes the same scalars to TensorBoard event files under ``workdir/tensorboard/<split>``."""

  def __init__(self, workdir: str, enabled: Optional[bool] = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = workdir
    self._tb = {}
    self._use_tb = tensorboard
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      if tensorboard:  # import TensorFlow now, not inside the first timed log interval
        self._tb_writer("train")

  def _tb_writer(self, split: str):
    if split not in self._tb:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._tb[split] = tf.summary.create_file_writer(
          os.path.join(self.workdir, "tensorboard", split))
    return self._tb[split]

  def write(self, step: int, metrics: Dict[str, float], split: str = "train"):
    if not self.enabled:
      return
    scalars = {k: _scalar(v) for k, v in metrics.items()}
    record = {"step": int(step), "split": split, "time": time.time()}
    record.update(json_value(scalars))
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._use_tb:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      with self._tb_writer(split).as_default():
        for name, value in scalars.items():
          tf.summary.scalar(name, value, step=int(step))
      self._tb_writer(split).flush()

  def close(self):
    if not self.enabled:
      return
    self._jsonl.close()
    for w in self._tb.values():
      w.close()


class Console:
  """Progress lines: ``step 100/900 | loss 0.512 | top1 0.83 | lr 0.1 | 812 img/s | ETA 2m10s``."""

  def __init__(self, total_steps: int, batch_size: int, enabled: Optional[bool] = None,
               stream=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.stream = stream or sys.stdout

  def print(self, message: str):
    if self.enabled:
      print(message, file=self.stream, flush=True)

  def log_train(self, step: int, metrics: Dict[str, float], images_per_sec: float):
    if not self.enabled:
      return
    m = {k: _scalar(v) for k, v in metrics.items()}
    parts = [f"step {step}/{self.total_steps}", f"loss {m.get('loss', float('nan')):.4f}"]
    if "top1" in m:
      parts.append(f"top1 {m['top1']:.3f}")
    if "learning_rate" in m:
      parts.append(f"lr {m['learning_rate']:.4g}")
    if "grad_norm" in m:
      parts.append(f"gnorm {m['grad_norm']:.3g}")
    if "agc/frac_clipped" in m:
      parts.append(f"clipped {m['agc/frac_clipped']:.1%} (max ratio {m['agc/max_ratio']:.3g})")
    if math.isfinite(images_per_sec):
      parts.append(f"{images_per_sec:.0f} img/s")
      eta = (self.total_steps - step) * self.batch_size / max(images_per_sec, 1e-9)
      parts.append(f"ETA {format_duration(eta)}")
    self.print(" | ".join(parts))
