"""Our own training checkpoints (orbax-checkpoint's ``CheckpointManager``): written by the
engine, read by ``pretrained`` and evaluation through :func:`read`.

One checkpoint is the whole host-side train state (params, model state, optimizer state, EMA
params, step, RNG key); the data position is the step, because the data iterators are
deterministic given the seed and a start step. Orbax writes each checkpoint into a temporary
directory and renames it only once complete, so a crash mid-save never leaves a half-written
checkpoint as the latest (``latest_step`` ignores unfinished directories). Non-finite
parameters are refused, so a diverged run can never overwrite a good checkpoint.

Layout. Files keep the per-block parameter names (``nf_block_5``) whatever the layout in
memory: stacked blocks (``models.stacking``) are unstacked on save, in the params, the EMA and
every params-shaped tree of the optimizer state, and restored into the target's layout, so
checkpoints written before stacking existed resume unchanged. A raw read (no target) gives the
per-block layout, which every model applies.

Corruption. Every checkpoint carries a CRC32 of each array (in its step metadata), because
orbax has no checksum of its own: random bytes in a data file restore silently as wrong
numbers. ``restore_latest`` tries the newest checkpoint first; one that cannot be read
(truncated or missing files, random bytes, missing metadata) is reported with its reason and
the previous one is tried. Once a readable one is found, the unreadable newer ones are moved
(never deleted) to ``<directory>/corrupt/<step>-<time>`` where orbax never looks, so the
resumed run can save those steps again. When none can be read nothing is moved and
``NoReadableCheckpointError`` names every step and its reason: moving them all aside would make
the next run start from scratch silently over a workdir that has checkpoints (which may also be
a sign of a changed config rather than corruption); the user decides.

Saves. With ``async_save=True`` orbax writes in a background thread while training continues;
``save`` first copies the host state (the caller's buffers may be reused or donated). A save
that fails (disk full, permissions), in the foreground or in the background, raises
``CheckpointSaveError`` at the latest at the next ``save``/``wait``/``latest_step``/``close``;
the earlier checkpoints are never removed before a newer one is complete, so they stay intact.
That error is the one thing a failed save shows: the tracebacks orbax's writer threads log (and
tensorstore's callbacks raise into a closed event loop), one per thread and array, go to
``<directory>/save_errors.log`` while a save is in flight.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging as absl_logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from nfnets_jax.errors import CheckpointError
from nfnets_jax.errors import CheckpointNotFoundError
from nfnets_jax.errors import CheckpointSaveError
from nfnets_jax.errors import NoReadableCheckpointError
from nfnets_jax.errors import NonFiniteCheckpointError
from nfnets_jax.errors import sentence
from nfnets_jax.models import stacking

CORRUPT_DIR = "corrupt"  # under the checkpoint directory; not a step name, so orbax ignores it
CHECKSUM_KEY = "nfnets_crc32"  # in each step's custom metadata: {leaf name: crc32}
_STEP_METADATA = "_CHECKPOINT_METADATA"
SAVE_ERRORS_LOG = "save_errors.log"  # in the checkpoint directory: orbax's detail of failed saves


def all_finite(tree) -> bool:
  """True when every floating-point leaf of ``tree`` is finite."""
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
      return False
  return True


def _leaf_name(path) -> str:
  """Orbax's name of a leaf (``params.linear.w``), the same for a target and a raw restore."""
  parts = []
  for key in path:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return ".".join(parts)


