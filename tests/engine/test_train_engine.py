"""The training engine, in process, on the deterministic synthetic dataset with a tiny NF model.

Equivalences (same global batch): 1 device vs 8 simulated devices, gradient accumulation 4 x B/4
vs 1 x B; non-finite handling; SIGTERM save-and-resume; bfloat16 compute with float32 state;
exact-once evaluation sums.
"""
import json
import os
import pathlib
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import synthetic  # noqa: E402
from nfnets_jax.engine import checkpoint
from nfnets_jax.engine import evaluation
from nfnets_jax.engine import steps
from nfnets_jax.data import synthetic as synthetic_data
from nfnets_jax.engine import train


def tiny_config(**overrides):
  c = synthetic.get_config("tiny")
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
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
  assert losses[1] == "nan" and all(np.isfinite(l) for i, l in enumerate(losses) if i != 1)
  assert checkpoint.all_finite(final_params(workdir))
  assert 0.0 <= summary["final"]["top1"] <= 1.0


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


def test_bfloat16_compute_keeps_float32_state(tmp_path):
  workdir = str(tmp_path / "bf16")
  summary = train.train_and_evaluate(tiny_config(compute_dtype="bfloat16", num_train_steps=2),
                                     workdir)
  params = final_params(workdir)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  assert all(np.isfinite(l) for l in train_losses(workdir))
  assert summary["final"]["count"] == 100


def test_eval_sums_are_exact_once_with_masks():
  logits = np.array([[3.0, 1.0, 2.0, 0.0, -1.0, -2.0],
                     [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                     [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
                     [1.0, 1.0, 1.0, 1.0, 1.0, 9.0]], np.float32)
  labels = np.array([0, 0, 2, 5], np.int32)
  mask = np.array([1.0, 1.0, 1.0, 0.0], np.float32)  # the last row is padding
  sum_fn = evaluation.make_sum_fn(lambda p, s, images: images)
  sums = jax.jit(sum_fn)(None, None, {"images": logits, "labels": labels, "mask": mask})
  # Row 0: rank 0 (top1, top5). Row 1: label logit 0.0 has rank 5 (not top5). Row 2: rank 2.
  assert float(sums["top1"]) == 1.0
  assert float(sums["top5"]) == 2.0
  assert float(sums["count"]) == 3.0
  lse = np.log(np.exp(logits[:3].astype(np.float64)).sum(-1))
  expected = np.sum(lse - logits[np.arange(3), labels[:3]])
  np.testing.assert_allclose(float(sums["loss"]), expected, rtol=1e-6)


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


def test_synthetic_global_batch_does_not_depend_on_layout():
  c = tiny_config()
  one = next(synthetic_data.train_iterator(c, per_device_batch=16, num_devices=1,
                                           process_index=0, process_count=1))
  parts = [next(synthetic_data.train_iterator(c, per_device_batch=2, num_devices=4,
                                              process_index=p, process_count=2))
           for p in range(2)]
  merged = np.concatenate([p["images"].reshape((8,) + p["images"].shape[2:]) for p in parts])
  np.testing.assert_array_equal(merged, one["images"][0])
  # Resuming at step k gives the stream from 0 without its first k batches.
  it = synthetic_data.train_iterator(c, per_device_batch=16, num_devices=1)
  next(it)
  second = next(it)
  resumed = next(synthetic_data.train_iterator(c, per_device_batch=16, num_devices=1,
                                               start_step=1))
  np.testing.assert_array_equal(second["images"], resumed["images"])


def test_console_line_and_duration_format():
  import io
  from nfnets_jax.engine import reporting
  assert reporting.format_duration(3725) == "1h02m05s"
  assert reporting.format_duration(65) == "1m05s"
  assert reporting.format_duration(9.4) == "9s"
  stream = io.StringIO()
  console = reporting.Console(total_steps=100, batch_size=50, enabled=True, stream=stream)
  console.log_train(40, {"loss": 0.51234, "top1": 0.8, "learning_rate": 0.1, "grad_norm": 1.5,
                         "agc/frac_clipped": 0.125, "agc/max_ratio": 3.0}, images_per_sec=100.0)
  # 60 steps left x 50 images / 100 images/s = 30 s.
  assert stream.getvalue() == ("step 40/100 | loss 0.5123 | top1 0.800 | lr 0.1 | gnorm 1.5 | "
                               "clipped 12.5% (max ratio 3) | 100 img/s | ETA 30s\n")
  silent = io.StringIO()
  reporting.Console(10, 1, enabled=False, stream=silent).print("x")
  assert silent.getvalue() == ""
