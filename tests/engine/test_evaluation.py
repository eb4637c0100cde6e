"""Checkpoint evaluation: exact-once counting, DeepMind-format pickles, orbax raw/EMA, and
clear errors for checkpoints of another variant."""
import json
import pathlib
import sys

import dill
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import default  # noqa: E402
from nfnets_jax.weights import checkpoint  # noqa: E402
from nfnets_jax.weights import deepmind  # noqa: E402
from nfnets_jax.engine import evaluation as ec  # noqa: E402
from nfnets_jax.engine import imagenet_real  # noqa: E402
from nfnets_jax import models  # noqa: E402
from nfnets_jax.data import synthetic as synthetic_data  # noqa: E402

NUM_EVAL = 50


def _config(model="nf_demo_tiny", size=8, **model_kwargs):
  c = default.get_default()
  c.model = model
  c.model_kwargs = default.ml_collections.ConfigDict(model_kwargs)
  c.dataset = "synthetic"
  c.synthetic.num_eval_examples = NUM_EVAL
  c.train_image_size = c.eval_image_size = size
  c.eval_preproc = "none"
  c.normalization = "none"
  return c


def _init(config, num_classes=10):
  def fwd(x):
    return models.create(config.model, num_classes, **dict(config.model_kwargs))(x, False)
  x = jnp.zeros((1, config.eval_image_size, config.eval_image_size, 3))
  params = hk.transform(fwd).init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(np.asarray, params)
  # Spread the logits (the classifier starts at N(0, 0.01)) so that rankings have no near-ties.
  fc = [m for m in params if m.endswith("linear") and "squeeze" not in m][-1]
  params[fc] = dict(params[fc], w=params[fc]["w"] * 300.0)
  return params, hk.transform(fwd)


def _reference(config, params, transformed):
  """top1/top5/loss over all eval examples, computed directly in numpy."""
  batch = next(synthetic_data.eval_iterator(config, per_device_batch=NUM_EVAL, num_devices=1))
  images, labels = batch["images"][0], batch["labels"][0]
  assert batch["mask"].sum() == NUM_EVAL
  logits = np.asarray(transformed.apply(params, None, images)["logits"], np.float64)
  order = np.argsort(-logits, axis=1)
  top1 = np.mean(order[:, 0] == labels)
  top5 = np.mean([labels[i] in order[i, :5] for i in range(NUM_EVAL)])
  logz = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
  loss = np.mean(logz - logits[np.arange(NUM_EVAL), labels])
  return top1, top5, loss


def test_exact_once_with_batch_not_dividing_the_split(tmp_path):
  config = _config()
  params, transformed = _init(config)
  path = str(tmp_path / "tiny.npz")
  deepmind.save_params_npz(params, path, {"model_name": "nf_demo_tiny"})
  top1, top5, loss = _reference(config, params, transformed)
  out = str(tmp_path / "out" / "results.json")
  # 8 devices x 3 per device = 24 per batch: 3 batches, the last one 22 examples short.
  rep8 = ec.evaluate_checkpoint(path, config, batch_size=24, output=out, log=lambda s: None)
  rep1 = ec.evaluate_checkpoint(path, config, batch_size=7, num_devices=1, log=lambda s: None)
  assert rep8["num_devices"] == 8 and rep8["per_device_batch"] == 3
  for rep in (rep8, rep1):
    assert list(rep["results"]) == ["raw"]
    r = rep["results"]["raw"]
    assert r["count"] == NUM_EVAL
    assert r["top1"] == pytest.approx(top1, abs=1e-6)
    assert r["top5"] == pytest.approx(top5, abs=1e-6)
    assert r["loss"] == pytest.approx(loss, rel=1e-4)
  saved = json.load(open(out))
  assert saved["results"]["raw"]["count"] == NUM_EVAL and saved["kind"] == "npz"
  assert saved["split"] == config.eval_split and saved["image_size"] == 8


def test_orbax_checkpoint_reports_raw_and_ema(tmp_path):
  config = _config()
  params, transformed = _init(config)
  ema = jax.tree.map(lambda x: x * 0.5, params)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "work" / "checkpoints"))
  ckpt.save(7, {"params": params, "ema_params": ema, "model_state": {},
                "step": np.int32(7)})
  ckpt.close()
  rep = ec.evaluate_checkpoint(str(tmp_path / "work"), config, batch_size=16,
                               log=lambda s: None)
  assert rep["kind"] == "workdir" and rep["step"] == 7
  assert sorted(rep["results"]) == ["ema", "raw"]
  assert rep["results"]["raw"]["top1"] == pytest.approx(_reference(config, params,
                                                                   transformed)[0])
  assert rep["results"]["ema"]["loss"] == pytest.approx(
      _reference(config, ema, transformed)[2], rel=1e-4)
  only = ec.evaluate_checkpoint(str(tmp_path / "work" / "checkpoints" / "7"), config,
                                batch_size=16, use_ema=True, log=lambda s: None)
  assert list(only["results"]) == ["ema"]
  assert only["results"]["ema"]["loss"] == pytest.approx(rep["results"]["ema"]["loss"])
  # Another model's config: a clear error naming the mismatch.
  wrong = _config(widths=(8, 32), depths=(1, 1), strides=(2, 2), stem_width=8)
  with pytest.raises(deepmind.CheckpointError, match="does not match the model"):
    ec.evaluate_checkpoint(str(tmp_path / "work"), wrong, log=lambda s: None)