def checksums(tree) -> Dict[str, int]:
  """CRC32 of the bytes of every leaf, by leaf name (~4 GB/s)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.ascontiguousarray(leaf)
    out[_leaf_name(path)] = zlib.crc32(memoryview(leaf).cast("B")) if leaf.size else 0
  return out


def _reason(error: BaseException) -> str:
  text = " ".join(str(error).split())
  if len(text) > 300:
    text = text[:300] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _save_reason(error: BaseException) -> str:
  """Why a write failed: the OS error when there is one (orbax wraps tensorstore's 'No space left
  on device [os_error_code=28]' in a long ValueError), else the error's first and last words."""
  code = getattr(error, "errno", None)
  if code is None:
    found = re.search(r"os_error_code='?(\d+)", str(error))
    code = int(found.group(1)) if found else None
  if code:
    return f"{os.strerror(code)} (errno {code})"
  text = " ".join(str(error).split())
  if len(text) > 300:
    text = f"{text[:150]} ... {text[-150:]}"
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _BackgroundErrors(logging.Filter):
  """Sends the detail of failed saves to a file instead of the console.

  When a write fails (a full disk), each of orbax's writer threads logs a traceback through absl
  logging, and tensorstore's callbacks raise 'Event loop is closed' as unraisable exceptions:
  dozens of tracebacks before the one ``CheckpointSaveError`` line that says what to do. While a
  save is in flight (``open`` to ``close``), orbax's records of level ERROR and above and those
  exceptions are appended to the Checkpointer's ``save_errors.log`` (the newest save's). A file
  that cannot be written (the disk is full) loses them; the console stays quiet either way.
  """

  def __init__(self):
    super().__init__()
    self._paths: List[str] = []  # one per save in flight
    self._lock = threading.Lock()
    self._previous_hook = None
    self._formatter = logging.Formatter("%(asctime)s %(levelname)s %(pathname)s:%(lineno)d "
                                        "[%(threadName)s] %(message)s")

  def open(self, path: str) -> None:
    with self._lock:
      self._paths.append(path)
      if len(self._paths) == 1:
        absl_logging.get_absl_logger().addFilter(self)
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable

  def close(self, path: str) -> None:
    with self._lock:
      if path not in self._paths:
        return
      self._paths.remove(path)
      if not self._paths:
        absl_logging.get_absl_logger().removeFilter(self)
        if sys.unraisablehook == self._unraisable:  # pylint: disable=comparison-with-callable
          sys.unraisablehook = self._previous_hook

  def _write(self, text: str) -> None:
    with self._lock:
      if not self._paths:
        return
      try:
        with open(self._paths[-1], "a") as f:
          f.write(text.rstrip("\n") + "\n")
      except OSError:
        pass  # a full disk; the CheckpointSaveError still says what happened

  def filter(self, record: logging.LogRecord) -> bool:
    """False (not shown) for orbax's errors: they are written to the file instead."""
    if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    self._write(self._formatter.format(record))
    return False

  def _unraisable(self, unraisable) -> None:
    frames = traceback.extract_tb(unraisable.exc_traceback)
    if not any(f"{os.sep}{name}{os.sep}" in frame.filename
               for frame in frames for name in ("asyncio", "orbax", "tensorstore")):
      self._previous_hook(unraisable)
      return
    self._write("".join(traceback.format_exception(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)))


_BACKGROUND_ERRORS = _BackgroundErrors()


