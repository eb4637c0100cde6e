"""Signal propagation plots (SPPs) at initialization (Brock et al. 2021a, section 3).

On i.i.d. N(0, 1) input images, for every residual block: the average over channels of the
squared per-channel mean of the block output (``avg_sq_mean``, a mean shift shows up here),
the average channel variance of the block output (``avg_var``) and of its residual branch
(``res_var``). Per-channel statistics are over batch and space. The numbers come from the
models themselves (``model(x, is_training, return_metrics=True)`` returns
``block_{i}_avg_sq_mean``, ``block_{i}_avg_var``, ``block_{i}_res_var``).

For an NF model the expected picture is: the variance is reset to about ``1 + alpha**2`` at
each stage's first (transition) block and grows by about ``alpha**2`` per block inside a stage,
with no mean shift. ``skip_gain`` parameters are zero at init (so each non-transition block
would be the identity on the residual stream); by default they are set to 1 here so that the
branches contribute, which is the regime the alpha/beta scheme is designed for.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Dict, List, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import models

_KEY = re.compile(r"^block_(\d+)_(avg_sq_mean|avg_var|res_var)$")
STATS = ("avg_sq_mean", "avg_var", "res_var")


@dataclasses.dataclass
class ModelSPP:
  """Per-block statistics of one model."""
  name: str
  blocks: List[Dict[str, float]]   # each: block, stage, transition, avg_sq_mean, avg_var, res_var
  alpha: Optional[float] = None    # set for Normalizer-Free models
  expected_var: Optional[List[float]] = None

  def stat(self, key: str) -> np.ndarray:
    return np.array([b.get(key, np.nan) for b in self.blocks], dtype=np.float64)


def expected_nf_variance(depths: Sequence[int], alpha: float) -> List[float]:
  """Ideal output variance per block of an NF-ResNet with unit-variance residual branches.

  A stage's first block feeds its shortcut from the normalized input (``act(x) * beta``) so
  its output has variance ``1 + alpha**2``; every further block adds ``alpha**2``.
  """
  out = []
  for depth in depths:
    var = 1.0
    for _ in range(depth):
      var += alpha ** 2
      out.append(var)
  return out


def parse_block_metrics(outputs: Dict[str, jax.Array]) -> List[Dict[str, float]]:
  """``block_{i}_<stat>`` entries of a model's output dict -> a list ordered by block."""
  blocks: Dict[int, Dict[str, float]] = {}
  for key, value in outputs.items():
    m = _KEY.match(key)
    if m:
      blocks.setdefault(int(m.group(1)), {})[m.group(2)] = float(value)
  if not blocks:
    raise ValueError(
        "The model returned no per-block signal metrics (keys block_{i}_avg_var, ...) with "
        "return_metrics=True; signal propagation needs a model that reports them.")
  return [dict(block=i, **blocks[i]) for i in sorted(blocks)]


def _stage_depths(module) -> Optional[List[int]]:
  specs = getattr(module, "block_specs", None)
  if specs:
    depths: Dict[int, int] = {}
    for s in specs:
      depths[s.stage] = depths.get(s.stage, 0) + 1
    return [depths[k] for k in sorted(depths)]
  for attr in ("depth_pattern", "depths"):
    value = getattr(module, attr, None)
    if value:
      return [int(d) for d in value]
  return None


def _alpha_of(module) -> Optional[float]:
  alpha = getattr(module, "alpha", None)
  if alpha is None:
    blocks = getattr(module, "blocks", None)
    if blocks:
      alpha = getattr(blocks[0], "alpha", None)
  return None if alpha is None else float(alpha)


def measure(model_name: str, *, image_size: int = 64, batch: int = 16, num_classes: int = 10,
            seed: int = 0, skip_gain: Optional[float] = 1.0,
            model_kwargs: Optional[dict] = None, display_name: Optional[str] = None) -> ModelSPP:
  """Signal statistics of registered model ``model_name`` at init on N(0, 1) inputs.

  BatchNorm models (``has_state``) run in training mode so that BN uses batch statistics,
  as it does when training starts; the others run in eval mode (no stochastic depth or
  dropout). ``skip_gain=None`` keeps the parameters' init values.
  """
  info = models.get_info(model_name)
  transformed = models.transform(model_name, num_classes, **(model_kwargs or {}))
  captured = {}

  def with_metrics(next_f, args, kwargs, context):
    """Asks the top-level model (no '/' in its name) for its per-block metrics."""
    if context.method_name == "__call__" and "/" not in context.module.module_name:
      captured["module"] = context.module
      kwargs = dict(kwargs, return_metrics=True)
    return next_f(*args, **kwargs)

  key_params, key_x, key_apply = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(key_x, (batch, image_size, image_size, 3), jnp.float32)
  is_training = bool(info.has_state)
  # The interceptor stack is thread-local, so it acts while jit traces below.
  with hk.intercept_methods(with_metrics):
    params, state = jax.jit(transformed.init, static_argnums=2)(key_params, x, is_training)
    if skip_gain is not None:
      params = hk.data_structures.map(
          lambda mod, name, v: jnp.full_like(v, skip_gain) if name == "skip_gain" else v,
          params)
    outputs, _ = jax.jit(transformed.apply, static_argnums=4)(params, state, key_apply, x,
                                                              is_training)
  blocks = parse_block_metrics(outputs)
  module = captured.get("module")
  depths = _stage_depths(module)
  alpha = _alpha_of(module)
  if depths and sum(depths) == len(blocks):
    index = 0
    for stage, depth in enumerate(depths):
      for j in range(depth):
        blocks[index]["stage"] = stage
        blocks[index]["transition"] = j == 0
        index += 1
  expected = None
  if alpha is not None and depths and sum(depths) == len(blocks):
    expected = expected_nf_variance(depths, alpha)
    for b, e in zip(blocks, expected):
      b["expected_var"] = e
  return ModelSPP(name=display_name or model_name, blocks=blocks, alpha=alpha,
                  expected_var=expected)


