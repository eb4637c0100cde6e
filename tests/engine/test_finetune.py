"""Fine-tuning (config.init_from): exact step-0 parameters, head re-initialisation, freezing,
resume, and clear errors for incompatible sources."""
import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import synthetic  # noqa: E402
from nfnets_jax import pretrained  # noqa: E402
from nfnets_jax.engine import finetune  # noqa: E402
from nfnets_jax.engine import train  # noqa: E402
from nfnets_jax.engine import validation  # noqa: E402
from nfnets_jax.errors import ConfigError  # noqa: E402

HEAD = "NFDemo/~/linear"


@pytest.fixture(scope="module")
def source_workdir(tmp_path_factory):
  """A tiny trained workdir (10 classes, 1 channel, 8 px) to start from."""
  workdir = tmp_path_factory.mktemp("source")
  c = synthetic.get_config("tiny")
  c.num_devices = 1
  train.train_and_evaluate(c, str(workdir))
  return str(workdir)


def _finetune_config(source, num_classes=4, steps=2, **overrides):
  c = synthetic.get_config("tiny")
  c.num_devices = 1
  c.init_from = source
  c.model = ""
  c.train_image_size = 0
  c.eval_image_size = 0
  c.synthetic.num_classes = num_classes
  c.num_train_steps = steps
  c.update_from_flattened_dict(overrides)  # "optimizer.freeze" -> c.optimizer.freeze
  return c


def _step0_state(config, workdir):
  config, source = finetune.resolve_config(config)
  setup = validation.validate_config(config)
  run = train.build_run(config, str(workdir), setup)
  try:
    return train.restore_or_init(run, source), source, config
  finally:
    run.ckpt.close()
    run.writer.close()


def _assert_equal_except(params, source_params, skip=()):
  for module, values in source_params.items():
    if module in skip:
      continue
    for name, value in values.items():
      np.testing.assert_array_equal(np.asarray(params[module][name]), np.asarray(value),
                                    err_msg=f"{module}/{name}")


def test_step0_params_equal_the_source_except_a_new_head(source_workdir, tmp_path):
  state, source, config = _step0_state(_finetune_config(source_workdir, num_classes=4), tmp_path)
  assert config.model == "nf_demo_tiny" and config.train_image_size == 8
  assert source.ema and source.num_classes == 10
  _assert_equal_except(state["params"], source.params, skip=(HEAD,))
  assert state["params"][HEAD]["w"].shape == (source.params[HEAD]["w"].shape[0], 4)
  assert int(state["step"]) == 0
  # EMA starts at the loaded params; momentum starts at zero.
  _assert_equal_except(state["ema_params"], state["params"])
  traces = [x for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) >= 1]
  assert traces and all(not np.any(t) for t in traces)


def test_same_class_count_loads_the_head_too_unless_reinit(source_workdir, tmp_path):
  state, source, _ = _step0_state(_finetune_config(source_workdir, num_classes=10), tmp_path / "a")
  _assert_equal_except(state["params"], source.params)
  state, source, _ = _step0_state(
      _finetune_config(source_workdir, num_classes=10, reinit_head=True), tmp_path / "b")
  _assert_equal_except(state["params"], source.params, skip=(HEAD,))
  assert not np.array_equal(state["params"][HEAD]["w"], source.params[HEAD]["w"])


def _assert_head_moved(params, start):
  """Every tensor of the classifier changed from its step-0 value (``start``)."""
  for name, value in start[HEAD].items():
    moved = np.max(np.abs(np.asarray(params[HEAD][name], np.float64) -
                          np.asarray(value, np.float64)))
    assert moved > 0, f"{HEAD}/{name} did not move from its step-0 value"


def test_linear_probe_trains_only_the_head_and_resumes(source_workdir, tmp_path):
  probe = "^(?!NFDemo/~/linear/)"
  c = _finetune_config(source_workdir, num_classes=4, steps=3, **{"optimizer.freeze": probe})
  start, _, _ = _step0_state(c, tmp_path / "step0")
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["steps"] == 3
  tuned = pretrained.load(str(tmp_path / "run"), ema=False)
  source = pretrained.load(source_workdir)
  _assert_equal_except(tuned.params, source.params, skip=(HEAD,))
  _assert_head_moved(tuned.params, start["params"])
  assert tuned.num_classes == 4 and tuned.step == 3
  # A rerun resumes from step 3 (init_from only decides step 0).
  c.eval_on_finished = True
  again = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert again["start_step"] == 3 and again["steps"] == 3


def test_body_lr_mult_zero_equals_freezing_the_body(source_workdir, tmp_path):
  c = _finetune_config(source_workdir, num_classes=4, steps=2, **{"optimizer.body_lr_mult": 0.0})
  start, _, _ = _step0_state(c, tmp_path / "step0")
  train.train_and_evaluate(c, str(tmp_path / "run"))
  tuned = pretrained.load(str(tmp_path / "run"), ema=False)
  _assert_equal_except(tuned.params, pretrained.load(source_workdir).params, skip=(HEAD,))
  _assert_head_moved(tuned.params, start["params"])


