"""Every conversion path gives the source's logits, eval recipe and class names.

Paths: a timm hub folder -> ``scripts/convert_timm_checkpoint.py`` -> ``.npz`` -> ``load``; a
DeepMind-layout pickle -> ``scripts/convert_deepmind_checkpoint.py`` -> ``.npz`` -> ``load``; our
training workdir -> ``save_timm`` -> timm -> ``load`` again. Each for an F-series and an NFNet-L
model (shrunk) with every tensor perturbed, against real timm where the test extra is installed
(those tests skip with the reason otherwise). ``tests/fixtures/legacy_*.npz`` were written by
the converters before their metadata was defined once (commit 15961b5); they must still load
as the architecture they hold.
"""
import dataclasses
import json
import os
import pathlib
import sys

import dill
import jax
import numpy as np
import pytest

from nfnets_jax import models
from nfnets_jax import pretrained
from nfnets_jax.models import nfnet as nfnet_models
from nfnets_jax.weights import checkpoint
from nfnets_jax.weights import deepmind
from nfnets_jax.weights import timm as timm_weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))
import convert_deepmind_checkpoint  # noqa: E402
import convert_timm_checkpoint  # noqa: E402

try:
  import timm
  import torch
  from nfnets_jax.weights import timm_parity as parity
  TIMM_ERROR = None
except Exception as e:  # noqa: BLE001  torchvision on a CPU torch fails with RuntimeError.
  TIMM_ERROR = (f"timm is not importable ({type(e).__name__}: {e}); install the test extra: "
                "bash scripts/install_timm_extra.sh .venv/bin/python")
needs_timm = pytest.mark.skipif(TIMM_ERROR is not None, reason=str(TIMM_ERROR))

TOL = 1e-4  # max|d logits| / max|logits| against timm (float32, different conv kernels)
# An F-series and an NFNet-L model, shrunk: (timm name, timm kwargs, our kwargs, image size).
FAMILIES = {
    "dm_nfnet_f0": ("dm_nfnet_f0", dict(channels=(64, 128, 384, 384), group_size=16,
                                        num_features=768),
                    dict(width=0.25, group_width=16), 32),
    "nfnet_l0": ("nfnet_l0", dict(channels=(32, 64, 96, 128), depths=(1, 1, 2, 1),
                                  group_size=8, num_features=192),
                 dict(channels=(32, 64, 96, 128), depths=(1, 1, 2, 1), group_size=8), 48),
}


def _images(size, n=3, seed=0):
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def _direct_logits(name, num_classes, kwargs, params, x):
  """Logits of ``params`` under an architecture built here, independently of any metadata."""
  forward = models.transform(name, num_classes, **kwargs)
  return np.asarray(jax.jit(lambda p, x: forward.apply(p, {}, None, x, False)[0]["logits"])(
      params, x))


def _assert_recipe(model, recipe):
  assert model.recipe == recipe, (model.recipe, recipe)


# ------------------------------------------------------------------------------------------
# Files written by the converters before this version.
# ------------------------------------------------------------------------------------------
def test_legacy_timm_npz_loads_timms_architecture():
  """The silent wrong-logits bug: a dm_nfnet_* converted from timm must load with timm's exact
  GELU and standardization (recorded as model_overrides), not DeepMind's defaults."""
  path = str(FIXTURES / "legacy_timm_dm_nfnet_f0_tiny.npz")
  m = pretrained.load(path)
  shapes = dict(width=0.03125, group_width=4)
  want_kwargs = dict(nfnet_models.TIMM_OPTIONS, **shapes)
  assert (m.name, m.timm_name, m.num_classes, m.kind) == ("nfnet_f0", "dm_nfnet_f0", 3, "npz")
  assert m.model_kwargs == want_kwargs
  timm_recipe = models.get_info("nfnet_f0").timm_weights("dm_nfnet_f0").eval
  _assert_recipe(m, timm_recipe)
  assert m.image_size == 192 and m.class_names is None
  x = _images(32)
  raw, _ = deepmind.load_params_npz(path)
  want = _direct_logits("nfnet_f0", 3, want_kwargs, raw, x)
  np.testing.assert_allclose(m.logits(x), want, rtol=1e-5, atol=1e-5)
  # What the old loader built (DeepMind's tanh GELU and epsilon) is measurably different.
  deepmind_arch = _direct_logits("nfnet_f0", 3, shapes, raw, x)
  assert np.max(np.abs(deepmind_arch - want)) > 1e-3 * np.max(np.abs(want))


