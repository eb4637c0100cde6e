"""The clipping x batch-size sweep: grid, lr scaling, resume/skip, divergence, collection.

Most tests inject a fake run function (fast, exact); one end-to-end test runs the real
``train_and_evaluate`` on the synthetic dataset with a tiny model.
"""
import csv
import json
import math
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import default  # noqa: E402
from nfnets_jax.errors import SweepNotFoundError  # noqa: E402
from nfnets_jax.research import sweep  # noqa: E402


def _base_config():
  c = default.get_default()
  c.model = "nf_demo_tiny"
  c.dataset = "synthetic"
  c.train_image_size = c.eval_image_size = 8
  c.batch_size = 32
  c.optimizer.base_lr = 0.2
  c.optimizer.lr_scale_batch = 64
  return c


def test_parse_and_grid_expansion():
  clips = sweep.parse_clipping("0.01, 0.04,none,0.01")
  assert clips == [0.01, 0.04, None]
  assert sweep.parse_batch_sizes("16,64") == [16, 64]
  with pytest.raises(ValueError, match="Bad clipping value 'abc'"):
    sweep.parse_clipping("0.01,abc")
  with pytest.raises(ValueError, match="positive"):
    sweep.parse_clipping("-0.1")
  with pytest.raises(ValueError, match="Unknown baseline 'bn'"):
    sweep.parse_baselines("bn")
  points = sweep.expand_grid(clips, [16, 64], sweep.parse_baselines("none,global_norm,bn_resnet"))
  names = [p.name for p in points]
  # 'none' appears once per batch size although requested twice (grid and baseline).
  assert names == [
      "bs16_clip0.01", "bs16_clip0.04", "bs16_clipnone", "bs16_globalnorm", "bs16_bnresnet",
      "bs64_clip0.01", "bs64_clip0.04", "bs64_clipnone", "bs64_globalnorm", "bs64_bnresnet"]
  assert [p.index for p in points] == list(range(10))
  assert [p.kind for p in points[:5]] == ["agc", "agc", "none", "global_norm", "bn_resnet"]


def test_point_config_lr_scaling_and_optimizers():
  base = _base_config()
  points = sweep.expand_grid([0.02, None], [16, 128], ["global_norm", "bn_resnet"])
  cfgs = [sweep.point_config(base, p, bn_model="resnet26_bn", bn_model_kwargs={"width": 0.25})
          for p in points]
  assert [c.batch_size for c in cfgs] == [16] * 4 + [128] * 4
  # lr = base_lr * batch / lr_scale_batch = 0.2 * B / 64.
  assert [sweep.scaled_lr(c) for c in cfgs] == pytest.approx([0.05] * 4 + [0.4] * 4)
  assert [c.optimizer.name for c in cfgs[:4]] == ["sgd_agc", "sgd", "sgd_global_clip", "sgd"]
  assert cfgs[0].optimizer.clipping == 0.02
  assert cfgs[3].model == "resnet26_bn" and dict(cfgs[3].model_kwargs) == {"width": 0.25}
  assert cfgs[0].model == "nf_demo_tiny"
  assert base.batch_size == 32 and base.optimizer.name == "sgd_agc"  # base untouched
  with pytest.raises(ValueError, match="--bn_model"):
    sweep.point_config(base, points[3])
  # No scaling rule: the base lr as is.
  base.optimizer.lr_scale_batch = None
  assert sweep.scaled_lr(sweep.point_config(base, points[4])) == 0.2


class FakeRunner:
  """Writes what the real runner writes; diverges for clipping 'none' at batch 64."""

  def __init__(self, fail_names=()):
    self.calls = []
    self.fail_names = set(fail_names)

  def __call__(self, config, workdir):
    name = os.path.basename(workdir)
    self.calls.append(name)
    if name in self.fail_names:
      raise RuntimeError("disk full")
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      for step, frac in ((10, 0.2), (20, 0.4)):
        row = {"step": step, "split": "train", "loss": 1.0 / step}
        if config.optimizer.name == "sgd_agc":
          row["agc/frac_clipped"] = frac * 0.01 / config.optimizer.clipping
        f.write(json.dumps(row) + "\n")
    if config.optimizer.name == "sgd" and config.batch_size == 64:
      from nfnets_jax.engine import train  # the runner's own exception type
      raise train.NonFiniteLossError("Non-finite loss or gradient at step 7 (0-based update "
                                     "index); the run stopped without applying it.")
    clip = config.optimizer.clipping if config.optimizer.name == "sgd_agc" else 0.0
    top1 = 0.5 + config.batch_size / 1000 + clip
    summary = {"steps": 20, "preempted": False,
               "final": {"top1": top1, "top5": 0.99, "loss": 0.3, "count": 100},
               "config": config.to_dict()}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
    return summary