def test_body_lr_mult_scales_the_body_update_and_not_the_head(source_workdir, tmp_path):
  """One step from the same start with body_lr_mult m and 1: the multiplier scales the final
  update of every body tensor (after AGC, decay, momentum and the learning rate), so on step 1
  body update(m) = m * body update(1) and head update(m) = head update(1), up to float32
  rounding of ``p + update`` (~0.5 ulp of |p| + |update| per run). Measured: at most
  6e-8 * (|p| + |update|) per element, checked at 4e-7 (~7x); the ratio <d_m, d_1> / <d_1, d_1>
  over the body within 4e-4 * m of m, checked at 1e-2 * m (~25x)."""
  mult = 0.1
  start, _, _ = _step0_state(_finetune_config(source_workdir, num_classes=4, steps=1),
                             tmp_path / "step0")
  start = start["params"]
  deltas = {}
  for m in (1.0, mult):
    c = _finetune_config(source_workdir, num_classes=4, steps=1, **{"optimizer.body_lr_mult": m})
    train.train_and_evaluate(c, str(tmp_path / f"mult_{m}"))
    params = pretrained.load(str(tmp_path / f"mult_{m}"), ema=False).params
    deltas[m] = {(module, name): np.asarray(params[module][name], np.float64) -
                 np.asarray(value, np.float64)
                 for module, values in start.items() for name, value in values.items()}
  body = [k for k in deltas[1.0] if k[0] != HEAD]
  head = [k for k in deltas[1.0] if k[0] == HEAD]
  assert body and head
  dot = lambda a, b: sum(float(np.sum(a[k] * b[k])) for k in body)
  moved_full, moved = dot(deltas[1.0], deltas[1.0]), dot(deltas[mult], deltas[mult])
  assert 0 < moved < moved_full, (moved, moved_full)  # the body moved, but less
  assert dot(deltas[mult], deltas[1.0]) / moved_full == pytest.approx(mult, rel=1e-2)
  for key in body + head:
    expected = (mult if key in body else 1.0) * deltas[1.0][key]
    scale = np.abs(np.asarray(start[key[0]][key[1]], np.float64)) + np.abs(deltas[1.0][key])
    err = np.abs(deltas[mult][key] - expected)
    assert np.all(err <= 4e-7 * scale), ("/".join(key), float(np.max(err / scale)))
  for key in head:
    assert np.max(np.abs(deltas[mult][key])) > 0, key


def test_incompatible_sources_are_clear_errors(source_workdir, tmp_path):
  with pytest.raises(ConfigError, match="holds a 'nf_demo_tiny'"):
    finetune.resolve_config(_finetune_config(source_workdir, model="nf_demo"))
  with pytest.raises(ConfigError, match="takes 1-channel images"):
    finetune.resolve_config(_finetune_config(source_workdir, image_channels=3))
  with pytest.raises(ConfigError, match="init_from=.*No weights at"):
    finetune.resolve_config(_finetune_config(str(tmp_path / "nowhere")))
  with pytest.raises(ConfigError, match="matches no parameter path"):
    _step0_state(_finetune_config(source_workdir, **{"optimizer.freeze": "^nothing$"}),
                 tmp_path / "f")


def test_evaluate_a_workdir_without_config_reproduces_its_final_eval(source_workdir):
  from nfnets_jax.engine import evaluation
  import json
  summary = json.load(open(pathlib.Path(source_workdir) / "summary.json"))
  report = evaluation.evaluate_checkpoint(source_workdir, num_devices=1, log=lambda s: None)
  assert report["kind"] == "workdir" and report["recipe"] == "source"
  assert report["results"]["raw"]["top1"] == pytest.approx(summary["final"]["top1"], abs=1e-9)
  assert report["results"]["raw"]["loss"] == pytest.approx(summary["final"]["loss"], rel=1e-6)
  assert report["results"]["ema"]["top1"] == pytest.approx(summary["final_ema"]["top1"],
                                                           abs=1e-9)


def test_finetune_on_a_folder_saves_class_names_that_predict_prints(source_workdir, tmp_path):
  import json
  import os
  import subprocess
  from PIL import Image
  root = tmp_path / "images"
  names = ["circle", "cross", "square"]
  rng = np.random.RandomState(0)
  for split, count in (("train", 6), ("test", 2)):
    for k, name in enumerate(names):
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        image = (rng.rand(12, 10) * 60 + 80 * k).astype(np.uint8)
        Image.fromarray(image).save(root / split / name / f"{i}.png")
  c = _finetune_config(source_workdir, steps=2, dataset="folder", data_dir=str(root),
                       eval_split="test", normalization="source", eval_preproc="source",
                       batch_size=6, eval_batch_size=6)
  workdir = tmp_path / "tuned"
  summary = train.train_and_evaluate(c, str(workdir))
  assert summary["final"]["count"] == 6
  tuned = pretrained.load(str(workdir))
  assert tuned.class_names == tuple(names) and tuned.num_classes == 3
  # Predict every test image with k=2 < 3 classes: the labels and probabilities must be the
  # model's own (its logits computed here through pretrained.load), named in folder order.
  paths = [str(root / "test" / name / f"{i}.png") for name in names for i in range(2)]
  logits = tuned.logits(tuned.preprocess([np.asarray(Image.open(p)) for p in paths]))
  logits = logits.astype(np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, str(pathlib.Path(__file__).resolve().parents[2] / "experiments" /
                           "predict.py"), f"--checkpoint={workdir}", "--json", "--top_k=2",
       *paths], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = [json.loads(line) for line in proc.stdout.strip().splitlines()]
  assert [r["path"] for r in records] == paths
  for record, p in zip(records, probs):
    order = np.argsort(-p, kind="stable")[:2]
    assert [t["index"] for t in record["top_k"]] == [int(i) for i in order]
    assert [t["label"] for t in record["top_k"]] == [names[i] for i in order]
    np.testing.assert_allclose([t["prob"] for t in record["top_k"]], p[order], rtol=1e-4,
                               atol=1e-6)
