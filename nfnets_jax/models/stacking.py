"""Stacked blocks: the in-memory layout of identically shaped residual blocks, and back.

In memory, an NFNet keeps each run of consecutive, identically shaped blocks as ONE set of
arrays with a leading block axis, under the module ``nf_blocks_{first}_to_{last}`` (e.g.
``NFNet/~/nf_blocks_4_to_8/~/conv1/w`` of shape ``(5, 3, 3, 128, 1536)``), so the scan over a
stage, AGC and the optimizer touch tens of arrays instead of a thousand (F7: 1,250 -> ~80).
Every file on disk keeps the per-block names (``NFNet/~/nf_block_5/~/conv1/w``; Haiku calls
block 0 ``nf_block``): DeepMind's release, timm's weights, our ``.npz`` and our checkpoints.
These pure functions are the one place that converts between the two; every boundary (saving,
loading, fine-tuning) calls them. ``optim/agc.py`` reads the same module name to keep the block
axis out of its unit-wise norms (``agc.STACKED_MODULE``; a test keeps the two in step).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# A stacked module: ``nf_blocks_3_to_7`` as a whole path component.
_STACKED = re.compile(r"(^|/~/)nf_blocks_(\d+)_to_(\d+)(?=/~/|$)")
# One block: ``nf_block`` (block 0) or ``nf_block_5``, as a whole path component.
_BLOCK = re.compile(r"(^|/~/)nf_block(?:_(\d+))?(?=/~/|$)")

Run = Tuple[str, int, int]  # (model prefix such as 'NFNet/~/', first block, last block)


def stack_name(first: int, last: int) -> str:
  """Module name of the stacked blocks ``first..last`` (inclusive)."""
  return f"nf_blocks_{first}_to_{last}"


def block_name(index: int) -> str:
  """Haiku's name of block ``index`` (block 0 is ``nf_block``, then ``nf_block_1``, ...)."""
  return "nf_block" if index == 0 else f"nf_block_{index}"


def parse_stacked(module: str) -> Optional[Tuple[str, int, int, str]]:
  """(prefix, first, last, rest) of a stacked module path, else None."""
  m = _STACKED.search(module)
  if m is None:
    return None
  return module[:m.start()] + m.group(1), int(m.group(2)), int(m.group(3)), module[m.end():]


def stacked_runs(params: Mapping[str, Any]) -> List[Run]:
  """The stacked runs present in ``params`` (a Haiku params mapping), sorted."""
  runs = set()
  for module in params:
    parsed = parse_stacked(module)
    if parsed:
      runs.add(parsed[:3])
  return sorted(runs)


def is_stacked(params: Mapping[str, Any]) -> bool:
  return any(parse_stacked(m) for m in params)


def unstack_blocks(params: Mapping[str, Any]) -> Dict[str, Any]:
  """Per-block layout (the on-disk names) of ``params``; per-block params pass unchanged.

  Slices are views for numpy arrays, so this costs no copy; ``jax.ShapeDtypeStruct`` leaves
  (``jax.eval_shape``) become one block's shape.
  """
  out = {}
  for module, values in params.items():
    parsed = parse_stacked(module)
    if parsed is None:
      out[module] = values
      continue
    prefix, first, last, rest = parsed
    for k, index in enumerate(range(first, last + 1)):
      out[prefix + block_name(index) + rest] = {n: _slice(v, k) for n, v in values.items()}
  return out


