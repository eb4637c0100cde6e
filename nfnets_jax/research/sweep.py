"""The clipping-threshold x batch-size sweep: grid, resumable execution, collection, plots.

One training run per grid point, each in its own workdir ``DIR/<point name>``. A point's state
lives in ``DIR/<name>/sweep_point.json`` (status ``complete``, ``diverged``, ``failed`` or
``running``), so re-running the sweep skips finished and diverged points and resumes interrupted
ones (the runner restores its own latest checkpoint). ``collect`` gathers every point into
``results.csv``, ``results.md`` and PNG plots.

The run function is injected (``run_fn(config, workdir) -> summary dict``); the real one is
``nfnets_jax.engine.train_and_evaluate``. The trainer is injected rather than imported, so the
grid, resume and collection logic is testable with a fake run function.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import ml_collections
import numpy as np

from nfnets_jax import optim
from nfnets_jax.engine import reporting
from nfnets_jax.errors import NonFiniteLossError
from nfnets_jax.errors import SweepError
from nfnets_jax.errors import SweepNotFoundError

# Baselines that can be added to the AGC grid (per batch size).
BASELINES = ("none", "global_norm", "bn_resnet")
POINT_FILE = "sweep_point.json"
SWEEP_FILE = "sweep.json"
DEFAULT_MAX_ATTEMPTS = 2


# Raised by run functions when training hit a non-finite loss (the point diverged); the
# engine raises the same error with the first bad step.
NonFiniteLoss = NonFiniteLossError


# ------------------------------------------------------------------------------------------
# Grid.
# ------------------------------------------------------------------------------------------
def parse_clipping(spec: str) -> List[Optional[float]]:
  """``'0.01,0.02,none'`` -> ``[0.01, 0.02, None]`` (``None`` = no clipping, plain SGD)."""
  out: List[Optional[float]] = []
  for tok in _split(spec):
    if tok.lower() in ("none", "off", "no"):
      out.append(None)
      continue
    try:
      value = float(tok)
    except ValueError:
      raise SweepError(
          f"Bad clipping value {tok!r} in {spec!r}: use positive numbers or 'none', "
          "e.g. --clipping=0.01,0.04,none") from None
    if not value > 0 or not math.isfinite(value):
      raise SweepError(f"Clipping thresholds must be positive and finite; got {tok!r}.")
    out.append(value)
  if not out:
    raise SweepError("Empty clipping list; e.g. --clipping=0.01,0.04,none")
  return _dedupe(out)


def parse_batch_sizes(spec: str) -> List[int]:
  """``'256,1024'`` -> ``[256, 1024]``."""
  out = []
  for tok in _split(spec):
    try:
      value = int(tok)
    except ValueError:
      raise SweepError(f"Bad batch size {tok!r} in {spec!r}; e.g. --batch_sizes=64,256") from None
    if value <= 0:
      raise SweepError(f"Batch sizes must be positive; got {value}.")
    out.append(value)
  if not out:
    raise SweepError("Empty batch size list; e.g. --batch_sizes=64,256,1024")
  return _dedupe(out)


def parse_baselines(spec: Optional[str]) -> List[str]:
  """``'none,global_norm,bn_resnet'`` -> list, validated against :data:`BASELINES`."""
  out = []
  for tok in _split(spec or ""):
    if tok not in BASELINES:
      raise SweepError(f"Unknown baseline {tok!r}; choose from {', '.join(BASELINES)}.")
    out.append(tok)
  return _dedupe(out)


def _split(spec) -> List[str]:
  if isinstance(spec, (list, tuple)):
    return [str(s).strip() for s in spec if str(s).strip()]
  return [s.strip() for s in str(spec).split(",") if s.strip()]


def _dedupe(values):
  seen, out = set(), []
  for v in values:
    if v not in seen:
      seen.add(v)
      out.append(v)
  return out


def format_clipping(clipping: Optional[float]) -> str:
  """Short stable text for a threshold: ``0.01 -> '0.01'``, ``None -> 'none'``."""
  return "none" if clipping is None else f"{clipping:g}"


@dataclasses.dataclass(frozen=True)
class SweepPoint:
  """One grid point. ``kind`` is 'agc', 'none', 'global_norm' or 'bn_resnet'."""
  index: int
  batch_size: int
  clipping: Optional[float]
  kind: str

  @property
  def name(self) -> str:
    if self.kind in ("agc", "none"):
      return f"bs{self.batch_size}_clip{format_clipping(self.clipping)}"
    return f"bs{self.batch_size}_{self.kind.replace('_', '')}"

  @property
  def column(self) -> str:
    """The heat-map column / table label of this point."""
    if self.kind in ("agc", "none"):
      return format_clipping(self.clipping)
    return self.kind


def expand_grid(clippings: Sequence[Optional[float]], batch_sizes: Sequence[int],
                baselines: Sequence[str] = ()) -> List[SweepPoint]:
  """Points in a fixed order: for each batch size, the thresholds then the baselines.

  The 'none' baseline is the same run as a ``none`` threshold and is only added once.
  """
  points: List[SweepPoint] = []
  for b in batch_sizes:
    specs = []
    for c in clippings:
      specs.append((c, "agc" if c is not None else "none"))
    for base in baselines:
      if base == "none":
        if (None, "none") not in specs:
          specs.append((None, "none"))
      else:
        specs.append((None, base))
    for c, kind in specs:
      points.append(SweepPoint(index=len(points), batch_size=int(b), clipping=c, kind=kind))
  return points


# ------------------------------------------------------------------------------------------
# Per-point configs.
# ------------------------------------------------------------------------------------------
def scaled_lr(config) -> float:
  """The peak learning rate by the config's rule: base_lr * batch / lr_scale_batch."""
  return optim.peak_learning_rate(config.optimizer, int(config.batch_size))