def test_legacy_npz_of_a_small_timm_model_needs_no_variant():
  path = str(FIXTURES / "legacy_timm_test_nfnet_small.npz")
  m = pretrained.load(path)
  assert (m.name, m.timm_name, m.model_kwargs["channels"]) == (
      "timm_test_nfnet", "test_nfnet", (8, 16, 16, 16))
  x = _images(32, seed=1)
  raw, _ = deepmind.load_params_npz(path)
  want = _direct_logits("timm_test_nfnet", 3, dict(channels=(8, 16, 16, 16)), raw, x)
  np.testing.assert_allclose(m.logits(x), want, rtol=1e-5, atol=1e-5)


def test_legacy_deepmind_npz_loads_with_the_reference_recipe():
  path = str(FIXTURES / "legacy_deepmind_f0_tiny.npz")
  m = pretrained.load(path)
  assert (m.name, m.model_kwargs, m.kind) == ("nfnet_f0", dict(width=0.03125, group_width=4),
                                              "npz")
  _assert_recipe(m, models.resize_crop_32(256))
  assert m.crop_pct == pytest.approx(256 / 288)
  x = _images(32, seed=2)
  raw, meta = deepmind.load_params_npz(path)
  assert meta.source_md5 == "1ee34a330ad27aabce2822145ba86e7a"
  want = _direct_logits("nfnet_f0", 3, dict(width=0.03125, group_width=4), raw, x)
  np.testing.assert_allclose(m.logits(x), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# DeepMind-layout pickle -> .npz -> load.
# ------------------------------------------------------------------------------------------
def test_deepmind_pickle_to_npz_to_load(tmp_path, capsys):
  raw, _ = deepmind.load_params_npz(str(FIXTURES / "legacy_deepmind_f0_tiny.npz"))
  pickle_path = tmp_path / "tiny_haiku.npz"
  with open(pickle_path, "wb") as f:
    dill.dump(raw, f)
  out = str(tmp_path / "f0.npz")
  argv = ["--input", str(pickle_path), "--output", out, "--model_kw", "width=0.03125",
          "--model_kw", "group_width=4"]
  assert convert_deepmind_checkpoint.main(argv) == 1  # unknown MD5: refused without --trust
  err = capsys.readouterr().err
  assert err.startswith("Error: ") and "not one of DeepMind's released" in err
  assert convert_deepmind_checkpoint.main(argv + ["--trust"]) == 0
  direct = pretrained.load(str(pickle_path), trust=True,
                           model_kwargs=dict(width=0.03125, group_width=4))
  m = pretrained.load(out)
  assert (m.name, m.model_kwargs) == ("nfnet_f0", dict(width=0.03125, group_width=4))
  _assert_recipe(m, direct.recipe)
  _assert_recipe(m, models.get_info("nfnet_f0").deepmind_weights.eval)
  x = _images(32, seed=3)
  np.testing.assert_array_equal(m.logits(x), direct.logits(x))


# ------------------------------------------------------------------------------------------
# timm hub folder -> .npz -> load, against real timm.
# ------------------------------------------------------------------------------------------
def _timm_model(family, num_classes, seed):
  timm_name, timm_kwargs, _, _ = FAMILIES[family]
  torch.manual_seed(seed)
  model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                            **timm_kwargs).eval()
  return parity.perturb_(model, seed + 1)


@needs_timm
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timm_folder_to_npz_to_load(family, tmp_path):
  from timm.models import _hub
  timm_name, _, ours, size = FAMILIES[family]
  torch_model = _timm_model(family, 5, seed=10)
  folder = tmp_path / "hub"
  _hub.save_for_hf(torch_model, str(folder), safe_serialization=True)
  out = str(tmp_path / "ours.npz")
  argv = ["--input", str(folder), "--output", out]
  for k, v in ours.items():
    argv += ["--model_kw", f"{k}={v!r}".replace(" ", "")]
  assert convert_timm_checkpoint.main(argv) == 0
  m = pretrained.load(out)
  via_folder = pretrained.load(str(folder), model_kwargs=ours)
  assert (m.name, m.timm_name, m.num_classes) == (via_folder.name, timm_name, 5)
  assert m.model_kwargs == via_folder.model_kwargs
  _assert_recipe(m, via_folder.recipe)
  cfg = json.load(open(folder / "config.json"))["pretrained_cfg"]
  assert m.eval_image_size == cfg["test_input_size"][-1]
  assert m.crop_pct == pytest.approx(cfg.get("test_crop_pct") or cfg["crop_pct"])
  x = _images(size, seed=4)
  want = parity.timm_logits(torch_model, x)
  got = m.logits(x)
  assert parity.max_normalised_error(got, want) < TOL
  np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(want, -1))


