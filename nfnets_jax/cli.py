"""What every command-line entry point shares: flag parsing and errors as one clear line.

``run(main)`` replaces ``absl.app.run(main)``. An expected error (a mistyped config override, a
flag value, any ``errors.UserError`` raised by the library: missing data, a bad checkpoint, a
workdir that is a file, ...) prints ``Error: <what is wrong and how to fix it>`` on stderr and
exits with status 2 (flags) or 1 (everything else), without a traceback. Anything else is a bug
and keeps its traceback. ``--show_traceback`` shows the traceback of expected errors too.
"""
from __future__ import annotations

import ast
import re
import sys
from typing import Callable, List

from absl import app
from absl import flags
from absl import logging

from nfnets_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_bool("show_traceback", False,
                  "Show the full traceback of expected errors (bad config, data, checkpoint) "
                  "instead of one line.")

EXIT_USAGE = 2
EXIT_ERROR = 1


def fail(message: str, status: int = EXIT_ERROR):
  """Prints ``Error: message`` on stderr and exits with ``status``."""
  print(f"Error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _wants_traceback(argv: List[str]) -> bool:
  return any(a in ("--show_traceback", "--show_traceback=true", "--show_traceback=True")
             for a in argv)


def describe_override_error(argv: List[str], error: BaseException) -> str:
  """One line for an exception raised while ml_collections applied a ``--config.x=y`` flag."""
  text = str(error).replace("\\n", "\n").replace("\\'", "'").strip("'\" ")
  suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  if suggestion:
    wrong = suggestion.group(2)
    culprit = next((a for a in overrides if re.search(rf"[.=]{re.escape(wrong)}\b", a)), None)
    where = f"{culprit.split('=')[0]}: " if culprit else ""
    return (f"{where}the config has no field {wrong!r}; did you mean "
            f"{suggestion.group(1)!r}?")
  first = text.splitlines()[0] if text else type(error).__name__
  key = first.strip("'\" ")
  culprit = next((a for a in overrides
                  if key.isidentifier() and key in a.split("=")[0].split(".")), None)
  if culprit:
    return (f"{culprit.split('=')[0]}: the config has no field {key!r}; see the fields in the "
            "config file (or --helpfull).")
  return f"a --config override could not be applied: {first}"


def parse_model_kwargs(items) -> dict:
  """``['width=0.5', 'depths=(1,1,1,1)']`` -> ``{'width': 0.5, 'depths': (1, 1, 1, 1)}``
  (values read as Python literals, else kept as strings)."""
  out = {}
  for item in items or []:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--model_kw expects key=value, got {item!r}.")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def parse_flags(argv: List[str]) -> List[str]:
  """``absl`` flag parsing with one-line errors for bad flags and config overrides."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    if _wants_traceback(argv):
      raise
    fail(f"{e}. Run with --helpfull to see every flag.", EXIT_USAGE)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections' config flags raise these while applying --config.a.b=value.
    if _wants_traceback(argv):
      raise
    fail(describe_override_error(argv, e), EXIT_USAGE)
  return []  # not reached


def run(main: Callable[[List[str]], None]) -> None:
  """``absl.app.run(main)`` with expected errors reported as one line (see module doc)."""

  def guarded(argv):
    if not FLAGS["verbosity"].present:
      # Library INFO logs (TFDS, orbax) would drown the progress lines; --verbosity=0 shows them.
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except UserError as e:
      if FLAGS.show_traceback:
        raise
      fail(str(e))

  app.run(guarded, flags_parser=parse_flags)
