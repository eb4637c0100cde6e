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
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
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


def test_linear_probe_trains_only_the_head_and_resumes(source_workdir, tmp_path):
  probe = "^(?!NFDemo/~/linear/)"
  c = _finetune_config(source_workdir, num_classes=4, steps=3, **{"optimizer.freeze": probe})
  summary = train.train_and_evaluate(c, str(tmp_path))
  assert summary["steps"] == 3
  tuned = pretrained.load(str(tmp_path), ema=False)
  source = pretrained.load(source_workdir)
  _assert_equal_except(tuned.params, source.params, skip=(HEAD,))
  assert tuned.num_classes == 4 and tuned.step == 3
  # A rerun with more steps resumes from step 3 (init_from only decides step 0).
  c.num_train_steps = 4
  again = train.train_and_evaluate(c, str(tmp_path))
  assert again["start_step"] == 3 and again["steps"] == 4


def test_body_lr_mult_zero_equals_freezing_the_body(source_workdir, tmp_path):
  c = _finetune_config(source_workdir, num_classes=4, steps=2, **{"optimizer.body_lr_mult": 0.0})
  train.train_and_evaluate(c, str(tmp_path))
  tuned = pretrained.load(str(tmp_path), ema=False)
  _assert_equal_except(tuned.params, pretrained.load(source_workdir).params, skip=(HEAD,))


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
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  image = str(root / "test" / "cross" / "0.png")
  proc = subprocess.run(
      [sys.executable, str(pathlib.Path(__file__).resolve().parents[2] / "experiments" /
                           "predict.py"), f"--checkpoint={workdir}", "--json", "--top_k=3",
       image], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record["path"] == image
  assert sorted(t["label"] for t in record["top_k"]) == names
  assert sum(t["prob"] for t in record["top_k"]) == pytest.approx(1.0, abs=1e-5)