class Checkpointer:
  """Keeps the last ``keep`` checkpoints of a train state under ``directory``.

  All processes must call ``save`` and ``restore`` (orbax synchronises them); the state passed
  in is the host (unreplicated, numpy) state, identical on every process. ``log`` prints the
  warnings about unreadable checkpoints.
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = False,
               log: Callable[[str], None] = print):
    self.directory = os.path.abspath(directory)
    self._log = log
    self._async = bool(async_save)
    self._pending: Optional[int] = None  # step of an asynchronous save not yet waited for
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=self._async)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self.save_errors_log = os.path.join(self.directory, SAVE_ERRORS_LOG)

  # -- saving ----------------------------------------------------------------------------------

  def _save_error(self, step, error: BaseException) -> CheckpointSaveError:
    try:
      self._manager.reload()  # the failed step is not on disk; earlier ones are
      intact = sorted(self._manager.all_steps())
    except Exception:  # pylint: disable=broad-except
      intact = "unknown"
    details = (f"; orbax's report: {self.save_errors_log}"
               if os.path.exists(self.save_errors_log) else "")
    return CheckpointSaveError(
        f"Saving checkpoint {step} in {self.directory} failed: {sentence(_save_reason(error))} "
        f"The earlier checkpoints are intact (steps {intact}); fix the cause (free disk space, "
        f"check permissions) and run the same command again to resume from the newest of them"
        f"{details}.")

  def wait(self):
    """Blocks until a pending save is on disk; its failure raises ``CheckpointSaveError``."""
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step if step is not None else "(pending)", e) from e
    finally:
      _BACKGROUND_ERRORS.close(self.save_errors_log)

  def save(self, step: int, state: Any, force: bool = True) -> bool:
    """Saves ``state`` as checkpoint ``step`` (overwriting nothing); False if it already exists.

    Asynchronous when the Checkpointer was made with ``async_save=True``: it returns once the
    state is copied, and the files are written while the caller continues.
    """
    if not all_finite(state.get("params", state) if isinstance(state, dict) else state):
      raise NonFiniteCheckpointError(
          f"Refusing to save checkpoint {step}: the parameters contain NaN/Inf.")
    self.wait()  # one save at a time; an earlier background failure surfaces here
    if step in self._manager.all_steps():
      return False
    # A private copy: orbax may still read it after we return, and the caller's arrays can be
    # views of device buffers that the next train step donates.
    snapshot = jax.tree.map(lambda x: np.array(x, copy=True), state)
    snapshot = stacking.map_param_dicts(stacking.unstack_blocks, snapshot)  # per-block on disk
    _BACKGROUND_ERRORS.open(self.save_errors_log)  # until wait() returns
    try:
      saved = self._manager.save(int(step), args=ocp.args.StandardSave(snapshot), force=force,
                                 custom_metadata={CHECKSUM_KEY: checksums(snapshot)})
    except Exception as e:  # pylint: disable=broad-except
      error = self._save_error(step, e)
      _BACKGROUND_ERRORS.close(self.save_errors_log)
      raise error from e
    self._pending = int(step)
    if not self._async:
      self.wait()
    return bool(saved)

  # -- reading ---------------------------------------------------------------------------------

  def latest_step(self) -> Optional[int]:
    """Step of the newest complete checkpoint (after any pending save), or None."""
    self.wait()
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    self.wait()
    return list(self._manager.all_steps())

  def _verify(self, step: int, restored) -> None:
    """Raises ``CheckpointError`` when ``restored`` does not match the checksums saved with it."""
    path = os.path.join(self.directory, str(step), _STEP_METADATA)
    if not os.path.exists(path):
      raise CheckpointError(f"its {_STEP_METADATA} file is missing")
    try:
      with open(path, "rb") as f:
        metadata = json.loads(f.read().decode("utf-8"))
      expected = (metadata.get("custom_metadata") or {}).get(CHECKSUM_KEY)
    except (ValueError, AttributeError) as e:
      raise CheckpointError(f"its {_STEP_METADATA} file is not valid JSON ({e})") from None
    if expected is None:
      return  # written before checksums existed
    actual = checksums(restored)
    bad = sorted(k for k in expected.keys() & actual.keys() if expected[k] != actual[k])
    missing = sorted(expected.keys() - actual.keys())
    if bad:
      raise CheckpointError(f"checksum mismatch in {len(bad)} array(s), e.g. {bad[0]}")
    if missing:
      raise CheckpointError(f"{len(missing)} saved array(s) missing, e.g. {missing[0]}")

  def _restore_step(self, step: int, target: Any = None) -> Any:
    if target is None:
      args = ocp.args.StandardRestore()
    else:
      on_disk = stacking.map_param_dicts(
          stacking.unstack_blocks, jax.tree.map(lambda x: x, target))
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), on_disk)
      args = ocp.args.StandardRestore(abstract)
    restored = jax.tree.map(np.asarray, self._manager.restore(int(step), args=args))
    self._verify(step, restored)
    if target is not None:  # back into the target's (stacked) layout
      restored = stacking.map_param_dicts(stacking.match_layout, restored, target)
    return restored

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores checkpoint ``step`` (default latest) into the structure of ``target``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    return self._restore_step(step, target)

  def restore_raw(self, step: Optional[int] = None) -> Any:
    """Checkpoint ``step`` (default latest) as saved, without a target (nested dicts/lists)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    return self._restore_step(step)

  def restore_latest(self, target: Any, move_aside: bool = True) -> Optional[Tuple[int, Any]]:
    """(step, state) of the newest readable checkpoint in ``target``'s structure, or None.

    Unreadable newer checkpoints are reported through ``log`` and, with ``move_aside``, moved
    to ``<directory>/corrupt/`` once a readable one is found. Raises
    ``NoReadableCheckpointError`` (moving nothing) when checkpoints exist but none is readable.
    ``target=None`` restores the checkpoint as saved (nested dicts/lists).
    """
    self.wait()
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    failures = []
    for step in steps:
      try:
        state = self._restore_step(step, target)
      except Exception as e:  # pylint: disable=broad-except
        failures.append((step, _reason(e)))
        self._log(f"Warning: checkpoint {step} in {self.directory} cannot be read "
                  f"({failures[-1][1]}); trying an earlier one.")
        continue
      if failures and move_aside:
        self._move_aside([s for s, _ in failures])
      return step, state
    tried = "; ".join(f"step {s}: {r}" for s, r in failures)
    raise NoReadableCheckpointError(
        f"None of the {len(failures)} checkpoint(s) in {self.directory} can be read ({tried}). "
        "Nothing was moved or deleted. If the config changed, use a new --workdir; if the "
        f"files are damaged, move the step directories out of {self.directory} to start "
        "from scratch.")

  def _move_aside(self, steps: List[int]) -> None:
    """Renames unreadable step directories to ``corrupt/<step>-<time>`` (process 0 only)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if jax.process_index() == 0:
      os.makedirs(os.path.join(self.directory, CORRUPT_DIR), exist_ok=True)
      for step in steps:
        source = os.path.join(self.directory, str(step))
        dest = os.path.join(self.directory, CORRUPT_DIR, f"{step}-{stamp}")
        n = 1
        while os.path.exists(dest):
          dest = os.path.join(self.directory, CORRUPT_DIR, f"{step}-{stamp}-{n}")
          n += 1
        os.rename(source, dest)
        self._log(f"Moved unreadable checkpoint {step} to {dest}.")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("nfnets_checkpoint_move_aside")
    self._manager.reload()

  def close(self):
    """Waits for a pending save (raising ``CheckpointSaveError`` if it failed) and closes."""
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass  # an async failure was raised by wait() above (orbax raises it once)


def saved_steps(directory: str) -> List[int]:
  """The steps of the finished checkpoints in ``directory``, read from the file system only.

  Orbax renames a step's folder to its number once the save is complete, so the numbered
  folders are the finished checkpoints. No orbax manager is made: making one synchronises all
  processes, so code that only some processes reach (or reach at different moments) must not.
  """
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def resolve(path: str) -> Tuple[str, Optional[int]]:
  """(checkpoints directory, step or None) of a workdir, its ``checkpoints/`` or one step folder."""
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(os.path.normpath(path))
  if base.isdigit():
    return os.path.dirname(os.path.normpath(path)), int(base)
  return path, None


def read(path: str, step: Optional[int] = None,
         log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
         ) -> Tuple[int, Dict[str, Any]]:
  """(step, state as saved) of checkpoint ``step`` of a workdir (or its ``checkpoints/``, or one
  step folder, whose step is then the default), else of the newest readable one.

  The one reader of our checkpoints. Unreadable newer steps are skipped with a warning through
  ``log`` and never moved: reading must not modify a workdir (training moves them aside when it
  resumes).
  """
  directory, dir_step = resolve(path)
  step = dir_step if step is None else step
  ckpt = Checkpointer(directory, log=log)
  try:
    if step is None:
      found = ckpt.restore_latest(None, move_aside=False)
      if found is None:
        raise CheckpointNotFoundError(f"No checkpoint in {directory} yet: train first.")
      return found
    if step not in ckpt.all_steps():
      raise CheckpointNotFoundError(f"No checkpoint step {step} in {directory} (steps: "
                                    f"{sorted(ckpt.all_steps())}).")
    try:
      return step, ckpt.restore_raw(step)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"Checkpoint {step} in {directory} cannot be read "
                            f"({type(e).__name__}: {e}).") from e
  finally:
    ckpt.close()


def load_params(directory: str, step: Optional[int] = None, ema: bool = False):
  """(params or EMA params, model state) of a training checkpoint (see :func:`read`)."""
  _, raw = read(directory, step)
  key = "ema_params" if ema else "params"
  if key not in raw:
    raise CheckpointError(f"Checkpoint in {directory} has no {key!r} (keys: {sorted(raw)}).")
  return raw[key], raw.get("model_state", {})
