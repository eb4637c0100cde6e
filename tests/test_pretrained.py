"""``pretrained.load`` / ``save_timm`` / predict against real timm and our own sources.

timm parts are skipped with a reason when timm cannot be imported (install the test extra
with ``bash scripts/install_timm_extra.sh .venv/bin/python``).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from nfnets_jax import predict
from nfnets_jax import pretrained
from nfnets_jax.errors import CheckpointError, UserError
from nfnets_jax.weights import timm_parity as parity

ROOT = pathlib.Path(__file__).resolve().parents[1]

try:
  import timm
  import torch
  TIMM_ERROR = None
except Exception as e:  # noqa: BLE001  torchvision on a CPU torch fails with RuntimeError.
  TIMM_ERROR = f"timm is not importable ({type(e).__name__}: {e})"
needs_timm = pytest.mark.skipif(TIMM_ERROR is not None, reason=str(TIMM_ERROR))


def _perturbed_timm(num_classes, seed=0):
  torch.manual_seed(seed)
  model = timm.create_model("test_nfnet", pretrained=False, num_classes=num_classes).eval()
  return parity.perturb_(model, seed + 1)


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
  """timm's test_nfnet (7 classes, every tensor perturbed) saved by timm's own save_for_hf."""
  if TIMM_ERROR:
    pytest.skip(TIMM_ERROR)
  from timm.models import _hub
  model = _perturbed_timm(7)
  folder = tmp_path_factory.mktemp("hub") / "test_nfnet"
  _hub.save_for_hf(model, str(folder), safe_serialization=True)
  return str(folder), model


@needs_timm
def test_load_hub_folder_metadata_and_logits(hub_folder):
  folder, torch_model = hub_folder
  m = pretrained.load(folder)
  cfg = json.load(open(os.path.join(folder, "config.json")))["pretrained_cfg"]
  assert (m.name, m.timm_name, m.num_classes, m.kind) == ("timm_test_nfnet", "test_nfnet", 7,
                                                          "timm")
  assert m.image_size == cfg["input_size"][-1]
  assert m.eval_image_size == (cfg.get("test_input_size") or cfg["input_size"])[-1]
  assert m.crop_pct == pytest.approx(cfg.get("test_crop_pct") or cfg["crop_pct"])
  assert m.mean == pytest.approx(tuple(cfg["mean"])) and m.std == pytest.approx(tuple(cfg["std"]))
  assert m.class_names is None and m.label(3) == "3"
  x = np.random.RandomState(0).randn(2, 48, 48, 3).astype(np.float32)
  assert parity.max_normalised_error(m.logits(x), parity.timm_logits(torch_model, x)) < 1e-4


@needs_timm
def test_bare_safetensors_needs_arch(hub_folder):
  folder, torch_model = hub_folder
  path = os.path.join(folder, "model.safetensors")
  with pytest.raises(CheckpointError, match="pass the timm architecture"):
    pretrained.load(path)
  m = pretrained.load(path, arch="test_nfnet")
  x = np.random.RandomState(1).randn(1, 40, 40, 3).astype(np.float32)
  assert parity.max_normalised_error(m.logits(x), parity.timm_logits(torch_model, x)) < 1e-4


@needs_timm
def test_save_timm_round_trip_loads_in_timm_with_the_same_logits(hub_folder, tmp_path):
  folder, torch_model = hub_folder
  m = pretrained.load(folder)
  out = tmp_path / "again"
  assert pretrained.save_timm(m, str(out)) == "test_nfnet"
  back = timm.create_model("test_nfnet", pretrained=True, pretrained_cfg_overlay=dict(
      file=str(out / "model.safetensors"), num_classes=7)).eval()
  x = np.random.RandomState(2).randn(2, 32, 32, 3).astype(np.float32)
  np.testing.assert_array_equal(parity.timm_logits(back, x), parity.timm_logits(torch_model, x))
  assert json.load(open(out / "config.json"))["num_classes"] == 7


@needs_timm
def test_preprocess_applies_the_timm_eval_recipe(hub_folder):
  m = pretrained.load(hub_folder[0])
  image = np.random.RandomState(3).randint(0, 256, (50, 70), np.uint8)  # grayscale, any size
  x = m.preprocess(image)
  assert x.shape == (1, m.eval_image_size, m.eval_image_size, 3)
  # A constant image stays constant: (v / 255 - mean) / std per channel.
  flat = m.preprocess(np.full((30, 20, 4), 128, np.uint8))  # RGBA
  want = (128 / 255 - np.asarray(m.mean)) / np.asarray(m.std)
  np.testing.assert_allclose(flat[0, 5, 5], want, rtol=1e-5)


def test_save_timm_refuses_a_model_without_timm_counterpart():
  m = pretrained.Pretrained(name="nf_demo_tiny", model_kwargs={}, num_classes=10, params={},
                            state={}, image_size=8, eval_image_size=8, crop_pct=1.0,
                            mean=(0.5,), std=(0.5,), channels=1)
  with pytest.raises(UserError, match="has no timm counterpart"):
    pretrained.save_timm(m, "/tmp/never_written")


def test_missing_source_and_unknown_file(tmp_path):
  with pytest.raises(CheckpointError, match="No weights at"):
    pretrained.load(str(tmp_path / "nothing"))
  junk = tmp_path / "junk.bin2"
  junk.write_bytes(b"\x01\x02garbage")
  with pytest.raises(CheckpointError, match="not a readable checkpoint"):
    pretrained.load(str(junk))


@needs_timm
def test_predict_cli_on_a_hub_folder(hub_folder, tmp_path):
  from PIL import Image
  paths = []
  for i, (shape, ext) in enumerate([((40, 60, 3), "png"), ((33, 33), "jpg"),
                                    ((20, 50, 4), "png"), ((64, 64, 3), "bmp"),
                                    ((30, 30, 3), "gif")]):
    p = tmp_path / f"img{i}.{ext}"
    Image.fromarray(np.random.RandomState(i).randint(0, 256, shape, np.uint8)).save(p)
    paths.append(str(p))
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not an image")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "predict.py"),
       f"--checkpoint={hub_folder[0]}", "--top_k=3", "--json", "--batch_size=2",
       paths[0], str(bad), *paths[1:]], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "broken.png" in proc.stderr and "Traceback" not in proc.stderr
  lines = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [r["path"] for r in lines] == paths
  m = pretrained.load(hub_folder[0])
  from nfnets_jax.data import image_files
  probs = m.predict([image_files.read_image(p) for p in paths])
  for record, p in zip(lines, probs):
    assert [t["index"] for t in record["top_k"]] == list(np.argsort(-p, kind="stable")[:3])
    assert record["top_k"][0]["prob"] == pytest.approx(float(p.max()), rel=1e-5)
    assert record["top_k"][0]["label"] == str(record["top_k"][0]["index"])


def test_imagenet_class_names_come_from_tfds():
  names = pretrained.imagenet_class_names()
  assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
  assert names[999] == "toilet tissue"


def test_predict_top_classes_and_text_format():
  m = pretrained.Pretrained(name="x", model_kwargs={}, num_classes=3, params={}, state={},
                            image_size=8, eval_image_size=8, crop_pct=1.0, mean=(0.,),
                            std=(1.,), class_names=("cat", "dog", "eel"))
  top = predict.top_classes(m, np.asarray([0.2, 0.5, 0.3]), 2)
  assert top == [{"label": "dog", "index": 1, "prob": 0.5}, {"label": "eel", "index": 2,
                                                              "prob": 0.3}]
  assert predict.format_text("a.png", top).splitlines()[1].split() == ["50.00%", "dog", "(1)"]


def test_bad_sources_get_one_line_saying_what_to_do(tmp_path, capsys):
  """A folder without weights, a text file given as weights: what is wrong, what to pass."""
  import ml_collections
  from nfnets_jax.engine import finetune
  from nfnets_jax.errors import ConfigError
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("hello")
  with pytest.raises(CheckpointError) as info:
    pretrained.load(str(empty))
  message = str(info.value)
  assert "holds no weights" in message and "notes.txt" in message and "--config" not in message
  config = ml_collections.ConfigDict(dict(init_from=str(empty), model=""))
  with pytest.raises(ConfigError, match=r"config.init_from=.*holds no weights.*training workdir"):
    finetune.resolve_config(config)
  sys.path.insert(0, str(ROOT / "scripts"))
  import convert_timm_checkpoint  # pylint: disable=import-outside-toplevel
  text = tmp_path / "weights.txt"
  text.write_text("not weights\n")
  assert convert_timm_checkpoint.main(["--input", str(text), "--output", str(tmp_path / "o.npz"),
                                       "--timm_name", "test_nfnet"]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "is not a torch checkpoint" in err and "pickle" in err
  assert "a torch pickle" not in err


def test_load_params_choice_is_explicit(tmp_path):
  with pytest.raises(CheckpointError, match="params='both'"):
    pretrained.load(str(ROOT / "tests" / "fixtures" / "legacy_timm_test_nfnet_small.npz"),
                    params="both")
  with pytest.raises(CheckpointError, match="EMA parameters exist only in our training"):
    pretrained.load(str(ROOT / "tests" / "fixtures" / "legacy_timm_test_nfnet_small.npz"),
                    params="ema")
  assert pretrained.params_choice(None) == "ema_if_any"
  assert pretrained.params_choice(True) == "ema" and pretrained.params_choice(False) == "raw"
