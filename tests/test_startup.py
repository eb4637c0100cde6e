"""Start-up stays light: importing the engine, ``pretrained`` or the data package, and running an
entry point's ``--help``, never imports TensorFlow (seconds of start-up); it comes with the
first data read. Each check runs in a fresh interpreter, where ``sys.modules`` tells the truth."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "tensorflow_datasets")
_REPORT = ("import atexit, sys\n"
           "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in {heavy!r} "
           "if m in sys.modules)))\n")


def heavy_modules_after(code: str):
  """The HEAVY modules imported by the time a fresh interpreter running ``code`` exits."""
  out = subprocess.run([sys.executable, "-c", _REPORT.format(heavy=HEAVY) + code], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  lines = [l for l in out.stdout.splitlines() if l.startswith("HEAVY=")]
  assert lines, out.stdout[-2000:] + out.stderr[-2000:]
  return [m for m in lines[-1][len("HEAVY="):].split(",") if m]


def test_importing_the_library_imports_no_tensorflow():
  code = ("import nfnets_jax.engine, nfnets_jax.pretrained, nfnets_jax.data\n"
          "from nfnets_jax.data import SYNTHETIC, synthetic, get_dataset_info\n"
          "from nfnets_jax.engine import imagenet_real, train, validation\n")
  assert heavy_modules_after(code) == []


@pytest.mark.parametrize("entry_point", ["train", "evaluate", "predict"])
def test_entry_point_help_imports_no_tensorflow(entry_point):
  path = str(ROOT / "experiments" / f"{entry_point}.py")
  code = (f"import runpy\nsys.argv = [{path!r}, '--help']\n"
          f"runpy.run_path({path!r}, run_name='__main__')\n")
  assert heavy_modules_after(code) == []


def test_reading_data_imports_tensorflow_on_demand():
  # The check above can fail: the same probe sees TensorFlow once a TFDS-backed name is used.
  assert "tensorflow" in heavy_modules_after("from nfnets_jax.data import shard_bounds\n")


def test_every_public_name_of_the_data_package_resolves():
  from nfnets_jax import data  # pylint: disable=import-outside-toplevel
  from nfnets_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  for name in data.__all__:
    assert getattr(data, name) is not None, name
  assert data.DatasetInfo is pipeline.DatasetInfo and data.shard_bounds is pipeline.shard_bounds
  assert set(data.__all__) <= set(dir(data))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    getattr(data, "nope")