TINY_NFNET = dict(width=0.125, group_width=16, grouped_conv_impl="native")


def test_deepmind_format_pickle_loads_and_evaluates(tmp_path):
  config = _config("nfnet_f0", size=32, **TINY_NFNET)
  params, transformed = _init(config)
  assert "NFNet/~/nf_block_3/~/conv1" in params
  path = str(tmp_path / "F0_haiku.npz")
  with open(path, "wb") as f:  # the released files are dill pickles of {module: {name: array}}
    # DeepMind's files name every block (our in-memory stacks are unstacked, as on disk).
    dill.dump({m: dict(d) for m, d in models.unstack_blocks(params).items()}, f)
  # An unknown file is refused before unpickling unless trusted (or its MD5 is given).
  with pytest.raises(deepmind.CheckpointError, match="trust"):
    ec.evaluate_checkpoint(path, config, log=lambda s: None)
  md5 = deepmind.file_md5(path)
  rep = ec.evaluate_checkpoint(path, config, batch_size=16, expected_md5=md5,
                               log=lambda s: None)
  assert rep["kind"] == "deepmind"
  top1, top5, loss = _reference(config, params, transformed)
  r = rep["results"]["raw"]
  assert r["count"] == NUM_EVAL
  assert (r["top1"], r["top5"]) == (pytest.approx(top1), pytest.approx(top5))
  assert r["loss"] == pytest.approx(loss, rel=1e-4)

  # The same file against an F1 config: an error that names the missing blocks.
  f1 = _config("nfnet_f1", size=32, **TINY_NFNET)
  with pytest.raises(deepmind.CheckpointError, match=r"missing parameters: .*nf_block"):
    ec.evaluate_checkpoint(path, f1, trust=True, log=lambda s: None)


def test_bad_inputs_are_clear_errors(tmp_path):
  config = _config()
  with pytest.raises(FileNotFoundError, match="No weights at"):
    ec.evaluate_checkpoint(str(tmp_path / "nope"), config, log=lambda s: None)
  c = ec.eval_config(config, dataset="imagenet_v2")
  assert (c.dataset, c.eval_split, c.train_split) == ("imagenet_v2", "test", "test")
  c = ec.eval_config(config, dataset="imagenet2012_real")
  assert (c.dataset, c.eval_split) == ("imagenet2012_real", "validation")


def test_real_multilabel_scoring_counts_labelled_examples_once():
  """ImageNet-ReaL scoring on 13 hand-made examples, 4 devices x 2 per batch (3 padded)."""
  import tensorflow as tf
  from nfnets_jax.engine import parallel
  k, n = 10, 13
  rng = np.random.default_rng(0)
  preds = rng.integers(0, k, n)
  real = [sorted(set(rng.integers(0, k, rng.integers(0, 4)).tolist())) for _ in range(n)]
  real[0], real[1] = [], [int(preds[1]), int(preds[1])]  # unlabelled; duplicate label
  images = np.zeros((n, 8, 8, 3), np.uint8)
  images[:, 0, 0, 0] = preds * 10  # the fake model reads its prediction from this pixel
  ds = tf.data.Dataset.from_generator(
      lambda: ({"image": images[i], "real_label": np.array(real[i], np.int64)}
               for i in range(n)),
      output_signature={"image": tf.TensorSpec([8, 8, 3], tf.uint8),
                        "real_label": tf.TensorSpec([None], tf.int64)})
  config = _config(size=8)
  batches = list(imagenet_real.real_batches(config, ds, n, per_device_batch=2, num_devices=4,
                                 num_classes=k))
  assert len(batches) == 2 and batches[0]["real"].shape == (4, 2, k)
  assert sum(b["mask"].sum() for b in batches) == n
  np.testing.assert_array_equal(batches[0]["real"][0, 1], np.eye(k)[preds[1]])

  def apply_fn(params, state, x):
    p = jnp.round(x[:, 0, 0, 0] / 10.0)
    return -(jnp.arange(k)[None, :] - p[:, None]) ** 2 - 0.01 * jnp.arange(k)[None, :]

  devices = jax.local_devices()[:4]
  step = parallel.make_eval_step(imagenet_real.make_real_sum_fn(apply_fn), devices=devices)
  rep = parallel.replicate({}, devices)
  got = imagenet_real.real_metrics(ec.sum_over(step, rep, rep, iter(batches), devices))
  labelled = [i for i in range(n) if real[i]]
  top5 = [sorted(range(k), key=lambda c: ((c - preds[i]) ** 2 + 0.01 * c))[:5] for i in range(n)]
  assert got["seen"] == n and got["count"] == len(labelled)
  assert got["top1"] == pytest.approx(np.mean([preds[i] in real[i] for i in labelled]))
  assert got["top5"] == pytest.approx(
      np.mean([bool(set(top5[i]) & set(real[i])) for i in labelled]))