def point_config(base_config, point: SweepPoint, *, bn_model: Optional[str] = None,
                 bn_model_kwargs: Optional[dict] = None):
  """A copy of ``base_config`` set up for ``point`` (batch size, optimizer, model)."""
  config = copy.deepcopy(base_config)
  unlocked = config.unlocked() if hasattr(config, "unlocked") else _nullcontext()
  with unlocked:
    config.batch_size = int(point.batch_size)
    pdb = config.get("per_device_batch_size", None)
    if pdb and pdb > point.batch_size:
      # A micro-batch bigger than the whole batch cannot work; let the runner pick.
      config.per_device_batch_size = None
    if point.kind == "agc":
      config.optimizer.name = "sgd_agc"
      config.optimizer.clipping = float(point.clipping)
    elif point.kind == "none":
      config.optimizer.name = "sgd"
    elif point.kind == "global_norm":
      config.optimizer.name = "sgd_global_clip"
    elif point.kind == "bn_resnet":
      if not bn_model:
        raise SweepError(
            "The bn_resnet baseline needs a BatchNorm model name: pass --bn_model=NAME "
            "(a registry name with has_state=True, e.g. resnet50_bn).")
      config.model = bn_model
      config.model_kwargs = ml_collections.ConfigDict(dict(bn_model_kwargs or {}))
      config.optimizer.name = "sgd"
    else:
      raise ValueError(f"Unknown point kind {point.kind!r}.")
  return config


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def point_record(config, point: SweepPoint) -> Dict[str, Any]:
  """The metadata stored for a point (what the table and plots need besides results)."""
  opt = config.optimizer
  return {
      "index": point.index,
      "name": point.name,
      "kind": point.kind,
      "batch_size": point.batch_size,
      "clipping": point.clipping,
      "model": str(config.model),
      "optimizer": str(opt.name),
      "lr": scaled_lr(config),
      "base_lr": float(opt.base_lr),
      "global_clip_norm": (float(optim.resolve_config(opt).global_clip_norm)
                           if point.kind == "global_norm" else None),
  }


# ------------------------------------------------------------------------------------------
# Reading what a run left behind.
# ------------------------------------------------------------------------------------------
def _read_json(path) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, json.JSONDecodeError):
    return None