def _slice(value, k: int):
  if isinstance(value, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
  return value[k]


def _block_structure(params: Mapping[str, Any]) -> Dict[Tuple[str, int], Dict[str, Any]]:
  """(prefix, index) -> {rest: {name: shape}} for every per-block module."""
  out: Dict[Tuple[str, int], Dict[str, Any]] = {}
  for module, values in params.items():
    m = _BLOCK.search(module)
    if m is None:
      continue
    key = (module[:m.start()] + m.group(1), int(m.group(2) or 0))
    out.setdefault(key, {})[module[m.end():]] = {
        n: (tuple(np.shape(v)), str(getattr(v, "dtype", ""))) for n, v in values.items()}
  return out


def identical_block_runs(params: Mapping[str, Any]) -> List[Run]:
  """Runs (length >= 2) of consecutive per-block modules with identical names and shapes."""
  structure = _block_structure(params)
  runs = []
  for prefix in sorted({p for p, _ in structure}):
    indices = sorted(i for p, i in structure if p == prefix)
    start = indices[0] if indices else None
    for prev, index in zip(indices, indices[1:] + [None]):
      if index is None or index != prev + 1 or structure[(prefix, index)] != structure[
          (prefix, prev)]:
        if prev > start:
          runs.append((prefix, start, prev))
        start = index
  return runs


def _stack(values):
  if all(isinstance(v, np.ndarray) or np.isscalar(v) for v in values):
    return np.stack(values)
  return jnp.stack(values)


def stack_blocks(params: Mapping[str, Any], runs: Optional[Iterable[Run]] = None
                 ) -> Dict[str, Any]:
  """Stacked layout of per-block ``params``: each run of ``runs`` (default: every run of two or
  more consecutive, identically shaped blocks, as the NFNet builds them) becomes one module
  ``nf_blocks_{first}_to_{last}`` whose arrays carry a leading block axis."""
  params = unstack_blocks(params)
  runs = identical_block_runs(params) if runs is None else list(runs)
  out = dict(params)
  for prefix, first, last in runs:
    modules = {}
    for index in range(first, last + 1):
      name = prefix + block_name(index)
      own = {m[len(name):]: v for m, v in params.items()
             if m == name or m.startswith(name + "/~/")}
      if not own:
        raise ValueError(f"Cannot stack blocks {first}..{last}: {name!r} is not in the params.")
      modules[index] = own
      for m in list(out):
        if m == name or m.startswith(name + "/~/"):
          del out[m]
    reference = modules[first]
    for index, own in modules.items():
      if {r: {n: np.shape(v) for n, v in d.items()} for r, d in own.items()} != {
          r: {n: np.shape(v) for n, v in d.items()} for r, d in reference.items()}:
        raise ValueError(f"Cannot stack blocks {first}..{last}: block {index} differs in names "
                         "or shapes from block {first}.")
    for rest, values in reference.items():
      out[prefix + stack_name(first, last) + rest] = {
          n: _stack([modules[i][rest][n] for i in range(first, last + 1)]) for n in values}
  return out


def match_layout(params: Mapping[str, Any], like: Mapping[str, Any]) -> Dict[str, Any]:
  """``params`` (either layout) in the layout of ``like`` (the same runs stacked)."""
  runs = stacked_runs(like)
  if not runs:
    return unstack_blocks(params)
  return stack_blocks(params, runs)


def map_param_dicts(fn, tree: Any, like: Any = None) -> Any:
  """Applies ``fn(params)`` (or ``fn(params, like_params)``) to every Haiku params mapping
  inside ``tree`` (a train state: params, optimizer state, EMA), keeping the containers.

  A params mapping is a dict whose keys look like Haiku module paths (``x/~/y``) and whose
  values are dicts. ``like``, when given, is walked in parallel (same containers).
  """
  def is_params(x):
    return (isinstance(x, Mapping) and x and all(isinstance(k, str) for k in x)
            and any("/~/" in k or _BLOCK.search(k) or _STACKED.search(k) for k in x)
            and all(isinstance(v, Mapping) for v in x.values()))

  def walk(x, ref):
    if is_params(x):
      return fn(x) if like is None else fn(x, ref)
    if isinstance(x, Mapping):
      return {k: walk(v, None if ref is None else ref[k]) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
      refs = [None] * len(x) if ref is None else list(ref)
      return type(x)(*[walk(v, r) for v, r in zip(x, refs)])
    if isinstance(x, (list, tuple)):
      refs = [None] * len(x) if ref is None else list(ref)
      return type(x)(walk(v, r) for v, r in zip(x, refs))
    return x

  return walk(tree, like)
