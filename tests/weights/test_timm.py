"""nfnets_jax.weights.timm against real timm (skipped when timm cannot be imported).

Install the extra with ``bash scripts/install_timm_extra.sh .venv/bin/python``. Every family is
checked on a shrunk shape (timm's own kwargs on one side, our overrides on the other) with ALL
tensors perturbed (timm zero-initialises skip gains and last-conv gains, which would hide a
wrong residual-branch mapping); errors are max|d logits| / max|logits|.
"""
import json
import os
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:
  import timm  # noqa: F401
  import torch
except Exception as e:  # noqa: BLE001  torchvision on a CPU torch fails with RuntimeError.
  pytest.skip(f"timm is not importable ({type(e).__name__}: {e}); install the test extra with "
              "`bash scripts/install_timm_extra.sh .venv/bin/python`", allow_module_level=True)

from nfnets_jax import models  # noqa: E402
from nfnets_jax.weights import timm as tw  # noqa: E402
from nfnets_jax.weights.timm_parity import numpy_state, perturb_, timm_logits  # noqa: E402
from nfnets_jax.weights.timm_parity import max_normalised_error as rel_err  # noqa: E402

TOL = 1e-4
torch.set_num_threads(2)

# family -> (timm name, timm kwargs, our overrides, image size); shrunk where timm allows.
FAMILIES = {
    "test_nfnet": ("test_nfnet", {}, {}, 64),
    "dm_nfnet": ("dm_nfnet_f0",
                 dict(channels=(64, 128, 384, 384), group_size=16, num_features=768),
                 dict(width=0.25, group_width=16), 32),
    "nfnet_l": ("nfnet_l0",
                dict(channels=(32, 64, 96, 128), depths=(1, 1, 2, 1), group_size=8,
                     num_features=192),
                dict(channels=(32, 64, 96, 128), depths=(1, 1, 2, 1), group_size=8), 64),
    "eca_nfnet_l": ("eca_nfnet_l1",
                    dict(channels=(32, 64, 96, 128), depths=(1, 1, 2, 1), group_size=8,
                         num_features=256),
                    dict(channels=(32, 64, 96, 128), depths=(1, 1, 2, 1), group_size=8), 64),
    "nf_regnet": ("nf_regnet_b1", dict(depths=(1, 1, 2, 1)), dict(depths=(1, 1, 2, 1)), 64),
    "nf_resnet": ("nf_resnet50", dict(depths=(1, 1, 1, 1), channels=(64, 128, 256, 512)),
                  dict(depths=(1, 1, 1, 1), channels=(64, 128, 256, 512)), 64),
}
FAST = dict(grouped_conv_impl="native")  # Same params; compiles faster on CPU.


def our_logits(model_name, kwargs, num_classes, params, x_nhwc):
  f = hk.transform(lambda x: models.create(model_name, num_classes, **kwargs)(
      x, is_training=False)["logits"])
  return np.asarray(jax.jit(f.apply)(params, None, jnp.asarray(x_nhwc)))


def images(size, n=2, seed=0):
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


# The head's mapping is the same for every family; the second class count of the slowest
# family (dm_nfnet, 12 blocks) runs with the slow tests only.
CASES = [pytest.param(f, n, marks=[pytest.mark.slow] if (f, n) == ("dm_nfnet", 7) else [])
         for f in sorted(FAMILIES) for n in (1000, 7)]


@pytest.mark.parametrize("family,num_classes", CASES)
def test_logits_match_timm(family, num_classes):
  timm_name, timm_kw, ours_kw, size = FAMILIES[family]
  model = perturb_(timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                                     **timm_kw).eval())
  state = numpy_state(model)
  x = images(size)
  ref = timm_logits(model, x)
  name, kwargs, params, model_state = tw.to_haiku(state, timm_name,
                                                  model_overrides=dict(ours_kw, **FAST))
  assert model_state == {}
  assert name == tw.TIMM_MODELS[timm_name].model_name
  err = rel_err(our_logits(name, kwargs, num_classes, params, x), ref)
  assert err < TOL, f"{timm_name} ({family}, {num_classes} classes): error {err:.2e}"
  # Back to timm: the same tensors, bit for bit.
  back = tw.from_haiku(params, timm_name, model_overrides=ours_kw)
  assert sorted(back) == sorted(state)
  for key in state:
    assert back[key].shape == state[key].shape, key
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)


