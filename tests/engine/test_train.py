"""The training engine (``engine/train.py``), in process, on the deterministic synthetic dataset
with a tiny NF model.

Equivalences (same global batch): 1 device vs 8 simulated devices, gradient accumulation 4 x B/4
vs 1 x B; non-finite handling; SIGTERM save-and-resume; bfloat16 compute with float32 state,
against float32 training; the console lines; the input transform run.json records. Real
processes: test_train_processes.py; mock ImageNet end to end: test_train_e2e.py; resuming a
workdir: test_resume.py.
"""
import json
import os
import pathlib
import signal
import sys
import types

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import synthetic  # noqa: E402
from nfnets_jax import pretrained
from nfnets_jax.weights import checkpoint
from nfnets_jax.engine import steps
from nfnets_jax.data import synthetic as synthetic_data
from nfnets_jax.engine import train


def tiny_config(**overrides):
  c = synthetic.get_config("tiny")
  c.update_from_flattened_dict(overrides)  # "optimizer.freeze" -> c.optimizer.freeze
  return c


def train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r["loss"] for r in records if r["split"] == "train"]


def final_params(workdir, ema=False):
  params, _ = checkpoint.load_params(workdir, ema=ema)
  return params


def assert_trees_close(a, b, rtol, atol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_one_device_vs_eight_devices_and_accumulation(tmp_path):
  # Same global batch of 16 laid out three ways: 1 device x 16, 8 devices x 2, and
  # 1 device x 4 micro-batches x 4 (accumulation). Tolerance: float32 reduction order only.
  runs = {
      "one": dict(num_devices=1),
      "eight": dict(num_devices=8),
      "accum": dict(num_devices=1, per_device_batch_size=4),
  }
  results = {}
  for name, overrides in runs.items():
    workdir = str(tmp_path / name)
    summary = train.train_and_evaluate(tiny_config(**overrides), workdir)
    results[name] = (train_losses(workdir), final_params(workdir),
                     final_params(workdir, ema=True), summary)
  assert results["one"][3]["num_devices"] == 1 and results["eight"][3]["num_devices"] == 8
  assert results["accum"][3]["accumulation_steps"] == 4
  base_losses, base_params, base_ema, _ = results["one"]
  assert len(base_losses) == 3
  for name in ("eight", "accum"):
    losses, params, ema, _ = results[name]
    np.testing.assert_allclose(losses, base_losses, rtol=1e-5, atol=1e-6)
    assert_trees_close(params, base_params, rtol=1e-4, atol=1e-6)
    assert_trees_close(ema, base_ema, rtol=1e-4, atol=1e-6)
  assert base_losses[0] != base_losses[-1]  # training moved, so equality is not trivial


def test_nonfinite_stop_keeps_last_checkpoint_finite(tmp_path):
  workdir = str(tmp_path / "nan_stop")
  config = tiny_config(num_train_steps=8, checkpoint_every_steps=2, debug_nan_at_step=5)
  with pytest.raises(train.NonFiniteLossError, match="at step 5"):
    train.train_and_evaluate(config, workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  steps = ckpt.all_steps()
  ckpt.close()
  # Checkpoints 2 and 4 were saved before the bad update (index 5); nothing after it.
  assert sorted(steps) == [2, 4]
  params = final_params(workdir)
  assert checkpoint.all_finite(params)
  assert not os.path.exists(os.path.join(workdir, "summary.json"))


def test_nonfinite_skip_drops_one_update(tmp_path):
  workdir = str(tmp_path / "nan_skip")
  config = tiny_config(num_train_steps=4, debug_nan_at_step=1, nonfinite="skip")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["nonfinite_steps"] == 1
  assert summary["steps"] == 4
  losses = train_losses(workdir)
  # metrics.jsonl holds a non-finite value as null (reporting.json_value).
  assert losses[1] is None and all(np.isfinite(l) for i, l in enumerate(losses) if i != 1)
  assert checkpoint.all_finite(final_params(workdir))
  assert 0.0 <= summary["final"]["top1"] <= 1.0


def test_sigterm_saves_and_resumes_to_the_same_result(tmp_path, monkeypatch):
  config = tiny_config(num_train_steps=6, checkpoint_every_steps=100)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight)

  real_iterator = synthetic_data.train_iterator

  def iterator_that_gets_sigterm(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i == 3 and kwargs.get("start_step", 0) == 0:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(synthetic_data, "train_iterator", iterator_that_gets_sigterm)
  workdir = str(tmp_path / "preempted")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["preempted"]
  stopped_at = summary["steps"]
  assert 0 < stopped_at < 6
  assert "final" not in summary
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == stopped_at
  ckpt.close()
  # The handler is restored afterwards (pytest would die on a stray SIGTERM otherwise).
  assert signal.getsignal(signal.SIGTERM) is not None

  resumed = train.train_and_evaluate(config, workdir)
  assert resumed["start_step"] == stopped_at and resumed["steps"] == 6
  assert_trees_close(final_params(workdir), final_params(straight), rtol=1e-6, atol=1e-7)
  assert_trees_close(final_params(workdir, ema=True), final_params(straight, ema=True),
                     rtol=1e-6, atol=1e-7)


def initial_params(config, workdir):
  """The step-0 parameters of ``config`` (the same seed gives the same ones in every run)."""
  from nfnets_jax.engine import validation
  setup = validation.validate_config(config)
  run = train.build_run(config, workdir, setup)
  try:
    return train.initial_state(run.forward, run.tx, run.config, setup.image_shape)["params"]
  finally:
    run.ckpt.close()
    run.writer.close()


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32(tmp_path):
  runs = {}
  for dtype in ("bfloat16", "float32"):
    workdir = str(tmp_path / dtype)
    summary = train.train_and_evaluate(tiny_config(compute_dtype=dtype, num_train_steps=2),
                                       workdir)
    runs[dtype] = (train_losses(workdir), final_params(workdir), summary)
  losses16, params16, summary16 = runs["bfloat16"]
  losses32, params32, _ = runs["float32"]
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params16))
  assert all(np.isfinite(l) for l in losses16)
  assert summary16["final"]["count"] == 100
  # Against float32 training of the same config and seed. Measured (CPU, 2 steps): train losses
  # within 4e-5 relative; the parameter updates (final - initial) within 1.2% of the float32
  # updates' global norm and 17% of each tensor's own. Checked with margins of 4-12x: losses
  # at 5e-4, the global update at 5%, each tensor at 50% (tensors that moved).
  assert losses16 != losses32  # the bfloat16 run really computed in bfloat16
  np.testing.assert_allclose(losses16, losses32, rtol=5e-4)
  start = initial_params(tiny_config(num_train_steps=2), str(tmp_path / "init"))
  err2 = norm2 = 0.0
  for (path, p16), p32, p0 in zip(jax.tree_util.tree_leaves_with_path(params16),
                                  jax.tree.leaves(params32), jax.tree.leaves(start)):
    d16, d32 = (np.asarray(p, np.float64) - np.asarray(p0, np.float64) for p in (p16, p32))
    err, norm = np.linalg.norm(d16 - d32), np.linalg.norm(d32)
    err2, norm2 = err2 + err ** 2, norm2 + norm ** 2
    assert err <= 0.5 * norm, (jax.tree_util.keystr(path), err / max(norm, 1e-300))
  assert norm2 > 0 and np.sqrt(err2 / norm2) <= 0.05, np.sqrt(err2 / norm2)