def test_run_skip_resume_diverge_and_only(tmp_path):
  base = _base_config()
  points = sweep.expand_grid([0.01, 0.04, None], [16, 64])
  d = str(tmp_path / "sweep")
  runner = FakeRunner(fail_names={"bs16_clipnone"})
  logs = []
  sweep.run_sweep(base, points, d, runner, log=logs.append)
  assert runner.calls == [p.name for p in points]
  state = json.load(open(os.path.join(d, "bs64_clipnone", sweep.POINT_FILE)))
  assert state["status"] == "diverged" and state["diverged_step"] == 7
  assert state["lr"] == pytest.approx(0.2 * 64 / 64)
  state = json.load(open(os.path.join(d, "bs16_clip0.04", sweep.POINT_FILE)))
  assert state["status"] == "complete" and state["lr"] == pytest.approx(0.05)
  assert state["summary"]["final"]["top1"] == pytest.approx(0.5 + 0.016 + 0.04)
  failed = json.load(open(os.path.join(d, "bs16_clipnone", sweep.POINT_FILE)))
  assert failed["status"] == "failed" and failed["attempts"] == 1
  assert "disk full" in failed["error"]
  assert any("[6/6]" in line and "ETA" in line for line in logs)

  # Second invocation: only the failed point is retried; complete and diverged are skipped.
  runner.calls.clear()
  sweep.run_sweep(base, points, d, runner, log=logs.append)
  assert runner.calls == ["bs16_clipnone"]
  # Third: it failed max_attempts=2 times, so it is not retried forever.
  runner.calls.clear()
  sweep.run_sweep(base, points, d, runner, log=logs.append)
  assert runner.calls == []

  # --only=K runs exactly that point (here after deleting its state: an unfinished point).
  os.remove(os.path.join(d, "bs64_clip0.04", sweep.POINT_FILE))
  runner.calls.clear()
  sweep.run_sweep(base, points, d, runner, only=4, log=logs.append)
  assert runner.calls == ["bs64_clip0.04"]
  with pytest.raises(ValueError, match="out of range"):
    sweep.run_sweep(base, points, d, runner, only=6)


def test_interrupted_point_is_resumed(tmp_path):
  base = _base_config()
  points = sweep.expand_grid([0.01], [16, 32])
  d = str(tmp_path)
  calls = []

  def preempted_once(config, workdir):
    calls.append(os.path.basename(workdir))
    if len(calls) == 1:
      return {"steps": 3, "preempted": True}
    return {"steps": 10, "preempted": False, "final": {"top1": 0.7, "top5": 1.0, "loss": 0.1}}

  sweep.run_sweep(base, points, d, preempted_once, log=lambda s: None)
  assert calls == ["bs16_clip0.01"]  # the sweep stops when a run was preempted
  assert sweep.point_state(d, points[0])["status"] == "interrupted"
  sweep.run_sweep(base, points, d, preempted_once, log=lambda s: None)
  assert calls == ["bs16_clip0.01", "bs16_clip0.01", "bs32_clip0.01"]
  state = sweep.point_state(d, points[0])
  assert state["status"] == "complete" and state["attempts"] == 2


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_collect_writes_csv_markdown_and_plots(tmp_path):
  base = _base_config()
  points = sweep.expand_grid([0.01, 0.04, None], [16, 64], ["global_norm"])
  d = str(tmp_path)
  sweep.run_sweep(base, points, d, FakeRunner(), log=lambda s: None)
  paths = sweep.collect(d, log=lambda s: None)
  for key in ("accuracy_plot", "heatmap", "clip_fraction_plot"):
    assert _is_png(paths[key]), key
  rows = list(csv.DictReader(open(paths["csv"])))
  assert [r["name"] for r in rows] == [
      "bs16_clip0.01", "bs16_clip0.04", "bs16_clipnone", "bs16_globalnorm",
      "bs64_clip0.01", "bs64_clip0.04", "bs64_clipnone", "bs64_globalnorm"]
  by = {r["name"]: r for r in rows}
  assert float(by["bs16_clip0.04"]["top1"]) == pytest.approx(0.556)
  assert float(by["bs16_clip0.04"]["lr"]) == pytest.approx(0.05)
  assert by["bs64_clipnone"]["status"] == "diverged"
  assert by["bs64_clipnone"]["diverged_step"] == "7" and by["bs64_clipnone"]["top1"] == ""
  # Mean of the logged fractions (0.2, 0.4) * 0.01 / clipping.
  assert float(by["bs16_clip0.01"]["clip_fraction"]) == pytest.approx(0.3)
  assert float(by["bs16_clip0.04"]["clip_fraction"]) == pytest.approx(0.075)
  assert by["bs16_clipnone"]["clip_fraction"] == ""
  assert float(by["bs16_clip0.01"]["train_loss"]) == pytest.approx(0.05)
  md = open(paths["markdown"]).read()
  assert "| batch \\ clipping | 0.01 | 0.04 | none | global_norm |" in md
  assert "| 16 | 52.60 | 55.60 | 51.60 | 51.60 |" in md
  assert "| 64 | 57.40 | 60.40 | diverged (step 7) | 56.40 |" in md
  assert sweep.best_threshold_per_batch(sweep.collect_rows(d)) == {16: 0.04, 64: 0.04}