def test_hub_round_trip_loads_in_timm(tmp_path):
  # Start from our side: random params of our timm_test_nfnet, perturbed, 7 classes.
  num_classes = 7
  name, kwargs = "timm_test_nfnet", FAST
  f = hk.transform(lambda x: models.create(name, num_classes, **kwargs)(x, is_training=False))
  x = images(64, seed=3)
  shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0), jnp.asarray(x))
  rng = np.random.RandomState(1)  # Random values for every tensor (no init compile needed).

  def value(pname, shape):
    r = rng.randn(*shape).astype(np.float32)
    offset, scale = {"gain": (1.0, 0.3), "skip_gain": (0.5, 0.2), "bias": (0.0, 0.1),
                     "b": (0.0, 0.1)}.get(pname, (0.01, 0.05))  # weights: non-zero mean
    return offset + scale * r

  params = {module: {pname: value(pname, s.shape) for pname, s in leaves.items()}
            for module, leaves in shapes.items()}
  ours = our_logits(name, kwargs, num_classes, params, x)

  assert tw.timm_name_for(name) == "test_nfnet"
  state = tw.from_haiku(params, "test_nfnet", num_classes)
  folder = tw.write_hub_folder(tmp_path / "hub", "test_nfnet", state, num_classes)
  config = json.loads((tmp_path / "hub" / "config.json").read_text())
  assert config["architecture"] == "test_nfnet" and config["num_classes"] == num_classes
  assert config["pretrained_cfg"]["input_size"] == [3, 160, 160]
  assert config["pretrained_cfg"]["num_classes"] == num_classes

  model = timm.create_model("test_nfnet", pretrained=True, pretrained_cfg_overlay=dict(
      file=os.path.join(folder, "model.safetensors"), num_classes=num_classes)).eval()
  assert rel_err(timm_logits(model, x), ours) < TOL
  # timm reads our config.json too (a local hub folder).
  model2 = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
  assert model2.num_classes == num_classes
  assert rel_err(timm_logits(model2, x), ours) < TOL

  timm_name, n, cfg, state2 = tw.read_hub_folder(folder)
  assert (timm_name, n, cfg["crop_pct"]) == ("test_nfnet", num_classes, 0.95)
  _, _, params2, _ = tw.to_haiku(state2, timm_name, num_classes)
  for module in params:
    for pname in params[module]:
      np.testing.assert_array_equal(params2[module][pname], params[module][pname])


def test_hub_config_matches_timms_save_for_hf(tmp_path):
  from timm.models._hub import save_for_hf  # pylint: disable=import-outside-toplevel
  for timm_name, num_classes in (("dm_nfnet_f0", 1000), ("eca_nfnet_l2", 1000),
                                 ("test_nfnet", 5)):
    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    save_for_hf(model, tmp_path / timm_name, safe_serialization=True)
    theirs = json.loads((tmp_path / timm_name / "config.json").read_text())
    ours = tw.hub_config(timm_name, num_classes, model.num_features)
    assert ours == theirs, timm_name
    del model


def test_pretrained_cfgs_match_timm():
  for timm_name, info in tw.TIMM_MODELS.items():
    cfg = timm.models.get_pretrained_cfg(timm_name).to_dict()
    for key in ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "crop_mode",
                "interpolation", "mean", "std", "pool_size", "first_conv", "classifier"):
      theirs = cfg.get(key)
      ours = info.pretrained_cfg.get(key)
      if isinstance(theirs, tuple):
        theirs = list(theirs)
      assert ours == theirs, (timm_name, key, ours, theirs)
    assert info.model_name in models.list_models()
    assert info.top1 is not None and 40 < info.top1 < 90


def test_torch_file_is_read_with_torch(tmp_path):
  model = timm.create_model("test_nfnet", pretrained=False, num_classes=3)
  path = tmp_path / "w.pth"
  torch.save(model.state_dict(), path)
  state = tw.read_torch_file(path)
  reference = numpy_state(model)
  assert sorted(state) == sorted(reference)
  for k in reference:
    np.testing.assert_array_equal(state[k], reference[k])


# ------------------------------------------------------------------------------------------
# Bad inputs.
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state():
  return numpy_state(perturb_(timm.create_model("test_nfnet", pretrained=False, num_classes=4)))


def test_unknown_architecture_lists_supported(tiny_state, tmp_path):
  with pytest.raises(tw.UnknownArchitectureError, match="dm_nfnet_f0.*nf_resnet50"):
    tw.to_haiku(tiny_state, "resnet50")
  with pytest.raises(ValueError, match="supported"):
    tw.write_hub_folder(tmp_path / "x", "vit_base_patch16_224", tiny_state)
  folder = tmp_path / "hub"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"architecture": "resnet50",
                                                  "num_classes": 4}))
  with pytest.raises(tw.UnknownArchitectureError, match="resnet50.*supported"):
    tw.read_hub_folder(folder)
  with pytest.raises(tw.UnknownArchitectureError, match="no timm counterpart"):
    tw.timm_name_for("nf_resnet50")  # DeepMind's NF-ResNet-50 is not timm's.
  with pytest.raises(tw.UnknownArchitectureError, match="overrides"):
    tw.timm_name_for("nfnet_f0")  # needs exact GELU + timm's epsilon.
  assert tw.timm_name_for("nfnet_f0", dict(activation="gelu_exact", weight_std="timm")) == \
      "dm_nfnet_f0"