# ------------------------------------------------------------------------------------------
# Our workdir -> save_timm -> timm -> load.
# ------------------------------------------------------------------------------------------
def _fake_workdir(path, family, params, class_names, eval_size, train_size):
  """A training workdir as the engine leaves it: run.json + one orbax checkpoint (raw + EMA)."""
  _, _, ours, _ = FAMILIES[family]
  name = {"dm_nfnet_f0": "nfnet_f0", "nfnet_l0": "nfnet_l0"}[family]
  kwargs = dict(timm_weights.TIMM_MODELS[FAMILIES[family][0]].overrides, **ours)
  run = {
      "model": name, "model_kwargs": {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in kwargs.items()},
      "num_classes": len(class_names), "class_names": list(class_names), "dataset": "folder",
      "channels": 3, "train_image_size": train_size, "eval_image_size": eval_size,
      "eval_preproc": "resize_crop_32", "eval_crop_pct": 0.875,
      "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "config": {},
  }
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "run.json"), "w") as f:
    json.dump(run, f)
  ema = jax.tree.map(lambda a: a * 0.5, params)
  ckpt = checkpoint.Checkpointer(os.path.join(path, "checkpoints"))
  try:
    ckpt.save(7, {"params": params, "ema_params": ema, "model_state": {},
                  "step": np.asarray(7, np.int32)})
  finally:
    ckpt.close()
  return path


@needs_timm
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_workdir_to_timm_and_back_keeps_logits_recipe_and_names(family, tmp_path):
  timm_name, timm_kwargs, ours, size = FAMILIES[family]
  names = ("cat", "dog", "eel", "fox")
  torch_model = _timm_model(family, len(names), seed=20)
  _, _, params, _ = timm_weights.to_haiku(parity.numpy_state(torch_model), timm_name,
                                          model_overrides=ours)
  workdir = _fake_workdir(str(tmp_path / "run"), family, params, names, eval_size=size,
                          train_size=size - 8)
  m = pretrained.load(workdir, params=pretrained.RAW)
  assert m.kind == "workdir" and not m.ema and sorted(m.param_sets) == ["ema", "raw"]
  folder = tmp_path / "timm"
  assert pretrained.save_timm(m, str(folder)) == timm_name
  config = json.load(open(folder / "config.json"))
  assert config["label_names"] == list(names)
  cfg = config["pretrained_cfg"]
  # resize_crop_32 is timm's squash with floor(S / crop_pct) == S + 32.
  assert cfg["crop_mode"] == "squash" and int(size / cfg["test_crop_pct"]) == size + 32
  assert cfg["mean"] == [0.5, 0.4, 0.3] and cfg["test_input_size"] == [3, size, size]
  back_timm = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(
      file=str(folder / "model.safetensors"), num_classes=len(names)), **timm_kwargs).eval()
  x = _images(size, seed=5)
  assert parity.max_normalised_error(m.logits(x), parity.timm_logits(back_timm, x)) < TOL
  np.testing.assert_array_equal(parity.timm_logits(back_timm, x),
                                parity.timm_logits(torch_model, x))  # bit-exact weights
  back = pretrained.load(str(folder))
  assert back.class_names == names and back.label(1) == "dog"
  _assert_recipe(back, m.recipe)
  assert back.model_kwargs == m.model_kwargs
  # The same images get the same probabilities before and after.
  rng = np.random.RandomState(6)
  photos = [rng.randint(0, 256, shape, np.uint8) for shape in ((50, 70, 3), (64, 40, 3))]
  np.testing.assert_allclose(back.predict(photos), m.predict(photos), rtol=1e-6, atol=1e-7)
  # EMA parameters travel only when asked for.
  ema = pretrained.load(workdir)
  assert ema.ema and not np.allclose(ema.logits(x), m.logits(x))


def test_squash_crop_pct_gives_the_exact_scale():
  for size in (8, 28, 40, 192, 256, 320, 576, 608):
    pct = pretrained.timm_cfg_of(models.resize_crop_32(size), size, 3)["test_crop_pct"]
    assert int(np.floor(size / pct)) == size + 32, size


def test_npz_metadata_is_defined_once(tmp_path):
  params = {"m/~/linear": {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}}
  with pytest.raises(ValueError, match="unknown metadata field.*model_kwargs"):
    deepmind.save_params_npz(params, tmp_path / "x.npz", {"model": "nfnet_f0",
                                                         "model_kwargs": {}})
  meta = deepmind.NpzMetadata(model_name="nfnet_f0", model_overrides={"depths": (1, 2)})
  deepmind.save_params_npz(params, tmp_path / "y.npz", meta)
  _, back = deepmind.load_params_npz(tmp_path / "y.npz")
  assert dataclasses.replace(back) == meta  # tuples survive JSON
