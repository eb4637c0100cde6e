"""``scripts/gpu_check.sh`` runs end to end (GPU_CHECK_SMOKE=1: a tiny model on the CPU), so the
one prepared GPU run does not fail on a typo the day a GPU is there."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_result(tmp_path):
  env = dict(os.environ, GPU_CHECK_SMOKE="1", PYTHON=sys.executable,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  engine = json.loads((tmp_path / "engine.json").read_text())
  assert [r["parallel"] for r in engine["throughput"]] == ["pmap", "mesh"]
  assert all(r["images_per_s"] > 0 for r in engine["throughput"])
  assert json.loads((tmp_path / "f7_memory.json").read_text())["memory"]
  assert json.loads((tmp_path / "eval.json").read_text())["results"]