def test_wrong_class_count(tiny_state, tmp_path):
  with pytest.raises(tw.TimmWeightsError, match="4 classes.*num_classes=10"):
    tw.to_haiku(tiny_state, "test_nfnet", num_classes=10)
  with pytest.raises(ValueError, match="num_classes=10"):
    tw.write_hub_folder(tmp_path / "x", "test_nfnet", tiny_state, num_classes=10)
  _, _, params, _ = tw.to_haiku(tiny_state, "test_nfnet", num_classes=4)
  with pytest.raises(tw.StateDictMismatchError, match="linear"):
    tw.from_haiku(params, "test_nfnet", num_classes=10)


def test_missing_and_extra_tensors_listed_together(tiny_state):
  state = dict(tiny_state)
  del state["stages.1.0.conv2b.gain"]
  del state["stages.0.0.attn_last.fc1.bias"]
  state["stages.9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  state["stem.conv1.weight"] = state["stem.conv1.weight"][:, :, :2]
  with pytest.raises(tw.StateDictMismatchError) as info:
    tw.to_haiku(state, "test_nfnet")
  err = info.value
  assert isinstance(err, ValueError)
  assert sorted(err.missing) == ["stages.0.0.attn_last.fc1.bias", "stages.1.0.conv2b.gain"]
  assert err.unexpected == ["stages.9.0.conv1.weight"]
  assert len(err.wrong_shape) == 1 and "stem.conv1.weight" in err.wrong_shape[0]
  for text in ("stages.1.0.conv2b.gain", "stages.0.0.attn_last.fc1.bias",
               "stages.9.0.conv1.weight", "stem.conv1.weight"):
    assert text in str(err)


def test_missing_head_needs_num_classes(tiny_state):
  state = {k: v for k, v in tiny_state.items() if not k.startswith("head.")}
  with pytest.raises(tw.StateDictMismatchError, match="class count"):
    tw.to_haiku(state, "test_nfnet")
  with pytest.raises(tw.StateDictMismatchError, match="head.fc.weight"):
    tw.to_haiku(state, "test_nfnet", num_classes=4)


def test_pth_without_torch_is_a_clear_error(tiny_state, tmp_path, monkeypatch):
  path = tmp_path / "w.pth"
  torch.save({k: torch.from_numpy(v) for k, v in tiny_state.items()}, path)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  with pytest.raises(tw.TimmWeightsError, match="needs torch.*safetensors"):
    tw.read_torch_file(path)
  folder = tmp_path / "hub"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"architecture": "test_nfnet",
                                                  "num_classes": 4}))
  os.replace(path, folder / "pytorch_model.bin")
  with pytest.raises(tw.TimmWeightsError, match="needs torch"):
    tw.read_hub_folder(folder)


def test_folder_errors(tmp_path):
  with pytest.raises(tw.TimmWeightsError, match="no config.json"):
    tw.read_hub_folder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_nfnet"}))
  with pytest.raises(tw.TimmWeightsError, match="no weights file"):
    tw.read_hub_folder(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(tw.TimmWeightsError, match="safetensors"):
    tw.read_hub_folder(tmp_path)


def test_convert_script_both_ways(tiny_state, tmp_path, capsys):
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
  import convert_timm_checkpoint as cli  # pylint: disable=import-outside-toplevel
  src = tw.write_hub_folder(tmp_path / "src", "test_nfnet", tiny_state, 4)
  npz = str(tmp_path / "ours.npz")
  assert cli.main(["--input", src, "--output", npz]) == 0
  meta = json.loads(open(npz + ".json").read())
  assert (meta["model_name"], meta["timm_name"], meta["num_classes"]) == \
      ("timm_test_nfnet", "test_nfnet", 4)
  assert cli.main(["--to_timm", "--input", npz, "--output", str(tmp_path / "back")]) == 0
  _, n, _, state = tw.read_hub_folder(tmp_path / "back")
  assert n == 4 and sorted(state) == sorted(tiny_state)
  for k in tiny_state:
    np.testing.assert_array_equal(state[k], tiny_state[k])
  # A bare file needs --timm_name; a wrong class count is one clear line.
  st_file = os.path.join(src, "model.safetensors")
  assert cli.main(["--input", st_file, "--output", npz]) == 1
  assert cli.main(["--input", st_file, "--output", npz, "--timm_name", "test_nfnet",
                   "--num_classes", "9"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("Error: ") and "--timm_name" in err[0]
  assert err[1].startswith("Error: ") and "num_classes=9" in err[1]
