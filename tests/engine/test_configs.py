"""Experiment configs (``configs/*.py``): every file loads and validates, the NFNet recipe's
numbers, the recipe without ImageNet (``F0,synthetic``, ``F0,folder``), unknown variants.
Config validation itself: test_validation.py."""
import importlib.util
import inspect
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from nfnets_jax.engine import validation  # noqa: E402
from nfnets_jax import models  # noqa: E402
from nfnets_jax import optim  # noqa: E402


def load(name):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ALL_ARGS = (
    [("nfnet", v) for v in ["F0", "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F0+", "F7+",
                            "F0,local", "f1+,local", "F0,synthetic", "F0,folder"]]
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
  if arg and {"local", "synthetic", "folder"} & set(arg.split(",")):
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
  with pytest.raises(ValueError, match="one of the options 'synthetic' and 'folder'"):
    load("nfnet").get_config("F0,synthetic,folder")


def _recipe(c):
  """What F0's recipe fixes, whatever the data: model, optimizer (AGC), EMA, loss, augment."""
  return (c.model, c.model_kwargs.to_dict(), c.optimizer.to_dict(), c.ema_decay,
          c.label_smoothing, c.augment.to_dict(), c.train_preproc, c.normalization)


def _image_folder(root, classes=("cat", "dog"), per_class=3):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for i, name in enumerate(classes):
    for split in ("train", "test"):
      os.makedirs(root / split / name)
      for k in range(per_class):
        pixels = np.full((20 + k, 24, 3), 40 * i + k, np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{k}.png")
  return str(root)


def test_f0_without_imagenet_keeps_the_recipe_at_the_local_size(tmp_path):
  nfnet = load("nfnet")
  local = nfnet.get_config("F0,local")
  synthetic = nfnet.get_config("F0,synthetic")
  folder = nfnet.get_config("F0,folder")
  folder.data_dir = _image_folder(tmp_path)
  for c in (synthetic, folder):
    assert _recipe(c) == _recipe(local) == _recipe(nfnet.get_config("F0"))
    assert (c.batch_size, c.num_train_steps, c.train_image_size, c.compute_dtype) == (
        16, 10, 64, "float32")
  s = validation.validate_config(synthetic)
  assert (synthetic.dataset, s.num_classes, s.image_shape) == ("synthetic", 4, (64, 64, 3))
  # One step per epoch: the recipe's 5 warm-up epochs end within the 10 steps.
  assert s.steps_per_epoch == 1 and validation.warmup_warning(synthetic, s) is None
  f = validation.validate_config(folder)
  assert (folder.dataset, f.class_names, f.image_shape) == ("folder", ("cat", "dog"), (64, 64, 3))
  assert f.num_train_examples == 6 and f.num_eval_examples == 6


@pytest.mark.slow  # the full F0 compiles its train step in 40-60 s on 2 CPU cores
def test_f0_synthetic_trains_end_to_end(tmp_path):
  from nfnets_jax.engine import train  # pylint: disable=import-outside-toplevel
  c = load("nfnet").get_config("F0,synthetic")
  c.num_devices = 1  # 8 simulated devices would hold 8 copies of F0's state
  c.num_train_steps = 2
  c.train_image_size = c.eval_image_size = 32
  c.synthetic.num_eval_examples = 16
  summary = train.train_and_evaluate(c, str(tmp_path / "f0"))
  assert summary["steps"] == 2 and summary["num_params"] > 60_000_000
  assert summary["final"]["count"] == 16 and 0.0 <= summary["final_ema"]["top1"] <= 1.0
