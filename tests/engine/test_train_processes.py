"""``experiments/train.py`` as real processes: multi-process ``jax.distributed`` and preemption.

- Two processes x 2 CPU devices joined by ``jax.distributed.initialize`` on 127.0.0.1 train to
  the same losses and parameters as one process with 4 devices (same global batch).
- A run stopped by SIGTERM exits 0 with a message after saving; one killed by SIGKILL loses
  only the steps since its last checkpoint; restarting both ends with the parameters of an
  uninterrupted run.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nfnets_jax.weights import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "experiments" / "train.py")
CONFIG = str(ROOT / "configs" / "synthetic.py") + ":tiny"


def _env(num_devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def _command(workdir, *extra):
  return [sys.executable, TRAIN, f"--config={CONFIG}", f"--workdir={workdir}", *extra]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


def _assert_close(a, b, rtol, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# The mesh engine with the state sharded over both processes' devices (fsdp=4) must match the
# one-process pmap run too.
@pytest.mark.parametrize("engine_flags", [
    pytest.param([], id="pmap"),
    pytest.param(["--config.parallel=mesh", "--config.fsdp=4"], id="mesh_fsdp4"),
])
def test_two_processes_match_one_process(tmp_path, engine_flags):
  flags = ["--config.num_train_steps=3", "--config.batch_size=16"]
  single = str(tmp_path / "single")
  out = subprocess.run(_command(single, *flags), env=_env(4), capture_output=True, text=True,
                       timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "4 devices x 4 x 1" in out.stdout

  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      _command(multi, *flags, *engine_flags, f"--coordinator_address=127.0.0.1:{port}",
               "--num_processes=2", f"--process_id={i}"),
      env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=240) for p in procs]
  for p, (stdout, stderr) in zip(procs, outputs):
    assert p.returncode == 0, stderr[-3000:]
  # Only process 0 prints and writes logs.
  assert "final: top1=" in outputs[0][0] and "final:" not in outputs[1][0]
  assert "4 devices x 4 x 1" in outputs[0][0]

  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5, atol=1e-6)
  for ema in (False, True):
    _assert_close(checkpoint.load_params(multi, ema=ema)[0],
                  checkpoint.load_params(single, ema=ema)[0], rtol=1e-5, atol=1e-6)
  s_multi = json.load(open(os.path.join(multi, "summary.json")))
  s_single = json.load(open(os.path.join(single, "summary.json")))
  for key in ("top1", "top5", "count"):
    assert s_multi["final"][key] == s_single["final"][key]
  np.testing.assert_allclose(s_multi["final"]["loss"], s_single["final"]["loss"], rtol=1e-5)
  assert s_multi["final"]["count"] == 100  # every example once, over both processes


def _run_until(command, env, marker, sig):
  """Starts ``command``, sends ``sig`` once a stdout line contains ``marker``; returns output."""
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  deadline = time.time() + 240
  for line in proc.stdout:
    lines.append(line)
    if marker in line:
      proc.send_signal(sig)
      break
    assert time.time() < deadline, "".join(lines[-20:])
  rest, _ = proc.communicate(timeout=120)
  return proc.returncode, "".join(lines) + (rest or "")


# Four training processes one after the other: ~1 min on 2 idle cores.
def test_sigterm_and_sigkill_then_resume_match_uninterrupted_run(tmp_path):
  total = 400
  flags = [f"--config.num_train_steps={total}", "--config.checkpoint_every_steps=20",
           "--config.keep_checkpoints=2"]
  env = _env(2)
  straight = str(tmp_path / "straight")
  out = subprocess.run(_command(straight, *flags), env=env, capture_output=True, text=True,
                       timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]

  workdir = str(tmp_path / "interrupted")
  # SIGTERM: saved at the next step boundary, a message, exit code 0.
  rc, text = _run_until(_command(workdir, *flags), env, f"step 30/{total}", signal.SIGTERM)
  assert rc == 0, text[-3000:]
  assert "SIGTERM received: saved checkpoint" in text
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  stopped = ckpt.latest_step()
  ckpt.close()
  assert 30 <= stopped < total and "final:" not in text

  # SIGKILL after the resumed run passed a later checkpoint: nothing is cleaned up.
  rc, text = _run_until(_command(workdir, *flags), env, f"step {stopped + 45}/{total}",
                        signal.SIGKILL)
  assert f"Resumed from checkpoint {stopped}" in text
  assert rc == -signal.SIGKILL, text[-3000:]
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  killed_at = ckpt.latest_step()
  ckpt.close()
  assert stopped < killed_at < total, (stopped, killed_at)

  out = subprocess.run(_command(workdir, *flags), env=env, capture_output=True, text=True,
                       timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Resumed from checkpoint {killed_at}" in out.stdout
  assert out.stdout.strip().splitlines()[-1].startswith("final: top1=")
  for ema in (False, True):
    _assert_close(checkpoint.load_params(workdir, ema=ema)[0],
                  checkpoint.load_params(straight, ema=ema)[0], rtol=1e-6, atol=1e-7)
