"""One door for every set of weights: our workdirs, DeepMind's released files, converted ``.npz``.

``checkpoint_kind`` tells what a path holds; ``load_for_eval`` loads and validates it for a
config's model (every name and shape checked before anything is computed).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from nfnets_jax import models
from nfnets_jax.engine import checkpoint
from nfnets_jax.errors import CheckpointError, CheckpointNotFoundError, EvaluationError
from nfnets_jax.weights import deepmind


def model_kwargs(config) -> dict:
  kwargs = config.get("model_kwargs", None)
  return dict(kwargs.items()) if kwargs is not None else {}


def _hashable_kwargs(config) -> dict:
  """Model kwargs that affect parameter shapes (rates and dropout do not)."""
  kw = model_kwargs(config)
  for k in ("stochdepth_rate", "drop_rate"):
    kw.pop(k, None)
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}


def _resolve_orbax(path: str) -> Tuple[str, Optional[int]]:
  """(checkpoints directory, step or None) for a workdir / checkpoints dir / step dir."""
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(os.path.normpath(path))
  if base.isdigit():
    return os.path.dirname(os.path.normpath(path)), int(base)
  return path, None


def checkpoint_kind(path: str) -> str:
  """'orbax' (a directory), 'npz' (zip archive) or 'deepmind' (a pickle), read from the bytes.

  Anything else raises ``CheckpointError`` saying what the file starts with.
  """
  if not os.path.exists(path):
    raise CheckpointNotFoundError(f"No checkpoint at {path!r}: give a workdir, an orbax checkpoint "
                          "directory, a DeepMind F*_haiku.npz or a converted .npz.")
  if os.path.isdir(path):
    return "orbax"
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(b"PK"):
    return "npz"
  if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
    return "deepmind"
  if not head:
    raise CheckpointError(f"{path} is empty (0 bytes): not a readable checkpoint.")
  raise CheckpointError(
      f"{path} is not a readable checkpoint: it is neither a zip archive (.npz starts with 'PK') "
      f"nor a pickle (DeepMind's release starts with 0x80 and a protocol byte); its first "
      f"bytes are {head!r}. Check the path or download the file again.")


def load_for_eval(path: str, config, num_classes: int, *, use_ema: Optional[bool] = None,
                  step: Optional[int] = None, trust: bool = False,
                  expected_md5: Optional[str] = None) -> Dict[str, Any]:
  """Loads and validates ``path`` for ``config.model``.

  Returns ``{'kind', 'step', 'variants': [(label, params, model_state), ...]}`` where labels are
  'raw' and/or 'ema'. ``use_ema``: None = both when available, True = EMA only, False = raw only.
  """
  kind = checkpoint_kind(path)
  model_name = config.model
  info = models.get_info(model_name)
  shape_kwargs = _hashable_kwargs(config)
  expected = deepmind.expected_param_shapes(model_name, num_classes, **shape_kwargs)
  variants: List[Tuple[str, Any, Any]] = []
  if kind == "orbax":
    directory, dir_step = _resolve_orbax(path)
    step = dir_step if step is None else step
    ckpt = checkpoint.Checkpointer(directory)
    try:
      if ckpt.latest_step() is None:
        raise EvaluationError(f"No orbax checkpoint steps in {directory}.")
      step = ckpt.latest_step() if step is None else step
      raw = ckpt.restore_raw(step)
    finally:
      ckpt.close()
    if "params" not in raw:
      raise EvaluationError(f"{path} (step {step}) has no 'params'; keys: {sorted(raw)}.")
    model_state = raw.get("model_state", {}) or {}
    if use_ema is not True:
      variants.append(("raw", raw["params"], model_state))
    if use_ema is not False and "ema_params" in raw:
      variants.append(("ema", raw["ema_params"], model_state))
    if use_ema and "ema_params" not in raw:
      raise EvaluationError(f"{path} has no EMA parameters (the run had ema_decay=None); "
                            "drop --use_ema to evaluate the raw parameters.")
    for label, params, _ in variants:
      deepmind.validate_params(params, expected,
                                  source=f"{path} step {step} ({label} params)")
  else:
    if use_ema:
      raise EvaluationError(f"{path} is a single parameter set ({kind}); --use_ema applies to "
                            "our training checkpoints only.")
    if info.has_state:
      raise EvaluationError(f"{model_name} has BatchNorm state, which {kind} files do not hold; "
                            "evaluate its training workdir instead.")
    try:
      params = deepmind.load_params(path, model_name, num_classes, trust=trust,
                                       expected_md5=expected_md5, **shape_kwargs)
    except CheckpointError as e:
      raise EvaluationError(f"{e} (config model: {model_name} with {num_classes} classes, "
                            f"overrides {shape_kwargs})") from None
    variants.append(("raw", params, {}))
  return {"kind": kind, "step": step, "variants": variants}
