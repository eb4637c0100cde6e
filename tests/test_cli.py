"""Bad input at the command line: one clear line on stderr, a non-zero exit, no traceback.

Runs the real entry points as a new user would (``experiments/*.py``, ``scripts/*.py``).
"""
import os
import pathlib
import re
import subprocess
import sys

from absl import app
from absl import flags
import pytest

from nfnets_jax import cli
from nfnets_jax.errors import sentence

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return env


def _run(script, *args, timeout=240):
  """``script`` in experiments/, or a path from the repository root (scripts/...)."""
  path = ROOT / script if "/" in script else ROOT / "experiments" / script
  return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                        timeout=timeout, env=_env(), cwd=ROOT)


def _run_code(code, timeout=240):
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=timeout, env=_env(), cwd=ROOT)


def _assert_one_line_error(proc, status, *fragments):
  assert proc.returncode == status, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert not re.search(r"(?<!\.)\.\.(?!\.)", errors[0]), errors[0]  # no '..' joins
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
  proc = _run_code(code)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "final: top1=" in proc.stdout
  assert "ALIVE []" in proc.stdout, proc.stdout[-2000:]
  assert (tmp_path / "w" / "checkpoints" / "3").is_dir()


def test_missing_config_file(tmp_path):
  proc = _run("train.py", "--config=configs/nope.py", f"--workdir={tmp_path / 'w'}")
  _assert_one_line_error(proc, 2, "--config=configs/nope.py: there is no file configs/nope.py",
                         "the configs in configs/ are", "fashion_mnist.py")
  assert not (tmp_path / "w").exists()


def test_unknown_config_argument(tmp_path):
  proc = _run("train.py", "--config=configs/synthetic.py:tiny2", f"--workdir={tmp_path / 'w'}")
  error = _assert_one_line_error(proc, 2)
  assert error == ("Error: --config=configs/synthetic.py:tiny2: Unknown config option(s) "
                   "['tiny2']; known: ['tiny'].")


def test_usage_error_is_one_line_not_the_whole_help():
  proc = _run("predict.py", "--checkpoint=nowhere")
  error = _assert_one_line_error(proc, 2)
  assert error == ("Error: Give one or more image paths after the flags. Run with --help to see "
                   "the flags.")
  assert "--top_k" not in proc.stderr


def test_sweep_collect_on_an_empty_folder(tmp_path):
  proc = _run("scripts/sweep_clipping.py", "collect", f"--workdir={tmp_path}")
  _assert_one_line_error(proc, 1, f"No sweep points found in {tmp_path}", "run the sweep first")


def test_sweep_help_names_the_sweep_config_and_its_grid():
  proc = _run("scripts/sweep_clipping.py", "--help")
  assert "configs/fashion_mnist_sweep.py" in proc.stdout
  assert "configs/fashion_mnist.py " not in proc.stdout
  assert ("3 batch sizes (64, 256, 1024) x 5 thresholds (0.01, 0.04, 0.16, 0.64, none) = 15"
          in proc.stdout)
  assert "(default: '0.01,0.04,0.16,0.64,none')" in proc.stdout
  assert "(default: '64,256,1024')" in proc.stdout


def test_missing_weights_same_line_for_evaluate_and_predict(tmp_path):
  missing = tmp_path / "no_weights"
  evaluate = _assert_one_line_error(_run("evaluate.py", f"--checkpoint={missing}"), 1,
                                    f"No weights at '{missing}'")
  predict = _assert_one_line_error(_run("predict.py", f"--checkpoint={missing}", "cat.png"), 1)
  assert predict == evaluate


@pytest.mark.parametrize("error, line", [
    (flags.IllegalFlagValueError("flag --batch=0: must be positive."),
     "flag --batch=0: must be positive. Run with --helpfull to see every flag."),
    (flags.UnrecognizedFlagError("bogus"),
     "Unknown command line flag 'bogus'. Run with --helpfull to see every flag.")])