CSV_FIELDS = ("model", "block", "stage", "transition", "avg_sq_mean", "avg_var", "res_var",
              "expected_var")


def write_csv(results: Sequence[ModelSPP], path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for r in results:
      for b in r.blocks:
        row = {k: b.get(k, "") for k in CSV_FIELDS}
        row["model"] = r.name
        writer.writerow(row)


def plot(results: Sequence[ModelSPP], path: str, title: Optional[str] = None) -> None:
  """Three log-scale panels over block index: avg squared channel mean, avg channel variance,
  residual-branch variance; the ideal NF variance dashed; stage-transition blocks as squares."""
  # Heavy and optional (plots only): imported when plotting.
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  panels = (("avg_sq_mean", "average squared channel mean"),
            ("avg_var", "average channel variance"),
            ("res_var", "residual branch variance"))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (key, label) in zip(axes, panels):
    for i, r in enumerate(results):
      y = r.stat(key)
      if np.all(np.isnan(y)):
        continue
      color = colors[i % len(colors)]
      x = np.arange(len(y))
      ax.plot(x, y, "o-", markersize=3, color=color, label=r.name)
      trans = [b["block"] for b in r.blocks if b.get("transition")]
      if trans:
        ax.plot(trans, y[trans], "s", markersize=6, markerfacecolor="none", color=color)
      if key == "avg_var" and r.expected_var is not None:
        ax.plot(x, r.expected_var, "--", color=color, linewidth=1,
                label=f"{r.name}: ideal 1 + k alpha^2")
    ax.set_yscale("log")
    ax.set_xlabel("residual block (squares: first block of a stage)")
    ax.set_title(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[1].legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def summarize(result: ModelSPP) -> str:
  """One-paragraph text summary of a model's SPP (printed by the script)."""
  var = result.stat("avg_var")
  msq = result.stat("avg_sq_mean")
  lines = [f"{result.name}: {len(var)} blocks; avg channel variance from {var[0]:.3g} to "
           f"{var[-1]:.3g} (max {np.nanmax(var):.3g}); max avg squared mean {np.nanmax(msq):.3g}"]
  if result.expected_var is not None:
    rel = np.abs(var - np.array(result.expected_var)) / np.array(result.expected_var)
    lines.append(f"  alpha={result.alpha}: measured variance within {100 * np.nanmax(rel):.1f}% "
                 f"of the ideal 1 + k*alpha^2 (median {100 * np.nanmedian(rel):.1f}%)")
  return "\n".join(lines)


def run(model_names: Sequence[str], out_dir: str, *, image_size: int = 64, batch: int = 16,
        seed: int = 0, skip_gain: Optional[float] = 1.0,
        model_kwargs: Optional[Dict[str, dict]] = None, log=print):
  """Measures every model, writes ``spp.csv`` and ``spp.png`` in ``out_dir``.

  Returns ``(paths, results)``: ``{'csv': ..., 'png': ...}`` and the list of ``ModelSPP``.
  """
  os.makedirs(out_dir, exist_ok=True)
  results = []
  for name in model_names:
    log(f"measuring {name} at {image_size}px, batch {batch} ...")
    r = measure(name, image_size=image_size, batch=batch, seed=seed, skip_gain=skip_gain,
                model_kwargs=(model_kwargs or {}).get(name))
    log(summarize(r))
    results.append(r)
  paths = {"csv": os.path.join(out_dir, "spp.csv"), "png": os.path.join(out_dir, "spp.png")}
  write_csv(results, paths["csv"])
  plot(results, paths["png"],
       title=f"Signal propagation at init, N(0,1) inputs {image_size}px, batch {batch}")
  for k, v in paths.items():
    log(f"wrote {k}: {v}")
  return paths, results
