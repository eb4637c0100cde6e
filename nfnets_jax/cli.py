"""What every command-line entry point shares: flag parsing and errors as one clear line.

``run(main)`` replaces ``absl.app.run(main)``. An expected error (a mistyped config override, a
config file that is not there, a flag value, any ``errors.UserError`` raised by the library:
missing data, a bad checkpoint, a workdir that is a file, ...) prints ``Error: <what is wrong
and how to fix it>`` on stderr and exits with status 2 (flags) or 1 (everything else), without
a traceback. Anything else is a bug and keeps its traceback. ``--show_traceback`` shows the
traceback of expected errors too. When the output is not a terminal (a log file), progress bars
are off: their redrawing leaves escape codes in the file.

Scripts that tests import together define their flags in their own ``flags.FlagValues`` (the
same names would clash in ``FLAGS``) and pass it to ``run``; ``call`` runs such a script's
``main`` in-process and returns its exit status. Model constructor overrides have one spelling
everywhere: ``--model_kw key=value`` (repeatable), ``--model_kwargs='{JSON}'`` still accepted.
"""
from __future__ import annotations

import ast
import json
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from nfnets_jax.errors import UserError
from nfnets_jax.errors import sentence

FLAGS = flags.FLAGS
flags.DEFINE_bool("show_traceback", False,
                  "Show the full traceback of expected errors (bad config, data, checkpoint) "
                  "instead of one line.")
flags.disclaim_key_flags()  # the flags of define_model_kw belong to the script calling it

EXIT_USAGE = 2
EXIT_ERROR = 1
_CONFIG_FLAG_TYPE = "config object"  # ml_collections' config_flags
_adopted: List[flags.FlagValues] = []  # the script flags now in FLAGS (see ``_adopt``)


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


def _config_file_args(argv: Sequence[str]):
  """``(flag, value)`` of every config-file flag (``--config=configs/x.py:arg``) in ``argv``."""
  names = {name for name in FLAGS if FLAGS[name].flag_type() == _CONFIG_FLAG_TYPE}
  for i, arg in enumerate(argv[1:], 1):
    name, eq, value = arg[2:].partition("=")
    if not arg.startswith("--") or name not in names:
      continue
    if not eq:
      if i + 1 >= len(argv):
        continue
      value = argv[i + 1]
    yield f"--{name}", value


def missing_config_file(argv: Sequence[str]) -> Optional[str]:
  """One line for a config file that does not exist; ml_collections reports it later, as two
  chained tracebacks, at the first use of the config."""
  for flag, value in _config_file_args(argv):
    path = value.split(":", 1)[0]
    if os.path.isfile(path):
      continue
    where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
    folder = os.path.dirname(path) or "."
    configs = sorted(f for f in os.listdir(folder) if f.endswith(".py")
                     and not f.startswith("_")) if os.path.isdir(folder) else []
    hint = (f"the configs in {folder}/ are {', '.join(configs)}" if configs
            else "check the path, e.g. --config=configs/fashion_mnist.py")
    return f"{flag}={value}: there is no file {path}{where}; {hint}."
  return None


def describe_flag_error(error: flags.Error) -> str:
  """One line for a bad flag; for a config file whose ``get_config`` failed (an unknown
  ``:arg``, say), its error's last line instead of the traceback that absl's message holds."""
  text = str(error).strip()
  if "Traceback (most recent call last)" not in text:
    return f"{sentence(text)} Run with --helpfull to see every flag."
  flag = re.match(r"flag (--\S+?): ", text)
  last = text.splitlines()[-1].strip()
  last = re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", last)
  return sentence(f"{flag.group(1)}: {last}" if flag else last)


def parse_flags(argv: List[str]) -> List[str]:
  """``absl`` flag parsing with one-line errors for bad flags, config files and overrides."""
  wants_traceback = _wants_traceback(argv)
  missing = None if wants_traceback else missing_config_file(argv)
  if missing:
    fail(missing, EXIT_USAGE)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    if wants_traceback:
      raise
    fail(describe_flag_error(e), EXIT_USAGE)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections' config flags raise these while applying --config.a.b=value.
    if wants_traceback:
      raise
    fail(describe_override_error(argv, e), EXIT_USAGE)
  return []  # not reached