def test_flag_errors_join_into_one_sentence(error, line):
  assert cli.describe_flag_error(error) == line
  assert sentence("No file.") == "No file." and sentence("No file") == "No file."


_FULL_DISK = """
import errno, runpy, sys
from orbax.checkpoint._src.handlers import pytree_checkpoint_handler as handler
real, saves = handler.PyTreeCheckpointHandler.async_save, []

class FullDisk:
  def result(self, timeout=None):
    raise OSError(errno.ENOSPC, "No space left on device")

async def save(self, *args, **kwargs):
  saves.append(1)
  futures = list(await real(self, *args, **kwargs) or [])
  return futures + [FullDisk()] if len(saves) > 2 else futures

handler.PyTreeCheckpointHandler.async_save = save
sys.argv = ["train.py", "--config=configs/synthetic.py:tiny", "--workdir=%s",
            "--config.num_train_steps=4", "--config.checkpoint_every_steps=1"]
runpy.run_path("experiments/train.py", run_name="__main__")
"""


def test_full_disk_during_training_is_one_line(tmp_path):
  """orbax's writer threads log a traceback each; the console shows only what to do."""
  workdir = tmp_path / "w"
  proc = _run_code(_FULL_DISK % workdir)
  log = workdir / "checkpoints" / "save_errors.log"
  _assert_one_line_error(proc, 1, "Saving checkpoint 3", "No space left on device",
                         "earlier checkpoints are intact (steps [1, 2])", str(log))
  assert "async_checkpointer" not in proc.stderr
  assert "Traceback" in log.read_text() and "No space left on device" in log.read_text()


_PROGRESS = """
import sys
from nfnets_jax import cli
%s
def main(argv):
  from tensorflow_datasets.core.utils import tqdm_utils
  for _ in tqdm_utils.tqdm(range(3), desc="a progress bar"):
    pass
cli.run(main)
"""


@pytest.mark.parametrize("tfds_first", [True, False])
def test_no_progress_bars_in_log_files(tfds_first):
  """Output to a file (not a terminal): TFDS's bars are off, imported before cli.run or after."""
  proc = _run_code(_PROGRESS % ("import tensorflow_datasets" if tfds_first else ""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "a progress bar" not in proc.stderr + proc.stdout
  assert "\r" not in proc.stderr + proc.stdout


def test_model_kw_spellings():
  assert cli.parse_model_kwargs(
      ["width=0.5", "depths=(1,1)", "activation=gelu", "use_se=true", "x=None"],
      '{"width": 0.25, "stem_width": 8}') == dict(
          width=0.5, depths=(1, 1), activation="gelu", use_se=True, x=None, stem_width=8)
  with pytest.raises(app.UsageError, match="--model_kw expects key=value, got 'width'"):
    cli.parse_model_kwargs(["width"])
  with pytest.raises(app.UsageError, match="--model_kwargs=.* is not a JSON object"):
    cli.parse_model_kwargs([], "{width: 1}")


def test_scripts_take_model_kw_and_the_older_json(tmp_path):
  """signal_propagation.py: --model_kw and --model_kwargs='{JSON}' give the same model."""
  csvs = []
  for i, spelling in enumerate([["--model_kw", "stem_width=5"],
                                ['--model_kwargs={"stem_width": 5}']]):
    out = tmp_path / str(i)
    proc = _run("scripts/signal_propagation.py", "--model=nf_demo_tiny", "--compare=",
                "--image_size=16", "--batch=2", f"--out_dir={out}", *spelling)
    assert proc.returncode == 0, proc.stderr[-3000:]
    csvs.append((out / "spp.csv").read_text())
  assert csvs[0] == csvs[1]
  proc = _run("scripts/signal_propagation.py", "--model=nf_demo_tiny", "--model_kw", "width")
  _assert_one_line_error(proc, 2, "--model_kw expects key=value, got 'width'")