def test_collect_empty_dir_is_a_clear_error(tmp_path):
  with pytest.raises(SweepNotFoundError, match="run the sweep first"):
    sweep.collect(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"\(no such directory\)"):
    sweep.collect(str(tmp_path / "nope"))


def test_non_finite_losses_are_null_in_metrics_and_nan_in_the_table(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 1, "split": "train", "loss": 2.0}) + "\n")
    f.write(json.dumps({"step": 2, "split": "train", "loss": None}) + "\n")
  assert math.isnan(sweep.last_train_loss(str(tmp_path)))


def _tiny_real_config():
  base = _base_config()
  base.num_devices = 1
  base.compute_dtype = "float32"
  base.num_train_steps = 6
  base.log_every_steps = 3
  base.checkpoint_every_steps = 100
  base.eval_batch_size = 50
  base.ema_decay = None
  base.augment.randaugment_layers = 0
  base.augment.mixup_alpha = 0.0
  base.augment.cutmix = False
  base.augment.flip = False
  base.augment.pad = 0
  base.train_preproc = "none"
  base.eval_preproc = "none"
  base.normalization = "none"
  base.synthetic.num_train_examples = 64
  base.synthetic.num_eval_examples = 50
  return base


@pytest.mark.slow
def test_end_to_end_with_real_runner(tmp_path):
  """Two real tiny runs (AGC and no clipping) collected into rows."""
  from nfnets_jax.engine import train
  base = _tiny_real_config()
  d = str(tmp_path)
  points = sweep.expand_grid([0.05, None], [16])
  sweep.run_sweep(base, points, d, train.train_and_evaluate, log=lambda s: None)
  rows = {r["name"]: r for r in sweep.collect_rows(d)}
  assert rows["bs16_clip0.05"]["status"] == "complete"
  assert rows["bs16_clipnone"]["status"] == "complete"
  assert 0.0 <= rows["bs16_clip0.05"]["top1"] <= 1.0
  assert rows["bs16_clip0.05"]["clip_fraction"] is not None
  assert rows["bs16_clipnone"]["clip_fraction"] is None
  assert os.path.exists(os.path.join(d, "bs16_clip0.05", "summary.json"))
  assert _is_png(sweep.collect(d, log=lambda s: None)["heatmap"])


def test_real_runner_divergence_is_recorded_once(tmp_path):
  """A NaN injected at step 2 by the runner's test hook: the point is marked diverged."""
  from nfnets_jax.engine import train
  base = _tiny_real_config()
  base.debug_nan_at_step = 2
  d2 = str(tmp_path / "div")
  states = sweep.run_sweep(base, sweep.expand_grid([0.05], [16]), d2, train.train_and_evaluate,
                           log=lambda s: None)
  assert states[0]["status"] == "diverged" and states[0]["diverged_step"] == 2
  calls = []
  sweep.run_sweep(base, sweep.expand_grid([0.05], [16]), d2,
                  lambda c, w: calls.append(w), log=lambda s: None)
  assert calls == []  # never retried


def test_cli_lists_the_default_demo_grid(tmp_path):
  import subprocess
  root = pathlib.Path(__file__).resolve().parents[2]
  out = subprocess.run(
      [sys.executable, str(root / "scripts" / "sweep_clipping.py"),
       "--config=" + str(root / "configs" / "fashion_mnist_sweep.py"),
       f"--workdir={tmp_path}", "--list"],
      capture_output=True, text=True, check=True, cwd=root).stdout.strip().splitlines()
  assert len(out) == 15
  assert out[0].split()[:2] == ["0", "bs64_clip0.01"]
  assert out[4].split()[1] == "bs64_clipnone" and "sgd " in out[4]
  # lr = 0.4 * B / 256.
  assert [line.split()[6] for line in out[::5]] == ["0.1", "0.4", "1.6"]
