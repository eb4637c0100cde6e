"""Config validation (``engine/validation.py``): errors that name the field and the fix, missing
datasets, failing before any compilation, and the batch layout (``parallel.check_batch_layout``)."""
import importlib.util
import pathlib
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from nfnets_jax.engine import parallel  # noqa: E402
from nfnets_jax.engine import train  # noqa: E402
from nfnets_jax.engine import validation  # noqa: E402

ConfigError = validation.ConfigError


def load(name):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny():
  return load("synthetic").get_config("tiny")


@pytest.mark.parametrize("field,value,message", [
    ("model", "nfnet_f9", r"Unknown model 'nfnet_f9'. Known models: .*nfnet_f0"),
    ("optimizer.name", "lamb", r"Unknown optimizer name 'lamb'; known names: .*sgd_agc"),
    ("optimizer.schedule", "step", r"Unknown learning-rate schedule 'step'"),
    ("batch_size", 12, r"batch_size=12 is not divisible by the 8 devices.*multiple of 8"),
    ("per_device_batch_size", 3, r"per_device_batch_size=3 does not divide the per-device "
                                 r"share 2"),
    ("eval_batch_size", 10, r"eval_batch_size=10 must be a positive multiple of the 8"),
    ("compute_dtype", "int8", r"compute_dtype='int8'"),
    ("nonfinite", "ignore", r"nonfinite='ignore'; use 'stop'"),
    ("num_devices", 9, r"num_devices=9 but this process has 8 devices"),
])
def test_validation_errors_name_the_field_and_fix(field, value, message):
  c = tiny()
  target = c
  *parents, leaf = field.split(".")
  for p in parents:
    target = target[p]
  target[leaf] = value
  with pytest.raises(ConfigError, match=message):
    validation.validate_config(c)


def test_missing_datasets_say_how_to_prepare_them(tmp_path):
  c = load("fashion_mnist").get_config()
  c.data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match=r"prepare_fashion_mnist.py --data_dir=.*make data"):
    validation.validate_config(c)
  c = load("nfnet").get_config("F0")
  c.data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match=r"manual download.*ILSVRC2012_img_train.tar"):
    validation.validate_config(c)


def test_bad_config_fails_before_any_compilation(tmp_path, monkeypatch):
  def no_compiling(*args, **kwargs):
    raise AssertionError("compiled before validating the config")

  monkeypatch.setattr(parallel, "make_train_step", no_compiling)
  monkeypatch.setattr(jax, "jit", no_compiling)
  c = tiny()
  c.batch_size = 12
  with pytest.raises(ConfigError, match="not divisible"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  c = load("fashion_mnist").get_config()
  c.data_dir = str(tmp_path / "nothing")
  with pytest.raises(ConfigError, match="prepare_fashion_mnist"):
    train.train_and_evaluate(c, str(tmp_path / "w2"))


def test_batch_layout_resolution():
  assert parallel.check_batch_layout(4096, None, 8) == (512, 1)
  assert parallel.check_batch_layout(4096, 32, 8) == (32, 16)
  assert parallel.check_batch_layout(4096, 64, 1) == (64, 64)
  s = validation.validate_config(tiny(), check_data=True)
  assert (s.num_devices, s.micro_batch, s.accumulation_steps, s.total_steps) == (8, 2, 1, 3)
  assert s.steps_per_epoch == 1024 / 16
