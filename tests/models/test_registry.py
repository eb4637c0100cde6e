"""The model records (``models.registry``): one record per name, read by every consumer."""
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

from nfnets_jax import models
from nfnets_jax import pretrained
from nfnets_jax.data import preprocessing
from nfnets_jax.weights import deepmind
from nfnets_jax.weights import timm as timm_weights

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_record_has_a_usable_eval_recipe():
  for name in models.list_models():
    info = models.get_info(name)
    for recipe in [info.eval] + [w.eval for w in info.weights]:
      assert recipe.preproc in preprocessing.EVAL_PREPROCS, (name, recipe)
      assert 0 < recipe.crop_pct <= 1 and len(recipe.mean) == len(recipe.std), (name, recipe)
    assert info.eval.image_size == info.test_image_size, name


def test_deepmind_release_table_read_from_the_records():
  # facts, section 7; the file names and MD5s live in models/nfnet.py only.
  assert deepmind.KNOWN_MD5 == {
      "F0": "0a41039da1cb43adf47f1b7d86ddfe0f", "F1": "c9126bbfaf855f9ddb7ff3b902558781",
      "F2": "7a018d8d1498020e2f5a8719a1e7f53f", "F3": "d8e1e78d26db659c486150dbaccbe78a",
      "F4": "f5974a7e3388aa81b91a9f1403e759a4", "F5": "8639e925de951030651ac775b9f915c3",
      "F6": "b16cca40ac1ecec2bd5e3273866da0c1"}
  f0 = models.get_info("nfnet_f0").deepmind_weights
  assert (f0.file, f0.top1, f0.top5, f0.metrics_image_size) == ("F0_haiku.npz", 83.6, 96.8, 256)
  assert f0.eval == models.resize_crop_32(256) and f0.eval.crop_pct == pytest.approx(256 / 288)
  assert models.get_info("nfnet_f7").deepmind_weights is None  # F7 was never released


def test_timm_names_and_cfgs_read_from_the_records():
  assert models.get_info("nfnet_f0").timm_names == ("dm_nfnet_f0",)
  assert models.get_info("nfnet_f0_plus").timm_names == ()
  assert models.get_info("timm_test_nfnet").timm_names == ("test_nfnet",)
  linked = {w.timm_name: info.name for info, w in models.published_weights("timm")}
  assert linked == {name: m.model_name for name, m in timm_weights.TIMM_MODELS.items()}
  for name, m in timm_weights.TIMM_MODELS.items():
    weights = models.get_info(m.model_name).timm_weights(name)
    assert m.top1 == weights.top1 and m.overrides == dict(weights.timm_overrides)


def test_nfnet_config_variants_come_from_the_records():
  spec = importlib.util.spec_from_file_location("nfnet_config", ROOT / "configs" / "nfnet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for variant in ("F0", "F3", "F7", "F1+"):
    c = module.get_config(variant)
    info = models.get_info(c.model)
    assert (c.train_image_size, c.eval_image_size, c.model_kwargs.drop_rate,
            c.augment.randaugment_layers, c.augment.randaugment_magnitude) == (
                info.train_image_size, info.test_image_size, info.drop_rate,
                info.randaugment_layers, info.randaugment_magnitude)
  c = module.get_config("F0")
  assert (c.train_image_size, c.eval_image_size, c.model_kwargs.drop_rate) == (192, 256, 0.2)


def test_imagenet_statistics_are_written_once():
  """0.485 / 0.229 (ImageNet's mean and std) appear in constants.py and nowhere else."""
  found = []
  for path in (ROOT / "nfnets_jax").rglob("*.py"):
    if path.name != "constants.py" and re.search(r"0\.485|0\.229", path.read_text()):
      found.append(str(path.relative_to(ROOT)))
  assert not found, found
  assert preprocessing.NORMALIZATION["imagenet"][0][0] == pytest.approx(0.485 * 255)


def test_deepmind_npz_uses_the_records_recipe_and_names(tmp_path):
  params, _ = deepmind.load_params_npz(ROOT / "tests" / "fixtures" /
                                       "legacy_deepmind_f0_tiny.npz")
  params["NFNet/~/linear"] = {"w": jnp.zeros((params["NFNet/~/linear"]["w"].shape[0], 1000)),
                              "b": jnp.zeros(1000)}
  path = tmp_path / "f0_1000.npz"
  deepmind.save_params_npz(jax.tree.map(lambda a: jnp.asarray(a), params), path,
                           {"model_name": "nfnet_f0",
                            "model_overrides": {"width": 0.03125, "group_width": 4}})
  m = pretrained.load(str(path))
  assert m.recipe == models.get_info("nfnet_f0").deepmind_weights.eval
  assert m.class_names[0] == "tench" and len(m.class_names) == 1000


def test_transform_is_the_one_model_wrapper():
  forward = models.transform("nf_demo_tiny", 3)
  params, state = forward.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), False)
  out, _ = forward.apply(params, state, None, jnp.zeros((2, 28, 28, 1)), False)
  assert out["logits"].shape == (2, 3)
  with pytest.raises(ValueError, match="Unknown model 'nope'"):
    models.transform("nope", 3)