def test_cli_reports_a_missing_checkpoint(tmp_path):
  import subprocess
  root = pathlib.Path(__file__).resolve().parents[2]
  proc = subprocess.run(
      [sys.executable, str(root / "experiments" / "evaluate.py"),
       "--config=" + str(root / "configs" / "fashion_mnist.py"), "--config.dataset=synthetic",
       f"--checkpoint={tmp_path / 'missing.npz'}"],
      capture_output=True, text=True, cwd=root)
  assert proc.returncode == 1
  assert "Error: No weights at" in proc.stderr


def test_eval_sums_are_exact_once_with_masks():
  logits = np.array([[3.0, 1.0, 2.0, 0.0, -1.0, -2.0],
                     [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                     [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
                     [1.0, 1.0, 1.0, 1.0, 1.0, 9.0]], np.float32)
  labels = np.array([0, 0, 2, 5], np.int32)
  mask = np.array([1.0, 1.0, 1.0, 0.0], np.float32)  # the last row is padding
  sum_fn = ec.make_sum_fn(lambda p, s, images: images)
  sums = jax.jit(sum_fn)(None, None, {"images": logits, "labels": labels, "mask": mask})
  # Row 0: rank 0 (top1, top5). Row 1: label logit 0.0 has rank 5 (not top5). Row 2: rank 2.
  assert float(sums["top1"]) == 1.0
  assert float(sums["top5"]) == 2.0
  assert float(sums["count"]) == 3.0
  lse = np.log(np.exp(logits[:3].astype(np.float64)).sum(-1))
  expected = np.sum(lse - logits[np.arange(3), labels[:3]])
  np.testing.assert_allclose(float(sums["loss"]), expected, rtol=1e-6)


def _workdir_trained_at(tmp_path, config, params):
  """A workdir as the engine leaves it: a checkpoint and run.json with the run's eval size."""
  workdir = tmp_path / "work"
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
  ckpt.save(3, {"params": params, "model_state": {}, "step": np.int32(3)})
  ckpt.close()
  (workdir / "run.json").write_text(json.dumps({
      "model": config.model, "model_kwargs": {}, "channels": 3, "num_classes": 10,
      "train_image_size": config.train_image_size, "eval_image_size": config.eval_image_size,
      "eval_preproc": "none"}))
  return str(workdir)


def test_size_note_compares_with_the_run_not_the_registry(tmp_path):
  """nf_demo_tiny's registry test size is 28 px; a run trained and evaluated at 8 px is not
  noted at 8 px, only at a size it was not evaluated at."""
  config = _config(size=8)
  assert models.get_info(config.model).test_image_size != 8
  workdir = _workdir_trained_at(tmp_path, config, _init(config)[0])
  lines = []
  ec.evaluate_checkpoint(workdir, config, batch_size=16, log=lines.append)
  assert not [line for line in lines if line.startswith("note:")], lines
  lines = []
  ec.evaluate_checkpoint(workdir, config, batch_size=16, image_size=16, log=lines.append)
  assert [line for line in lines if line.startswith("note:")] == [
      f"note: evaluating at 16px; the eval recipe of {workdir} uses 8px."]


def test_top5_only_with_more_than_five_classes(tmp_path):
  config = _config()
  config.synthetic.num_classes = 5
  params, _ = _init(config, num_classes=5)
  path = str(tmp_path / "five.npz")
  deepmind.save_params_npz(params, path, {"model_name": "nf_demo_tiny"})
  out = tmp_path / "report.json"
  lines = []
  rep = ec.evaluate_checkpoint(path, config, batch_size=16, output=str(out), log=lines.append)
  assert sorted(rep["results"]["raw"]) == ["count", "loss", "top1"]
  assert "top5" not in json.loads(out.read_text())["results"]["raw"]
  (result,) = [line for line in lines if line.startswith("raw: ")]
  assert "top1=" in result and "top5" not in result
