"""The errors that bad input can cause, in one place below every room.

Everything a user can get wrong (a config value, a missing dataset, an unreadable checkpoint, a
path) raises a subclass of :class:`UserError` whose message says what is wrong and how to fix
it. The command-line entry points print such an error as one line and exit non-zero; anything
else is a bug and keeps its traceback. Each class also derives from the built-in exception
that callers caught before the rooms existed (``ValueError``, ``FileNotFoundError``, ...).
"""
from __future__ import annotations

import pickle


class UserError(Exception):
  """An expected error caused by the input; its message is the whole story."""


def sentence(text) -> str:
  """``text`` ending in one full stop: a message that already ends in one, joined into a longer
  message with ``f"{sentence(e)} Next..."``, must not end up with '..'."""
  text = str(text).rstrip()
  return text if text.endswith((".", "!", "?")) else text + "."


class ConfigError(UserError, ValueError):
  """A bad experiment config value; the message names the field and how to fix it."""


class DatasetNotFoundError(UserError, FileNotFoundError):
  """The dataset is not prepared where it was looked for (the message says how to prepare it)."""


class UnknownDatasetError(UserError, ValueError):
  """``config.dataset`` names no dataset that TFDS (or this package) knows."""


class DatasetError(UserError, ValueError):
  """A dataset exists but cannot be used as asked: an image folder's layout (empty or missing
  class folders, splits with other classes, no images, unreadable images), an unknown split."""


class CheckpointError(UserError, ValueError):
  """A weight file or checkpoint cannot be used (format, names, shapes, checksum)."""


class UnsafePickleError(CheckpointError, pickle.UnpicklingError):
  """A pickle asked for a global outside the whitelist (it could run code)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """Nothing exists at the checkpoint path that was given."""


class NoReadableCheckpointError(CheckpointError, FileNotFoundError):
  """Checkpoints exist in a directory but none of them can be read."""


class CheckpointSaveError(UserError, OSError):
  """Writing a checkpoint failed (disk full, permissions); earlier checkpoints are intact."""


class SweepError(UserError, ValueError):
  """A bad sweep grid: thresholds, batch sizes, baselines, a point index out of range."""


class SweepNotFoundError(UserError, FileNotFoundError):
  """A sweep directory holds no sweep points to collect (the sweep has not run there)."""


class EvaluationError(UserError, ValueError):
  """The checkpoint, config or dataset cannot be evaluated as asked."""


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss or gradient became NaN/Inf and ``config.nonfinite == 'stop'``; ``step`` is the
  first bad update (0-based) when known."""

  def __init__(self, message: str = "non-finite loss", step=None):
    super().__init__(message)
    self.step = step


class NonFiniteCheckpointError(UserError, ValueError):
  """Raised instead of saving a state whose parameters contain NaN or Inf."""
