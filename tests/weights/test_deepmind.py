"""DeepMind checkpoint loading: MD5 gate, restricted unpickling, validation, conversion.

The "DeepMind-format" files here are dill pickles of {module: {name: float32 array}} for a tiny
NFNet-F0 (width 0.125, group width 8), written by the tests; no weights are downloaded.
"""
import os
import pickle
import runpy

import dill
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.weights import deepmind
from nfnets_jax import models
from nfnets_jax.models import nfnet

TINY = dict(width=0.125, group_width=8)
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts",
                      "convert_deepmind_checkpoint.py")


@pytest.fixture(scope="module")
def tiny_params():
  """Random float32 params with the tiny model's exact names and shapes (no compile)."""
  forward = hk.transform(lambda x: nfnet.NFNet(10, grouped_conv_impl="native", **TINY)(
      x, is_training=False))
  shapes = jax.eval_shape(forward.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  shapes = models.unstack_blocks(shapes)  # DeepMind's files name blocks one by one
  rng = np.random.default_rng(0)
  return {m: {n: rng.standard_normal(a.shape).astype(np.float32) for n, a in d.items()}
          for m, d in shapes.items()}


def _write_dill(params, path):
  with open(path, "wb") as f:
    dill.dump(params, f)
  return deepmind.file_md5(path)


def _assert_equal(a, b):
  assert sorted(a) == sorted(b)
  for m in a:
    assert sorted(a[m]) == sorted(b[m])
    for n in a[m]:
      assert a[m][n].dtype == np.float32
      np.testing.assert_array_equal(a[m][n], b[m][n])


def test_known_md5_table_matches_facts():
  assert deepmind.KNOWN_MD5["F0"] == "0a41039da1cb43adf47f1b7d86ddfe0f"
  assert deepmind.KNOWN_MD5["F6"] == "b16cca40ac1ecec2bd5e3273866da0c1"
  assert len(deepmind.KNOWN_MD5) == 7


def test_dill_pickle_loads_and_equals(tiny_params, tmp_path):
  path = tmp_path / "tiny_haiku.npz"
  md5 = _write_dill(tiny_params, path)
  loaded = deepmind.load_deepmind_checkpoint(path, "F0", expected_md5=md5, **TINY)
  _assert_equal(loaded, tiny_params)
  # trust=True without an MD5 works too, and the variant is inferred from the tree.
  loaded = deepmind.load_deepmind_checkpoint(path, trust=True, **TINY)
  _assert_equal(loaded, tiny_params)


@pytest.mark.parametrize("protocol", [2, 4])
def test_plain_pickle_protocols_load(tiny_params, tmp_path, protocol):
  # Protocol 2 stores array bytes via _codecs.encode; numpy pickles via _reconstruct.
  path = tmp_path / "p.pkl"
  with open(path, "wb") as f:
    pickle.dump(tiny_params, f, protocol=protocol)
  loaded = deepmind.load_deepmind_checkpoint(path, "F0", trust=True, **TINY)
  _assert_equal(loaded, tiny_params)


def test_unknown_md5_refused_without_trust(tiny_params, tmp_path):
  path = tmp_path / "x.npz"
  _write_dill(tiny_params, path)
  with pytest.raises(deepmind.CheckpointError, match="not one of DeepMind's released"):
    deepmind.load_deepmind_checkpoint(path, "F0", **TINY)


def test_md5_mismatch_refused(tiny_params, tmp_path):
  path = tmp_path / "x.npz"
  _write_dill(tiny_params, path)
  with pytest.raises(deepmind.CheckpointError, match="MD5 mismatch"):
    deepmind.load_deepmind_checkpoint(path, "F0", expected_md5="0" * 32, **TINY)


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("touch " + _RunsCode.marker,))


@pytest.mark.parametrize("payload", ["toplevel", "nested"])
def test_code_running_pickle_refused_without_running(tmp_path, payload):
  marker = tmp_path / "pwned"
  _RunsCode.marker = str(marker)
  obj = _RunsCode() if payload == "toplevel" else {"NFNet/~/linear": {"w": _RunsCode()}}
  path = tmp_path / "evil.npz"
  md5 = _write_dill(obj, path)
  with pytest.raises(deepmind.UnsafePickleError, match="would run code"):
    deepmind.load_deepmind_checkpoint(path, "F0", expected_md5=md5)
  with pytest.raises(deepmind.UnsafePickleError, match="posix.system|os.system"):
    deepmind.load_deepmind_checkpoint(path, "F0", trust=True)
  assert not marker.exists()


def test_object_arrays_refused(tmp_path):
  path = tmp_path / "obj.pkl"
  with open(path, "wb") as f:
    pickle.dump({"NFNet/~/linear": {"w": np.array([1, "a"], dtype=object)}}, f)
  with pytest.raises(deepmind.CheckpointError, match="not a plain number"):
    deepmind.load_deepmind_checkpoint(path, "F0", trust=True)


