"""Bad input at the command line: one clear line on stderr, a non-zero exit, no traceback.

Runs the real entry points as a new user would (``experiments/train.py``, ``evaluate.py``).
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script, *args, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args],
                        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
  return proc


def _assert_one_line_error(proc, status, *fragments):
  assert proc.returncode == status, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  return errors[0]


def test_mistyped_config_key_suggests_the_field(tmp_path):
  proc = _run("train.py", "--config=configs/synthetic.py:tiny", f"--workdir={tmp_path / 'w'}",
              "--config.optimizer.clipin=0.1")
  _assert_one_line_error(proc, 2, "--config.optimizer.clipin", "'clipin'",
                         "did you mean 'clipping'")
  assert not (tmp_path / "w").exists()


def test_badly_typed_config_value(tmp_path):
  proc = _run("train.py", "--config=configs/synthetic.py:tiny", f"--workdir={tmp_path / 'w'}",
              "--config.batch_size=abc")
  _assert_one_line_error(proc, 2, "--config.batch_size=abc", "invalid literal")


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("precious")
  proc = _run("train.py", "--config=configs/synthetic.py:tiny", f"--workdir={path}")
  _assert_one_line_error(proc, 1, str(path), "is an existing file, not a directory")
  assert path.read_text() == "precious"


def test_unknown_dataset_name(tmp_path):
  proc = _run("train.py", "--config=configs/synthetic.py:tiny", f"--workdir={tmp_path / 'w'}",
              "--config.dataset=no_such_dataset")
  _assert_one_line_error(proc, 1, "'no_such_dataset' is not a TFDS dataset name",
                         "fashion_mnist")


def test_random_bytes_as_checkpoint(tmp_path):
  path = tmp_path / "weights.npz"
  path.write_bytes(bytes(range(7, 256)) * 8)
  proc = _run("evaluate.py", "--config=configs/synthetic.py:tiny", f"--checkpoint={path}")
  _assert_one_line_error(proc, 1, "is not a readable checkpoint", "neither a zip archive",
                         "nor a pickle")


def test_show_traceback_keeps_the_traceback(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x")
  proc = _run("train.py", "--config=configs/synthetic.py:tiny", f"--workdir={path}",
              "--show_traceback")
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.parametrize("argv", [["--config.optimizer.clipin=0.1"], ["--config.clipin=0.1"]])
def test_describe_override_error_names_the_flag(argv):
  from nfnets_jax import cli
  from configs import default
  config = default.get_default()
  with pytest.raises(AttributeError) as e:
    getattr(config.optimizer if "optimizer" in argv[0] else config, "clipin")
  message = cli.describe_override_error(["train.py"] + argv, e.value)
  assert message.startswith(argv[0].split("=")[0] + ": the config has no field 'clipin'")


def test_train_cli_leaves_no_thread_alive_at_exit(tmp_path):
  """The cause of a hang at interpreter exit would be a non-daemon thread still running (input
  pipeline, asynchronous checkpointing, TensorBoard writer): none may be left."""
  code = (
      "import runpy, sys, threading\n"
      f"sys.argv = ['train.py', '--config=configs/synthetic.py:tiny', "
      f"'--workdir={tmp_path / 'w'}', '--config.checkpoint_every_steps=1']\n"
      "try:\n"
      "  runpy.run_path('experiments/train.py', run_name='__main__')\n"
      "except SystemExit as e:\n"
      "  assert not e.code, e.code\n"
      "alive = [t.name for t in threading.enumerate()\n"
      "         if t is not threading.main_thread() and not t.daemon]\n"
      "print('ALIVE', alive)\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "final: top1=" in proc.stdout
  assert "ALIVE []" in proc.stdout, proc.stdout[-2000:]
  assert (tmp_path / "w" / "checkpoints" / "3").is_dir()