def test_eval_flip_averages_the_logits_of_the_left_right_mirror():
  class FirstRow:  # a "model" whose logits are the first image row: not mirror-symmetric
    def apply(self, params, state, rng, images, is_training):
      del params, rng, is_training
      return {"logits": images[:, 0, :, 0]}, state

  images = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1) ** 2
  plain = steps.make_eval_apply(FirstRow())({}, {}, images)
  flipped = steps.make_eval_apply(FirstRow(), flip=True)({}, {}, images)
  np.testing.assert_array_equal(plain, images[:, 0, :, 0])
  np.testing.assert_array_equal(flipped, (images[:, 0, :, 0] + images[:, 0, ::-1, 0]) / 2)
  assert synthetic.get_config("tiny").eval_flip is False  # off unless a config asks


def test_console_names_the_compile_and_shows_top5_only_above_five_classes(tmp_path, capsys):
  for classes, top5 in ((5, False), (10, True)):
    capsys.readouterr()
    train.train_and_evaluate(tiny_config(num_devices=8, **{"synthetic.num_classes": classes}),
                             str(tmp_path / str(classes)))
    lines = capsys.readouterr().out.splitlines()
    compiling = lines.index("Compiling the train step (nf_demo_tiny, 8 devices x 2, float32)...")
    assert lines[compiling + 1].startswith("Compiled the train step in ")
    assert lines[compiling + 2].startswith("step 1/3 ")
    finals = [l for l in lines if l.startswith(("eval @", "final"))]
    assert len(finals) == 3 and all(("top5=" in l) == top5 for l in finals), finals


def test_run_file_records_the_input_transform_and_predict_reproduces_it(tmp_path):
  config = tiny_config(num_devices=1)
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, pretrained.RUN_FILE)) as f:
    record = json.load(f)
  # Synthetic images are made as model inputs: no normalization, resize or crop.
  assert (record["mean"], record["std"]) == ([0.0], [1 / 255])
  assert (record["eval_preproc"], record["eval_image_size"], record["eval_crop_pct"]) == (
      "none", 8, 1.0)
  model = pretrained.load(workdir)  # EMA parameters, as in final_ema
  batch = next(synthetic_data.eval_iterator(config, per_device_batch=100, num_devices=1))
  images, labels = batch["images"][0], batch["labels"][0]
  inputs = model.preprocess(list(images))
  np.testing.assert_array_equal(inputs, images)
  top1 = np.mean(np.argmax(model.logits(inputs), -1) == labels)
  assert top1 == pytest.approx(summary["final_ema"]["top1"])


@pytest.mark.parametrize("normalization,mean,std", [
    ("dataset", [72.94035223214286 / 255], [90.02118235130526 / 255]),
    ("none", [0.0], [1 / 255])])
def test_run_file_records_the_normalization_of_a_tfds_dataset(tmp_path, normalization, mean,
                                                                std):
  config = tiny_config(dataset="fashion_mnist", normalization=normalization)
  setup = types.SimpleNamespace(image_shape=(8, 8, 1), num_classes=10, class_names=None)
  train.write_run_file(train.Run(config, setup, str(tmp_path), *[None] * 8))
  with open(tmp_path / pretrained.RUN_FILE) as f:
    record = json.load(f)
  assert record["mean"] == pytest.approx(mean) and record["std"] == pytest.approx(std)
  assert record["eval_preproc"] == "resize_crop_32"


def test_profile_steps_writes_a_trace_of_those_steps(tmp_path, capsys):
  workdir = tmp_path / "profiled"
  train.train_and_evaluate(tiny_config(profile_steps=(1, 2)), str(workdir))
  traces = list((workdir / train.PROFILE_DIR).rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  # The train step is annotated: its name is in the trace.
  assert b"train_step" in traces[0].read_bytes()
  assert "Wrote a profile of train steps 1..1" in capsys.readouterr().out
