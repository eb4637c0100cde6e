"""Checkpoints that survive corruption, failed saves and asynchronous writes.

- An unreadable newest checkpoint (truncated or missing files, random bytes, missing metadata)
  is reported, moved to ``checkpoints/corrupt/<step>-<time>`` with its files, and the previous
  one is restored; a rerun of training then ends with bit-identical parameters.
- When no checkpoint is readable, ``NoReadableCheckpointError`` names the directory and every
  step, and nothing is moved (a rerun must not silently start from scratch).
- A failing write (foreground or background) raises ``CheckpointSaveError`` and leaves the
  earlier checkpoints intact; an asynchronous save snapshots the state before returning.
- Evaluation skips unreadable steps with a warning and moves nothing.
"""
import errno
import glob
import os
import pathlib
import sys

import jax
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import pytree_checkpoint_handler

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import synthetic  # noqa: E402
from nfnets_jax import pretrained  # noqa: E402
from nfnets_jax.weights import checkpoint  # noqa: E402
from nfnets_jax.engine import train  # noqa: E402
from nfnets_jax.errors import CheckpointSaveError  # noqa: E402
from nfnets_jax.errors import NoReadableCheckpointError  # noqa: E402


def _state(step, scale=1.0):
  return {"params": {"w": np.arange(2000, dtype=np.float32) * scale,
                     "b": np.full(3, scale, np.float32)},
          "opt_state": ({"trace": np.linspace(0, 1, 50, dtype=np.float32) * scale},),
          "step": np.int32(step), "rng": np.array([7, step], np.uint32)}


def _assert_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
    assert np.asarray(x).dtype == np.asarray(y).dtype


def _files(step_dir):
  return sorted(os.path.relpath(p, step_dir)
                for p in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True)
                if os.path.isfile(p))


def _data_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, "default", "ocdbt.process_0", "d", "*")),
             key=os.path.getsize)


def _truncate(step_dir):
  path = _data_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _random_bytes(step_dir):
  # Orbax has no checksum: without ours this restores silently as wrong numbers.
  path = _data_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 3)
    f.write(np.random.default_rng(0).bytes(64))


def _no_array_metadata(step_dir):
  os.remove(os.path.join(step_dir, "default", "_METADATA"))


def _no_step_metadata(step_dir):
  os.remove(os.path.join(step_dir, "_CHECKPOINT_METADATA"))


def _missing_file(step_dir):
  os.remove(_data_file(step_dir))


CORRUPTIONS = {
    "truncated": (_truncate, "OUT_OF_RANGE"),
    "random_bytes": (_random_bytes, "checksum mismatch"),
    "no_array_metadata": (_no_array_metadata, "_METADATA"),
    "no_step_metadata": (_no_step_metadata, "_CHECKPOINT_METADATA file is missing"),
    "missing_file": (_missing_file, "params.w"),
}


def _saved(directory, steps, **kwargs):
  ckpt = checkpoint.Checkpointer(directory, keep=5, **kwargs)
  for s in steps:
    assert ckpt.save(s, _state(s, scale=float(s)))
  ckpt.close()


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_unreadable_newest_is_moved_aside_and_previous_restored(tmp_path, kind):
  corrupt, reason = CORRUPTIONS[kind]
  directory = str(tmp_path / "checkpoints")
  _saved(directory, [1, 2, 3])
  step3 = os.path.join(directory, "3")
  corrupt(step3)
  files_after_damage = _files(step3)

  messages = []
  ckpt = checkpoint.Checkpointer(directory, keep=5, log=messages.append)
  step, state = ckpt.restore_latest(_state(0))
  assert step == 2
  _assert_equal(state, _state(2, scale=2.0))
  assert "checkpoint 3" in messages[0] and reason in messages[0], messages
  moved = glob.glob(os.path.join(directory, checkpoint.CORRUPT_DIR, "3-*"))
  assert len(moved) == 1 and not os.path.exists(step3)
  assert _files(moved[0]) == files_after_damage  # moved with its files, nothing deleted
  assert moved[0] in messages[-1]
  assert ckpt.all_steps() == [1, 2]  # orbax does not take corrupt/ for a step
  # The resumed run can write step 3 again, and it is the newest readable one.
  assert ckpt.save(3, _state(3, scale=30.0))
  assert ckpt.latest_step() == 3
  ckpt.close()
  ckpt = checkpoint.Checkpointer(directory, keep=5, log=messages.append)
  step, state = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert step == 3
  _assert_equal(state, _state(3, scale=30.0))


