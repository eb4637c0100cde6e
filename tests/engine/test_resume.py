"""Honest resume (``engine/train.py``, ``engine/validation.py``): a finished run is not trained or
evaluated again unless asked, a resume that would change the schedule of the workdir's
checkpoints is refused naming the field, and a run that never leaves warm-up says so."""
import json
import os
import pathlib
import shutil
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import synthetic  # noqa: E402
from nfnets_jax.engine import train  # noqa: E402
from nfnets_jax.engine import validation  # noqa: E402
from nfnets_jax.errors import ConfigError  # noqa: E402


def tiny(**overrides):
  c = synthetic.get_config("tiny")
  c.num_devices = 1
  c.update_from_flattened_dict(overrides)  # "optimizer.freeze" -> c.optimizer.freeze
  return c


def files(workdir):
  """Every file of a workdir with its bytes (checkpoints, metrics, run.json, events)."""
  out = {}
  for folder, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 3-step tiny run: (workdir, its summary)."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  return workdir, train.train_and_evaluate(tiny(), workdir)


def test_rerunning_a_finished_run_says_so_in_one_line_and_changes_nothing(finished, capsys):
  workdir, summary = finished
  before = files(workdir)
  capsys.readouterr()
  again = train.train_and_evaluate(tiny(checkpoint_every_steps=7), workdir)  # not a schedule
  out = capsys.readouterr().out
  assert out.count("\n") == 1 and "already holds this run finished (3 steps" in out
  assert f"top1={summary['final']['top1']:.4f}" in out and "eval_on_finished=True" in out
  assert again["final"] == summary["final"] and again["steps"] == 3
  assert files(workdir) == before


def test_eval_on_finished_evaluates_the_final_checkpoint_again(finished, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished[0], workdir)
  capsys.readouterr()
  again = train.train_and_evaluate(tiny(eval_on_finished=True), workdir)
  out = capsys.readouterr().out
  assert "Resumed from checkpoint 3" in out and "eval @ step 3" in out
  assert "Compiling the train step" not in out  # no step left to train
  assert again["start_step"] == 3 and again["final"] == finished[1]["final"]


@pytest.mark.parametrize("field,value,old", [
    ("num_train_steps", 5, "3"), ("batch_size", 32, "16"),
    ("optimizer.warmup_epochs", 1.0, "0.0"), ("optimizer.base_lr", 0.1, "0.2"),
    ("optimizer.schedule", "constant", "'cosine'"), ("optimizer.end_lr", 0.01, "0.0"),
    ("optimizer.lr_scale_batch", None, "256")])
def test_a_changed_schedule_field_is_refused_naming_it(finished, field, value, old):
  workdir = finished[0]
  before = files(workdir)
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(tiny(**{field: value}), workdir)
  message = str(e.value)
  assert "\n" not in message
  assert f"config.{field}={old}, but this config has {value!r}" in message
  assert "new --workdir" in message and f"--config.{field}={old} to resume" in message
  assert files(workdir) == before  # refused before anything was written


def test_num_epochs_counts_only_when_it_sets_the_step_count(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny(num_train_steps=None, num_epochs=0.04), workdir)  # 3 steps
  with pytest.raises(ConfigError, match=r"config.num_epochs=0.04, but this config has 0.05"):
    train.train_and_evaluate(tiny(num_train_steps=None, num_epochs=0.05), workdir)
  with pytest.raises(ConfigError, match=r"config.num_train_steps=None, but this config has 3"):
    train.train_and_evaluate(tiny(num_train_steps=3, num_epochs=0.04), workdir)
  # With num_train_steps set, num_epochs does not change the schedule.
  validation.check_resume(tiny(num_epochs=7.0), tiny(num_epochs=1.0).to_dict(), workdir)


def test_an_old_or_unknown_saved_config_is_not_compared(tmp_path):
  validation.check_resume(tiny(), None, str(tmp_path))
  saved = tiny().to_dict()
  saved["optimizer"]["from_a_newer_version"] = 1
  validation.check_resume(tiny(num_train_steps=9), saved, str(tmp_path))


def test_a_workdir_without_checkpoints_starts_afresh_with_any_schedule(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "run.json").write_text(json.dumps({"config": tiny(batch_size=64).to_dict()}))
  assert train.train_and_evaluate(tiny(num_train_steps=1), str(workdir))["steps"] == 1


def test_a_run_that_never_leaves_warm_up_gets_one_warning_line(tmp_path, capsys):
  # Fashion-MNIST's case in small: 30 steps of 64 per epoch with 5 warm-up epochs (320 steps).
  setup = validation.validate_config(tiny(num_train_steps=30, **{"optimizer.warmup_epochs": 5}))
  warning = validation.warmup_warning(tiny(**{"optimizer.warmup_epochs": 5}), setup)
  assert warning.startswith("Warning: all 30 steps are warm-up") and "320 steps" in warning
  assert "never reaching its peak 0.0125" in warning and "\n" not in warning
  # Three updates (rates of steps 0, 1, 2): a 3-step warm-up never reaches the peak either.
  for warmup_steps, warns in ((2, False), (3, True)):
    c = tiny(**{"optimizer.warmup_epochs": warmup_steps / 64})
    assert (validation.warmup_warning(c, validation.validate_config(c)) is not None) == warns
  capsys.readouterr()
  train.train_and_evaluate(tiny(**{"optimizer.warmup_epochs": 5}), str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert out.count("Warning: all 3 steps are warm-up") == 1
  train.train_and_evaluate(tiny(), str(tmp_path / "no_warmup"))
  assert "warm-up" not in capsys.readouterr().out