def define_model_kw(name: str = "model_kw", what: str = "the model",
                    flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines ``--<name> key=value`` (repeatable) and its older JSON spelling ``--<name>args``."""
  flags.DEFINE_multi_string(
      name, [], f"Constructor argument of {what}: key=value, the value a Python literal, "
      f"e.g. --{name} width=0.5 --{name} 'depths=(1,1,1,1)'", flag_values=flag_values)
  flags.DEFINE_string(f"{name}args", None,
                      f"The same as one JSON object (older spelling), e.g. "
                      f"--{name}args='{{\"width\": 0.5}}'; --{name} wins on a clash.",
                      flag_values=flag_values)


def parse_model_kwargs(items: Sequence[str], as_json: Optional[str] = None,
                       name: str = "model_kw") -> dict:
  """``['width=0.5', 'depths=(1,1,1,1)']`` -> ``{'width': 0.5, 'depths': (1, 1, 1, 1)}``: values
  read as Python literals, else JSON (``true``, ``null``), else kept as strings; ``as_json`` (the
  ``--<name>args`` spelling) first. A malformed item raises ``app.UsageError``."""
  out = {}
  if as_json:
    try:
      out.update(json.loads(as_json))
    except (TypeError, ValueError) as e:  # not JSON, or not an object
      raise app.UsageError(f"--{name}args={as_json} is not a JSON object ({e}); "
                           f"e.g. --{name}args='{{\"width\": 0.5}}'.") from None
  for item in items or []:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise app.UsageError(f"--{name} expects key=value, got {item!r}; e.g. --{name} width=0.5.")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      try:
        out[key] = json.loads(value)
      except json.JSONDecodeError:
        out[key] = value
  return out


def model_kwargs(flag_values: flags.FlagValues = FLAGS, name: str = "model_kw") -> dict:
  """The constructor overrides given with ``define_model_kw(name)``'s two flags."""
  return parse_model_kwargs(flag_values[name].value, flag_values[f"{name}args"].value, name)


def _quiet_progress_bars() -> None:
  """No progress bars when the output is not a terminal: their redrawing leaves escape codes in
  log files. tqdm reads TQDM_DISABLE when imported; TFDS has its own switch, set here when TFDS
  is already imported (importing it here would import TensorFlow too early)."""
  if sys.stdout.isatty() and sys.stderr.isatty():
    return
  os.environ.setdefault("TQDM_DISABLE", "1")
  tfds_bars = sys.modules.get("tensorflow_datasets.core.utils.tqdm_utils")
  if tfds_bars is not None:
    tfds_bars.disable_progress_bar()


def _adopt(flag_values: Optional[flags.FlagValues]) -> None:
  """Puts a script's own flags into ``FLAGS`` (where absl's help and parsing see them), taking
  out the flags of a script adopted before: tests import several scripts into one process."""
  if flag_values is None or flag_values is FLAGS or any(f is flag_values for f in _adopted):
    return
  for other in _adopted:
    FLAGS.remove_flag_values(other)
  _adopted[:] = [flag_values]
  FLAGS.append_flag_values(flag_values)
  for module, module_flags in flag_values.flags_by_module_dict().items():
    for flag in module_flags:
      FLAGS.register_flag_by_module(module, flag)


def _guarded(main: Callable[[List[str]], Optional[int]]):
  """``main`` with expected errors printed as one line (``fail``)."""

  def guarded(argv):
    if not FLAGS["verbosity"].present:
      # Library INFO logs (TFDS, orbax) would drown the progress lines; --verbosity=0 shows them.
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except app.UsageError as e:
      if FLAGS.show_traceback:
        raise
      fail(f"{sentence(e)} Run with --help to see the flags.", EXIT_USAGE)
    except UserError as e:
      if FLAGS.show_traceback:
        raise
      fail(str(e))
    return None  # not reached

  return guarded


def run(main: Callable[[List[str]], Optional[int]],
        flag_values: Optional[flags.FlagValues] = None) -> None:
  """``absl.app.run(main)`` with expected errors reported as one line (see module doc);
  ``flag_values``: the script's own flags, when it does not define them in ``FLAGS``."""
  _adopt(flag_values)
  _quiet_progress_bars()
  app.run(_guarded(main), flags_parser=parse_flags)


def call(main: Callable[[List[str]], Optional[int]], argv: Sequence[str],
         flag_values: flags.FlagValues = FLAGS) -> int:
  """Runs ``main`` as ``run`` would for the command-line arguments ``argv`` (without the
  program name), in this process, and returns the exit status instead of exiting."""
  _adopt(flag_values)
  FLAGS.unparse_flags()  # flags not in argv get their defaults, not an earlier call's values
  try:
    args = parse_flags([sys.argv[0], *argv])
    if flag_values is not FLAGS:
      flag_values.mark_as_parsed()
    status = _guarded(main)(args)
  except SystemExit as e:
    status = e.code
  if status is None:
    return 0
  return status if isinstance(status, int) else EXIT_ERROR