def test_none_readable_raises_and_moves_nothing(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _saved(directory, [4, 8])
  _random_bytes(os.path.join(directory, "8"))
  _no_array_metadata(os.path.join(directory, "4"))
  for _ in range(2):  # a rerun meets the same error: never a silent restart from scratch
    messages = []
    ckpt = checkpoint.Checkpointer(directory, log=messages.append)
    with pytest.raises(NoReadableCheckpointError) as info:
      ckpt.restore_latest(_state(0))
    ckpt.close()
    text = str(info.value)
    assert directory in text
    assert "step 8: CheckpointError: checksum mismatch" in text
    assert "step 4: FileNotFoundError" in text and "_METADATA" in text
    assert "Nothing was moved" in text
    assert len(messages) == 2
    assert sorted(os.listdir(directory)) == ["4", "8"]


def test_training_resumes_past_a_corrupt_checkpoint_bit_for_bit(tmp_path, capsys):
  config = synthetic.get_config("tiny")
  config.num_train_steps = 6
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 3
  # pretrained's shape check assumes 3 input channels (1-channel models: see the report).
  config.synthetic.channels = 3
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  uninterrupted = {ema: checkpoint.load_params(workdir, ema=ema) for ema in (False, True)}
  directory = os.path.join(workdir, "checkpoints")
  _random_bytes(os.path.join(directory, "6"))

  # Evaluation skips the damaged step with a warning and modifies nothing.
  capsys.readouterr()
  loaded = pretrained.load(workdir)
  loaded.check_fits(config.model, 10, 3, config.model_kwargs)
  assert loaded.step == 4
  assert "checkpoint 6" in capsys.readouterr().err
  assert sorted(os.listdir(directory)) == ["2", "4", "6"]

  summary = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert summary["start_step"] == 4 and summary["steps"] == 6
  assert "Warning: checkpoint 6" in out and "Resumed from checkpoint 4" in out
  assert len(glob.glob(os.path.join(directory, checkpoint.CORRUPT_DIR, "6-*"))) == 1
  for ema in (False, True):
    params, model_state = checkpoint.load_params(workdir, ema=ema)
    _assert_equal(params, uninterrupted[ema][0])
    _assert_equal(model_state, uninterrupted[ema][1])


class _FailingFuture:
  """An orbax commit future whose write fails in the background (disk full)."""

  def result(self, timeout=None):
    del timeout
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("async_save", [False, True])
def test_failed_write_keeps_earlier_checkpoints(tmp_path, monkeypatch, async_save):
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=async_save)
  assert ckpt.save(1, _state(1))
  ckpt.wait()
  before = _files(os.path.join(directory, "1"))

  async def fails_at_once(self, *args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")

  monkeypatch.setattr(pytree_checkpoint_handler.PyTreeCheckpointHandler, "async_save",
                      fails_at_once)
  with pytest.raises(CheckpointSaveError) as info:
    ckpt.save(2, _state(2))
  text = str(info.value)
  assert "checkpoint 2" in text and directory in text and "Permission denied" in text
  assert "earlier checkpoints are intact (steps [1])" in text
  assert ckpt.latest_step() == 1
  monkeypatch.undo()
  ckpt.close()
  assert sorted(d for d in os.listdir(directory) if d.isdigit()) == ["1"]
  assert _files(os.path.join(directory, "1")) == before
  ckpt = checkpoint.Checkpointer(directory)
  _assert_equal(ckpt.restore_latest(_state(0))[1], _state(1))
  ckpt.close()


def test_background_write_failure_surfaces_at_wait_save_and_close(tmp_path, monkeypatch):
  real = pytree_checkpoint_handler.PyTreeCheckpointHandler.async_save

  async def fails_later(self, *args, **kwargs):
    return list(await real(self, *args, **kwargs) or []) + [_FailingFuture()]

  for where in ("wait", "save", "close"):
    directory = str(tmp_path / where)
    ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=True)
    assert ckpt.save(1, _state(1))
    ckpt.wait()
    monkeypatch.setattr(pytree_checkpoint_handler.PyTreeCheckpointHandler, "async_save",
                        fails_later)
    assert ckpt.save(2, _state(2))  # returns before the write; the error comes later
    monkeypatch.undo()
    call = {"wait": ckpt.wait, "save": lambda: ckpt.save(3, _state(3)),  # pylint: disable=cell-var-from-loop
            "close": ckpt.close}[where]
    with pytest.raises(CheckpointSaveError, match=r"checkpoint 2 .*No space left on device.*"
                       r"earlier checkpoints are intact \(steps \[1\]\)"):
      call()
    ckpt.close()  # already reported: closes quietly
    ckpt = checkpoint.Checkpointer(directory)
    assert ckpt.all_steps() == [1]
    _assert_equal(ckpt.restore_latest(_state(0))[1], _state(1))
    ckpt.close()