def test_wrong_shapes_and_missing_names_refused(tiny_params, tmp_path):
  bad = {m: dict(d) for m, d in tiny_params.items()}
  bad["NFNet/~/nf_block_3/~/conv1"]["w"] = np.zeros((3, 3, 8, 7), np.float32)
  del bad["NFNet/~/final_conv"]["gain"]
  bad["NFNet/~/extra"] = {"w": np.zeros((2,), np.float32)}
  path = tmp_path / "bad.npz"
  md5 = _write_dill(bad, path)
  with pytest.raises(deepmind.CheckpointError) as e:
    deepmind.load_deepmind_checkpoint(path, "F0", expected_md5=md5, **TINY)
  msg = str(e.value)
  assert "missing parameters: NFNet/~/final_conv//gain" in msg
  assert "unexpected parameters: NFNet/~/extra//w" in msg
  assert "NFNet/~/nf_block_3/~/conv1//w has (3, 3, 8, 7)" in msg


def test_wrong_variant_refused(tiny_params, tmp_path):
  # A tiny F0 tree checked as F1: F1 has 24 blocks, so names are missing.
  path = tmp_path / "f0.npz"
  md5 = _write_dill(tiny_params, path)
  with pytest.raises(deepmind.CheckpointError, match=r"NFNet-F1.*missing parameters"):
    deepmind.load_deepmind_checkpoint(path, "F1", expected_md5=md5, **TINY)


def test_truncated_and_non_pickle_refused(tiny_params, tmp_path):
  path = tmp_path / "full.npz"
  _write_dill(tiny_params, path)
  data = path.read_bytes()
  cut = tmp_path / "cut.npz"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(deepmind.CheckpointError, match="truncated or corrupt"):
    deepmind.load_deepmind_checkpoint(cut, "F0", trust=True, **TINY)
  text = tmp_path / "text.npz"
  text.write_bytes(b"hello, not a pickle")
  with pytest.raises(deepmind.CheckpointError, match="not a pickle"):
    deepmind.load_deepmind_checkpoint(text, "F0", trust=True)


def test_npz_round_trip_and_load_params(tiny_params, tmp_path):
  path = tmp_path / "p.npz"
  deepmind.save_params_npz(tiny_params, path, metadata={"model_name": "nfnet_f0",
                                                           "model_overrides": TINY})
  with np.load(path, allow_pickle=False) as data:  # Plain arrays only.
    assert "NFNet/~/nf_block_3/~/conv1//w" in data.files
  _assert_equal(deepmind.load_params(path, "nfnet_f0"), tiny_params)
  with pytest.raises(deepmind.CheckpointError, match="holds nfnet_f0 parameters"):
    deepmind.load_params(path, "nfnet_f1")


def test_converter_round_trip(tiny_params, tmp_path, capsys):
  src = tmp_path / "F_tiny_haiku.npz"
  md5 = _write_dill(tiny_params, src)
  out = tmp_path / "tiny.npz"
  main = runpy.run_path(SCRIPT, run_name="convert")["main"]
  argv = ["--input", str(src), "--output", str(out), "--variant", "F0",
          "--model_kw", "width=0.125", "--model_kw", "group_width=8"]
  assert main(argv) == 1  # Unknown MD5, neither --md5 nor --trust.
  assert "not one of DeepMind's released" in capsys.readouterr().err
  assert not out.exists()
  assert main(argv + ["--md5", md5]) == 0
  params, meta = deepmind.load_params_npz(out)
  _assert_equal(params, tiny_params)
  assert meta.model_name == "nfnet_f0" and meta.source_md5 == md5
  assert meta.model_overrides == TINY
  _assert_equal(deepmind.load_params(out, "nfnet_f0"), tiny_params)


def test_known_md5_identifies_variant(tiny_params, tmp_path, monkeypatch):
  # Pretend the tiny file is a released checkpoint: no trust needed, variant from the MD5,
  # and a caller who expects another variant is told what the file is.
  path = tmp_path / "F0_haiku.npz"
  md5 = _write_dill(tiny_params, path)
  monkeypatch.setitem(deepmind.VARIANT_BY_MD5, md5, "F0")
  _assert_equal(deepmind.load_deepmind_checkpoint(path, **TINY), tiny_params)
  _assert_equal(deepmind.load_params(path, "nfnet_f0", **TINY), tiny_params)
  with pytest.raises(deepmind.CheckpointError, match="released NFNet-F0 checkpoint .*not "
                                                        "NFNet-F2"):
    deepmind.load_deepmind_checkpoint(path, "F2", **TINY)