def _write_json(path, obj):
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    reporting.dump_json(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _flatten(d, prefix="") -> Dict[str, Any]:
  out = {}
  if isinstance(d, dict):
    for k, v in d.items():
      key = f"{prefix}/{k}" if prefix else str(k)
      if isinstance(v, dict):
        out.update(_flatten(v, key))
      else:
        out[key] = v
  return out


def _find_metric(summary: Optional[dict], candidates: Sequence[str]) -> Optional[float]:
  """First numeric value in (flattened) ``summary`` whose key ends with a candidate."""
  if not summary:
    return None
  flat = _flatten(summary)
  for cand in candidates:
    for key, value in flat.items():
      leaf = key.lower()
      if leaf == cand or leaf.endswith("/" + cand):
        try:
          return float(value)
        except (TypeError, ValueError):
          continue
  return None


# Names the runner may use in summary.json (checked in this order).
_TOP1_KEYS = ("eval/top1", "final/top1", "final_eval/top1", "top1", "eval_top1", "top_1")
_TOP5_KEYS = ("eval/top5", "final/top5", "final_eval/top5", "top5", "eval_top5", "top_5")
_EVAL_LOSS_KEYS = ("eval/loss", "final/loss", "final_eval/loss", "eval_loss")
_TRAIN_LOSS_KEYS = ("train/loss", "train_loss", "final_train_loss", "last_train_loss")
_STEP_KEYS = ("step", "final_step", "steps", "global_step", "num_steps")


def summary_status(summary: Optional[dict]) -> Optional[str]:
  """'complete', 'diverged', 'interrupted' or None (unknown) from a runner summary.

  ``train_and_evaluate`` writes ``final`` (top1/top5/loss) when it finished and sets
  ``preempted`` when SIGTERM ended it early; a non-finite loss raises instead.
  """
  if not summary:
    return None
  flat = {k.lower(): v for k, v in _flatten(summary).items() if not k.startswith("config/")}
  if flat.get("preempted") is True:
    return "interrupted"
  for key in ("diverged", "nonfinite", "stopped_nonfinite"):
    if flat.get(key) is True:
      return "diverged"
  status = str(flat.get("status", "")).lower()
  if status in ("diverged", "nonfinite", "non_finite", "stopped_nonfinite"):
    return "diverged"
  if status in ("complete", "completed", "done", "finished"):
    return "complete"
  if isinstance(summary.get("final"), dict) and "top1" in summary["final"]:
    return "complete"
  return None


def diverged_step(summary: Optional[dict]) -> Optional[int]:
  if not summary:
    return None
  flat = {k.lower(): v for k, v in _flatten(summary).items()}
  for key in ("diverged_step", "nonfinite_step", "first_nonfinite_step"):
    if flat.get(key) is not None:
      try:
        return int(flat[key])
      except (TypeError, ValueError):
        pass
  value = _find_metric(summary, _STEP_KEYS)
  return None if value is None else int(value)


def _train_rows(workdir) -> List[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if row.get("split", "train") == "train":
        rows.append(row)
  return rows


def last_train_loss(workdir) -> Optional[float]:
  """The last logged training loss (``metrics.jsonl``); NaN for a non-finite one (written as
  null, or as the string "nan" by older runs)."""
  for row in reversed(_train_rows(workdir)):
    if "loss" in row:
      if row["loss"] is None:
        return float("nan")
      try:
        return float(row["loss"])
      except (TypeError, ValueError):
        return None
  return None


def clip_fraction_from_metrics(workdir) -> Optional[float]:
  """Mean over logged training intervals of the fraction of units AGC clipped.

  The runner logs ``agc/frac_clipped`` (averaged over each logging interval) for AGC runs.
  """
  values = []
  for row in _train_rows(workdir):
    value = row.get("agc/frac_clipped")
    if value is None:
      for key, v in row.items():
        if "clip" in key.lower() and "frac" in key.lower():
          value = v
          break
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value):
      values.append(float(value))
  return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------------------
# Running.
# ------------------------------------------------------------------------------------------
def _is_nonfinite_error(exc: BaseException) -> bool:
  if isinstance(exc, (NonFiniteLoss, FloatingPointError)):
    return True
  name = type(exc).__name__.lower()
  return "nonfinite" in name or "diverg" in name or "non_finite" in name


def _exc_step(exc: BaseException) -> Optional[int]:
  """The step of a non-finite error: its ``step`` attribute or 'at step N' in its message."""
  step = getattr(exc, "step", None)
  if step is None:
    m = re.search(r"at step (\d+)", str(exc))
    step = m.group(1) if m else None
  try:
    return None if step is None else int(step)
  except (TypeError, ValueError):
    return None


def point_state(sweep_dir, point: SweepPoint) -> Optional[dict]:
  return _read_json(os.path.join(sweep_dir, point.name, POINT_FILE))


def is_finished(state: Optional[dict], max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> bool:
  """Finished = complete, diverged, or failed ``max_attempts`` times (never retried forever)."""
  if not state:
    return False
  status = state.get("status")
  if status in ("complete", "diverged"):
    return True
  return status == "failed" and state.get("attempts", 0) >= max_attempts


def run_point(base_config, point: SweepPoint, sweep_dir, run_fn: Callable, *,
              bn_model: Optional[str] = None, bn_model_kwargs: Optional[dict] = None,
              log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) one point and returns its stored state."""
  workdir = os.path.join(sweep_dir, point.name)
  os.makedirs(workdir, exist_ok=True)
  config = point_config(base_config, point, bn_model=bn_model, bn_model_kwargs=bn_model_kwargs)
  state = dict(point_state(sweep_dir, point) or {})
  state.update(point_record(config, point))
  state["attempts"] = int(state.get("attempts", 0)) + 1
  state["status"] = "running"
  state.pop("error", None)
  state_path = os.path.join(workdir, POINT_FILE)
  _write_json(state_path, state)
  start = time.time()
  summary = None
  try:
    summary = run_fn(config, workdir)
    status = summary_status(summary) or "complete"
    state["status"] = status  # 'interrupted' (preempted) is resumed on the next invocation
    if status == "diverged":
      state["diverged_step"] = diverged_step(summary)
  except Exception as exc:  # pylint: disable=broad-except
    if _is_nonfinite_error(exc):
      state["status"] = "diverged"
      state["diverged_step"] = _exc_step(exc)
      state["error"] = f"{type(exc).__name__}: {exc}"
    else:
      state["status"] = "failed"
      state["error"] = f"{type(exc).__name__}: {exc}"
      log(f"  point {point.name} FAILED: {state['error']}")
  if summary is None:
    summary = _read_json(os.path.join(workdir, "summary.json"))
  state["summary"] = summary
  state["wall_time_s"] = float(state.get("wall_time_s", 0.0)) + (time.time() - start)
  _write_json(state_path, state)
  return state


def _fmt_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_sweep_spec(sweep_dir, points: Sequence[SweepPoint], base_config=None):
  """Records the grid so that ``collect`` can list pending points too."""
  os.makedirs(sweep_dir, exist_ok=True)
  spec = {"points": [dataclasses.asdict(p) | {"name": p.name} for p in points]}
  if base_config is not None:
    try:
      spec["base_config"] = json.loads(base_config.to_json_best_effort())
    except Exception:  # pylint: disable=broad-except
      spec["base_config"] = str(base_config)
  _write_json(os.path.join(sweep_dir, SWEEP_FILE), spec)


def run_sweep(base_config, points: Sequence[SweepPoint], sweep_dir, run_fn: Callable, *,
              only: Optional[int] = None, bn_model: Optional[str] = None,
              bn_model_kwargs: Optional[dict] = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
              log: Callable[[str], None] = print) -> List[dict]:
  """Runs every unfinished point (or only point ``only``); returns the states of those run."""
  write_sweep_spec(sweep_dir, points, base_config)
  if only is not None:
    if not 0 <= only < len(points):
      raise SweepError(f"--only={only} is out of range: this grid has {len(points)} points "
                       f"(0..{len(points) - 1}); list them with --list.")
    todo = [points[only]]
  else:
    todo = list(points)
  n = len(points)
  ran, durations = [], []
  for k, point in enumerate(todo):
    state = point_state(sweep_dir, point)
    if is_finished(state, max_attempts):
      log(f"[{point.index + 1}/{n}] {point.name}: already {state['status']}, skipped")
      continue
    resume = " (resuming)" if state else ""
    log(f"[{point.index + 1}/{n}] {point.name}: batch {point.batch_size}, "
        f"{point.kind} clipping={format_clipping(point.clipping)}{resume}")
    t0 = time.time()
    state = run_point(base_config, point, sweep_dir, run_fn, bn_model=bn_model,
                      bn_model_kwargs=bn_model_kwargs, log=log)
    durations.append(time.time() - t0)
    ran.append(state)
    if state["status"] == "interrupted":
      log(f"[{point.index + 1}/{n}] {point.name}: interrupted (preempted) after saving a "
          "checkpoint; run the same command again to resume.")
      break
    remaining = sum(1 for p in todo[k + 1:]
                    if not is_finished(point_state(sweep_dir, p), max_attempts))
    eta = np.mean(durations) * remaining
    top1 = _find_metric(state.get("summary"), _TOP1_KEYS)
    result = f" top1={top1:.4f}" if top1 is not None else ""
    if state["status"] == "diverged":
      result = f" at step {state.get('diverged_step')}"
    log(f"[{point.index + 1}/{n}] {point.name}: {state['status']}{result} in "
        f"{_fmt_duration(durations[-1])}; {remaining} left, ETA {_fmt_duration(eta)}")
  return ran


# ------------------------------------------------------------------------------------------
# Collecting.
# ------------------------------------------------------------------------------------------
CSV_FIELDS = ("index", "name", "kind", "batch_size", "clipping", "model", "optimizer", "lr",
              "status", "diverged_step", "top1", "top5", "eval_loss", "train_loss",
              "clip_fraction", "wall_time_s", "attempts")


def _points_in(sweep_dir) -> List[SweepPoint]:
  spec = _read_json(os.path.join(sweep_dir, SWEEP_FILE))
  points = {}
  if spec:
    for p in spec.get("points", []):
      pt = SweepPoint(index=p["index"], batch_size=p["batch_size"], clipping=p["clipping"],
                      kind=p["kind"])
      points[pt.name] = pt
  # Points run from another grid spec (e.g. --only jobs on a cluster) still count.
  if os.path.isdir(sweep_dir):
    for name in sorted(os.listdir(sweep_dir)):
      state = _read_json(os.path.join(sweep_dir, name, POINT_FILE))
      if state and name not in points:
        points[name] = SweepPoint(index=state.get("index", len(points)),
                                  batch_size=state["batch_size"], clipping=state["clipping"],
                                  kind=state["kind"])
  return list(points.values())


def collect_rows(sweep_dir) -> List[dict]:
  """One row per known point (pending ones included), sorted by batch size then threshold."""
  rows = []
  for point in _points_in(sweep_dir):
    workdir = os.path.join(sweep_dir, point.name)
    state = _read_json(os.path.join(workdir, POINT_FILE)) or {}
    summary = state.get("summary") or _read_json(os.path.join(workdir, "summary.json"))
    status = state.get("status")
    if status is None:
      status = summary_status(summary) or "pending"
    row = {
        "index": point.index, "name": point.name, "kind": point.kind,
        "batch_size": point.batch_size, "clipping": point.clipping,
        "model": state.get("model"), "optimizer": state.get("optimizer"),
        "lr": state.get("lr"), "status": status,
        "diverged_step": state.get("diverged_step"),
        "top1": None, "top5": None, "eval_loss": None, "train_loss": None,
        "clip_fraction": clip_fraction_from_metrics(workdir),
        "wall_time_s": state.get("wall_time_s"), "attempts": state.get("attempts"),
    }
    if status == "complete":
      row["top1"] = _find_metric(summary, _TOP1_KEYS)
      row["top5"] = _find_metric(summary, _TOP5_KEYS)
      row["eval_loss"] = _find_metric(summary, _EVAL_LOSS_KEYS)
    row["train_loss"] = last_train_loss(workdir)
    if row["train_loss"] is None:
      row["train_loss"] = _find_metric(summary, _TRAIN_LOSS_KEYS)
    rows.append(row)
  kind_order = {"agc": 0, "none": 1, "global_norm": 2, "bn_resnet": 3}
  rows.sort(key=lambda r: (r["batch_size"], kind_order.get(r["kind"], 9),
                           r["clipping"] if r["clipping"] is not None else 0.0))
  return rows


def _cell(value, fmt="{:.4f}"):
  if value is None:
    return ""
  if isinstance(value, float):
    if not math.isfinite(value):
      return str(value)
    return fmt.format(value)
  return str(value)


def write_csv(rows: Sequence[dict], path):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      out = dict(row)
      out["clipping"] = format_clipping(row["clipping"]) if row["kind"] in ("agc", "none") \
          else ""
      writer.writerow({k: ("" if out.get(k) is None else out.get(k)) for k in CSV_FIELDS})


def _cell_text(row) -> str:
  if row is None:
    return ""
  if row["status"] == "diverged":
    step = row.get("diverged_step")
    return f"diverged (step {step})" if step is not None else "diverged"
  if row["status"] == "complete" and row["top1"] is not None:
    return f"{100 * row['top1']:.2f}"
  return row["status"]


def markdown_table(rows: Sequence[dict]) -> str:
  """Top-1 (%) table: one row per batch size, one column per threshold / baseline."""
  columns = _columns(rows)
  batches = sorted({r["batch_size"] for r in rows})
  by = {(r["batch_size"], _column_of(r)): r for r in rows}
  lines = ["| batch \\ clipping | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for b in batches:
    cells = [_cell_text(by.get((b, c))) for c in columns]
    lines.append(f"| {b} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Final test top-1 (%) per point; 'none' = no clipping (plain SGD), "
               "'global_norm' = global-norm clipping, 'bn_resnet' = BatchNorm ResNet.")
  if any(r.get("clip_fraction") is not None for r in rows):
    lines.append("")
    lines.append("Mean fraction of units clipped by AGC during training:")
    lines.append("")
    agc_cols = [c for c in columns if c not in ("none", "global_norm", "bn_resnet")]
    lines.append("| batch \\ clipping | " + " | ".join(agc_cols) + " |")
    lines.append("|---" * (len(agc_cols) + 1) + "|")
    for b in batches:
      cells = []
      for c in agc_cols:
        r = by.get((b, c))
        cells.append(_cell(r.get("clip_fraction") if r else None, "{:.3f}"))
      lines.append(f"| {b} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _column_of(row) -> str:
  if row["kind"] in ("agc", "none"):
    return format_clipping(row["clipping"])
  return row["kind"]


def _columns(rows) -> List[str]:
  clips = sorted({r["clipping"] for r in rows if r["kind"] == "agc"})
  cols = [format_clipping(c) for c in clips]
  for extra in ("none", "global_norm", "bn_resnet"):
    if any(_column_of(r) == extra for r in rows):
      cols.append(extra)
  return cols


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend."""
  # Heavy and optional (plots only): imported when a plot is drawn.
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def plot_accuracy_vs_clipping(rows: Sequence[dict], path):
  """Final top-1 against the threshold (log x), one line per batch size; baselines dashed."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  batches = sorted({r["batch_size"] for r in rows})
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = {"none": "--", "global_norm": ":", "bn_resnet": "-."}
  labels = {"none": "no clipping", "global_norm": "global-norm clip", "bn_resnet": "BN ResNet"}
  for i, b in enumerate(batches):
    color = colors[i % len(colors)]
    agc = sorted((r for r in rows if r["batch_size"] == b and r["kind"] == "agc"),
                 key=lambda r: r["clipping"])
    ok = [r for r in agc if r["status"] == "complete" and r["top1"] is not None]
    if ok:
      ax.plot([r["clipping"] for r in ok], [100 * r["top1"] for r in ok], "o-", color=color,
              label=f"batch {b} (AGC)")
    bad = [r for r in agc if r["status"] == "diverged"]
    if bad:
      ax.plot([r["clipping"] for r in bad], [0.0] * len(bad), "x", color=color, markersize=10,
              markeredgewidth=2, label=f"batch {b} diverged")
    for kind, style in styles.items():
      for r in rows:
        if r["batch_size"] == b and r["kind"] == kind and r["status"] == "complete" \
            and r["top1"] is not None:
          ax.axhline(100 * r["top1"], color=color, linestyle=style, linewidth=1.2,
                     label=f"batch {b}, {labels[kind]}")
  ax.set_xscale("log")
  ax.set_xlabel("AGC clipping threshold (log scale)")
  ax.set_ylabel("final test top-1 (%)")
  ax.set_title("Accuracy vs clipping threshold")
  ax.grid(True, which="both", alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_heatmap(rows: Sequence[dict], path):
  """Heat map of top-1: batch size x threshold (+ baseline columns); diverged cells marked."""
  plt = _pyplot()
  columns = _columns(rows)
  batches = sorted({r["batch_size"] for r in rows})
  by = {(r["batch_size"], _column_of(r)): r for r in rows}
  grid = np.full((len(batches), len(columns)), np.nan)
  for i, b in enumerate(batches):
    for j, c in enumerate(columns):
      r = by.get((b, c))
      if r and r["status"] == "complete" and r["top1"] is not None:
        grid[i, j] = 100 * r["top1"]
  fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2, 0.8 * len(batches) + 1.8))
  masked = np.ma.masked_invalid(grid)
  im = ax.imshow(masked, cmap="viridis", aspect="auto")
  for i, b in enumerate(batches):
    for j, c in enumerate(columns):
      r = by.get((b, c))
      text = "" if r is None else ("div" if r["status"] == "diverged" else
                                   (f"{grid[i, j]:.1f}" if np.isfinite(grid[i, j])
                                    else r["status"][:4]))
      bright = np.isfinite(grid[i, j]) and np.nanmax(grid) - grid[i, j] < 0.4 * (
          np.nanmax(grid) - np.nanmin(grid))  # viridis is light at the top: dark text there
      color = "r" if text == "div" else ("k" if bright else "w")
      ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
  ax.set_xticks(range(len(columns)), labels=columns, rotation=30)
  ax.set_yticks(range(len(batches)), labels=[str(b) for b in batches])
  ax.set_xlabel("clipping threshold / baseline")
  ax.set_ylabel("batch size")
  ax.set_title("final test top-1 (%)")
  if np.isfinite(grid).any():
    fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_clip_fraction(rows: Sequence[dict], path):
  """Mean fraction of units clipped against the threshold, one line per batch size."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for b in sorted({r["batch_size"] for r in rows}):
    pts = sorted((r for r in rows if r["batch_size"] == b and r["kind"] == "agc"
                  and r.get("clip_fraction") is not None), key=lambda r: r["clipping"])
    if pts:
      ax.plot([r["clipping"] for r in pts], [r["clip_fraction"] for r in pts], "o-",
              label=f"batch {b}")
  ax.set_xscale("log")
  ax.set_xlabel("AGC clipping threshold (log scale)")
  ax.set_ylabel("mean fraction of units clipped")
  ax.set_title("How often AGC clips")
  ax.grid(True, which="both", alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, "no clip statistics logged", ha="center", va="center",
            transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def collect(sweep_dir, log: Callable[[str], None] = print) -> Dict[str, str]:
  """Writes results.csv, results.md and the PNG plots into ``sweep_dir``; returns their paths."""
  rows = collect_rows(sweep_dir)
  if not rows:
    where = "" if os.path.isdir(sweep_dir) else " (no such directory)"
    raise SweepNotFoundError(
        f"No sweep points found in {sweep_dir}{where}: run the sweep first with the same "
        "--workdir, or pass the --workdir of a sweep.")
  paths = {
      "csv": os.path.join(sweep_dir, "results.csv"),
      "markdown": os.path.join(sweep_dir, "results.md"),
      "accuracy_plot": os.path.join(sweep_dir, "accuracy_vs_clipping.png"),
      "heatmap": os.path.join(sweep_dir, "heatmap.png"),
      "clip_fraction_plot": os.path.join(sweep_dir, "clip_fraction.png"),
  }
  write_csv(rows, paths["csv"])
  table = markdown_table(rows)
  with open(paths["markdown"], "w") as f:
    f.write(table)
  plot_accuracy_vs_clipping(rows, paths["accuracy_plot"])
  plot_heatmap(rows, paths["heatmap"])
  plot_clip_fraction(rows, paths["clip_fraction_plot"])
  log(table)
  counts = {}
  for r in rows:
    counts[r["status"]] = counts.get(r["status"], 0) + 1
  log("points: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
  for k, v in paths.items():
    log(f"wrote {k}: {v}")
  return paths


def best_threshold_per_batch(rows: Iterable[dict]) -> Dict[int, Optional[float]]:
  """The AGC threshold with the best top-1 at each batch size (None when none finished)."""
  best: Dict[int, Any] = {}
  for r in rows:
    if r["kind"] != "agc" or r["status"] != "complete" or r["top1"] is None:
      continue
    cur = best.get(r["batch_size"])
    if cur is None or r["top1"] > cur[1]:
      best[r["batch_size"]] = (r["clipping"], r["top1"])
  return {b: v[0] for b, v in best.items()}