def test_async_save_snapshots_the_state_and_refuses_nonfinite(tmp_path):
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, async_save=True)
  state = _state(5, scale=5.0)
  assert ckpt.save(5, state)
  state["params"]["w"][:] = -1.0  # the caller reuses its buffers at once
  state["opt_state"][0]["trace"][:] = np.nan
  with pytest.raises(checkpoint.NonFiniteCheckpointError):
    ckpt.save(6, {"params": {"w": np.array([np.inf], np.float32)}})
  assert ckpt.latest_step() == 5  # waits for the pending save
  step, restored = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert step == 5
  _assert_equal(restored, _state(5, scale=5.0))


def test_refuses_to_save_nonfinite_params(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  good = {"params": {"w": np.ones(3, np.float32)}, "step": np.int32(1)}
  assert ckpt.save(1, good)
  with pytest.raises(checkpoint.NonFiniteCheckpointError):
    ckpt.save(2, {"params": {"w": np.array([1.0, np.nan, 0.0], np.float32)},
                  "step": np.int32(2)})
  assert ckpt.latest_step() == 1
  # An unfinished (temporary) orbax directory is never taken as the latest checkpoint.
  os.makedirs(os.path.join(str(tmp_path), "5.orbax-checkpoint-tmp-1234567"))
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 1
  np.testing.assert_array_equal(ckpt.restore(good)["params"]["w"], np.ones(3))
  ckpt.close()


_FAILING_SAVE_CLI = r'''
import asyncio, errno, sys
import numpy as np
from orbax.checkpoint._src.handlers import pytree_checkpoint_handler as handler
from nfnets_jax import cli
from nfnets_jax.weights import checkpoint


class FailingFuture:
  def result(self, timeout=None):
    raise OSError(errno.ENOSPC, "No space left on device")


class ClosedLoopCallback:
  """What tensorstore's callbacks do after the failure: call into orbax's closed event loop."""

  def __init__(self):
    self.loop = asyncio.new_event_loop()
    self.loop.close()

  def __del__(self):
    self.loop.call_soon_threadsafe(print)


def main(argv):
  ckpt = checkpoint.Checkpointer(sys.argv[1], keep=5, async_save=True)
  state = {"params": {"w": np.ones(100, np.float32)}}
  ckpt.save(5, state)
  ckpt.wait()
  real = handler.PyTreeCheckpointHandler.async_save

  async def fails_later(self, *args, **kwargs):
    return list(await real(self, *args, **kwargs) or []) + [FailingFuture()]

  handler.PyTreeCheckpointHandler.async_save = fails_later
  ckpt.save(10, state)
  ClosedLoopCallback()
  ckpt.close()


cli.run(main)
'''


def test_failed_background_save_is_one_line_with_the_detail_in_a_file(tmp_path):
  """orbax's writer threads log a traceback each when a save fails; the console gets only the
  CheckpointSaveError line, the tracebacks go to checkpoints/save_errors.log."""
  import subprocess
  script = tmp_path / "save.py"
  script.write_text(_FAILING_SAVE_CLI)
  directory = tmp_path / "checkpoints"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[2]))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, str(script), str(directory)], capture_output=True,
                        text=True, env=env, timeout=120)
  assert proc.returncode == 1, proc.stderr[-3000:]
  log = directory / checkpoint.SAVE_ERRORS_LOG
  assert proc.stderr.splitlines() == [
      f"Error: Saving checkpoint 10 in {directory} failed: No space left on device (errno 28). "
      "The earlier checkpoints are intact (steps [5]); fix the cause (free disk space, check "
      "permissions) and run the same command again to resume from the newest of them; orbax's "
      f"report: {log}."], proc.stderr[-3000:]
  detail = log.read_text()
  assert detail.count("Traceback") >= 2 and "No space left on device" in detail
  assert "async_checkpointer.py" in detail and "Event loop is closed" in detail
  assert sorted(d for d in os.listdir(directory) if d.isdigit()) == ["5"]
