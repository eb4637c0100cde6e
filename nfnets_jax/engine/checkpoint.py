"""Training checkpoints with orbax-checkpoint's ``CheckpointManager``.

One checkpoint is the whole host-side train state (params, model state, optimizer state, EMA
params, step, RNG key); the data position is the step, because the data iterators are
deterministic given the seed and a start step. Orbax writes each checkpoint into a temporary
directory and renames it only once complete, so a crash mid-save never leaves a half-written
checkpoint as the latest (``latest_step`` ignores unfinished directories). Non-finite
parameters are refused, so a diverged run can never overwrite a good checkpoint.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from nfnets_jax.errors import NonFiniteCheckpointError




def all_finite(tree) -> bool:
  """True when every floating-point leaf of ``tree`` is finite."""
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      return False
  return True


class Checkpointer:
  """Keeps the last ``keep`` checkpoints of a train state under ``directory``.

  All processes must call ``save`` and ``restore`` (orbax synchronises them); the state passed
  in is the host (unreplicated, numpy) state, identical on every process.
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = False,
               log=print):
    self.directory = os.path.abspath(directory)
    self._log = log
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    """Step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = True) -> bool:
    """Saves ``state`` as checkpoint ``step`` (overwriting nothing); False if it already exists."""
    if not all_finite(state.get("params", state) if isinstance(state, dict) else state):
      raise NonFiniteCheckpointError(
          f"Refusing to save checkpoint {step}: the parameters contain NaN/Inf.")
    if step in self._manager.all_steps():
      return False
    saved = self._manager.save(int(step), args=ocp.args.StandardSave(state), force=force)
    self._manager.wait_until_finished()
    return bool(saved)

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores checkpoint ``step`` (default latest) into the structure of ``target``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), target)
    restored = self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))
    return jax.tree.map(np.asarray, restored)

  def restore_latest(self, target: Any):
    """(step, state) of the newest checkpoint restored into ``target``'s structure, or None."""
    step = self.latest_step()
    if step is None:
      return None
    return step, self.restore(target, step)

  def wait(self):
    """Blocks until a pending save is on disk."""
    self._manager.wait_until_finished()

  def restore_raw(self, step: Optional[int] = None) -> Any:
    """Checkpoint ``step`` (default latest) as saved, without a target (nested dicts/lists)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._manager.restore(int(step), args=ocp.args.StandardRestore())
    return jax.tree.map(np.asarray, restored)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def load_params(directory: str, step: Optional[int] = None, ema: bool = False):
  """Params (or EMA params) and model state of a training checkpoint, for evaluation.

  ``directory`` is a run's ``workdir/checkpoints`` (or the workdir itself).
  """
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  ckpt = Checkpointer(directory)
  try:
    raw = ckpt.restore_raw(step)
  finally:
    ckpt.close()
  key = "ema_params" if ema else "params"
  if key not in raw:
    raise KeyError(f"Checkpoint in {directory} has no {key!r} (keys: {sorted(raw)}).")
  return raw[key], raw.get("model_state", {})
