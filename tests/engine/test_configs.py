"""Experiment configs: every file loads, the NFNet recipe's numbers, and config validation."""
import importlib.util
import inspect
import pathlib
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from nfnets_jax.engine import validation  # noqa: E402
from nfnets_jax import models  # noqa: E402
from nfnets_jax import optim  # noqa: E402
from nfnets_jax.engine import parallel  # noqa: E402
from nfnets_jax.engine import train  # noqa: E402

ConfigError = validation.ConfigError


def load(name):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ALL_ARGS = (
    [("nfnet", v) for v in ["F0", "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F0+", "F7+",
                            "F0,local", "f1+,local"]]
    + [("nf_resnet", a) for a in ["50", "101", "50,local"]]
    + [("nf_regnet", a) for a in ["B0", "B5", "B0,local"]]
    + [("resnet_bn", a) for a in [None, "50,local"]]
    + [("fashion_mnist", a) for a in [None, "local"]]
    + [("synthetic", a) for a in [None, "tiny"]])


@pytest.mark.parametrize("name,arg", ALL_ARGS)
def test_every_config_names_a_model_and_valid_settings(name, arg):
  module = load(name)
  assert module.__doc__ and "experiments/train.py" in module.__doc__
  c = module.get_config(arg)
  info = models.get_info(c.model)
  # The model kwargs are accepted by the constructor.
  inspect.signature(info.constructor).bind(num_classes=10, **dict(info.kwargs),
                                           **dict(c.model_kwargs.items()))
  setup = validation.validate_config(c, check_data=False)
  assert setup.num_devices * setup.micro_batch * setup.accumulation_steps == c.batch_size
  if arg and "local" in arg:
    assert c.num_train_steps and c.num_train_steps <= 30


@pytest.mark.parametrize("variant,train_px,test_px,ra_mag,dropout", [
    ("F0", 192, 256, 5, 0.2), ("F1", 224, 320, 10, 0.3), ("F3", 320, 416, 15, 0.4),
    ("F7", 480, 608, 15, 0.5)])
def test_nfnet_recipe_matches_the_paper(variant, train_px, test_px, ra_mag, dropout):
  c = load("nfnet").get_config(variant)
  assert c.model == f"nfnet_{variant.lower()}"
  assert (c.train_image_size, c.eval_image_size) == (train_px, test_px)
  assert c.augment.randaugment_layers == 4 and c.augment.randaugment_magnitude == ra_mag
  assert c.model_kwargs.drop_rate == dropout and c.model_kwargs.stochdepth_rate == 0.25
  info = models.get_info(c.model)
  assert (info.train_image_size, info.test_image_size, info.drop_rate) == (
      train_px, test_px, dropout)
  assert c.batch_size == 4096 and c.num_epochs == 360
  assert optim.peak_learning_rate(c.optimizer, c.batch_size) == pytest.approx(1.6)
  o = c.optimizer
  assert (o.name, o.warmup_epochs, o.schedule, o.nesterov, o.momentum) == (
      "sgd_agc", 5.0, "cosine", True, 0.9)
  assert (o.weight_decay, o.clipping, o.agc_eps, o.agc_exclude) == (
      2e-5, 0.01, 1e-3, "reference")
  assert c.label_smoothing == 0.1 and c.ema_decay == 0.99999
  assert c.augment.mixup_alpha == 0.2 and c.augment.cutmix
  assert c.compute_dtype == "bfloat16"
  assert load("nfnet").get_config(variant + "+").model == f"nfnet_{variant.lower()}_plus"


def test_unknown_variants_and_options_are_rejected():
  with pytest.raises(ValueError, match="Unknown NFNet variant 'F9'.*F0"):
    load("nfnet").get_config("F9")
  with pytest.raises(ValueError, match="Unknown NF-RegNet variant"):
    load("nf_regnet").get_config("B12")
  with pytest.raises(ValueError, match="Unknown config option"):
    load("fashion_mnist").get_config("fast")


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
