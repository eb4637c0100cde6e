"""Converts DeepMind's released NFNet pickle (``F0_haiku.npz`` ...) to a plain ``.npz``.

  python scripts/convert_deepmind_checkpoint.py --input F0_haiku.npz --output f0.npz

The input's MD5 is checked against the released files before it is unpickled (with a
restricted loader); a file with another MD5 needs ``--trust`` or ``--md5``. Every parameter
name and shape is validated against the model. The output contains no pickle and loads with
``nfnets_jax.pretrained.load(path)`` (architecture, eval recipe and class names recorded).
Non-standard models: ``--model_kw width=0.5`` (repeatable). Errors are one line.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from nfnets_jax import cli  # noqa: E402
from nfnets_jax import pretrained  # noqa: E402
from nfnets_jax.errors import CheckpointError  # noqa: E402
from nfnets_jax.errors import UserError  # noqa: E402
from nfnets_jax.weights import deepmind  # noqa: E402

# Its own flags: tests import this script and convert_timm_checkpoint.py together.
FLAGS = flags.FlagValues()
flags.DEFINE_string("input", None, "DeepMind F*_haiku.npz (a pickle).", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Plain .npz to write.", flag_values=FLAGS)
flags.DEFINE_string("variant", None, "F0..F7 (or F0+..); default: identified by the file's MD5.",
                    flag_values=FLAGS)
flags.DEFINE_string("md5", None, "Expected MD5 of a file you trust.", flag_values=FLAGS)
flags.DEFINE_bool("trust", False, "Unpickle a file whose MD5 is not a released checkpoint's.",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "Classifier size; default: read from the file.",
                     flag_values=FLAGS)
cli.define_model_kw("model_kw", "the NFNet (non-standard models)", flag_values=FLAGS)
flags.mark_flags_as_required(["input", "output"], flag_values=FLAGS)


def convert(argv) -> None:
  """Converts as the flags say; errors (MD5, names, shapes) are ``UserError``s."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  model_kw = cli.model_kwargs(FLAGS)
  try:
    arch = deepmind.registry_name(FLAGS.variant) if FLAGS.variant else None
  except ValueError as e:
    raise app.UsageError(f"--variant={FLAGS.variant}: {e}") from None
  try:
    model = pretrained.load(FLAGS.input, arch, trust=FLAGS.trust, expected_md5=FLAGS.md5,
                            num_classes=FLAGS.num_classes, model_kwargs=model_kw)
    if model.kind != "deepmind":
      raise CheckpointError(f"{FLAGS.input} is not a DeepMind pickle (it is a {model.kind} "
                            "source); it needs no conversion: pretrained.load reads it.")
    md5 = deepmind.file_md5(FLAGS.input)
    pretrained.save_npz(model, FLAGS.output, source=os.path.basename(FLAGS.input),
                        source_md5=md5)
  except UserError:
    raise
  except OSError as e:  # a path given on the command line cannot be read or written
    cli.fail(str(e))
  n = sum(v.size for d in model.params.values() for v in d.values())
  print(f"wrote {FLAGS.output}: {model.name}, {n:,} parameters, source md5 {md5}")


def main(argv=None) -> int:
  """Runs the command line ``argv`` (default ``sys.argv[1:]``) here; returns the exit status."""
  return cli.call(convert, sys.argv[1:] if argv is None else argv, FLAGS)


if __name__ == "__main__":
  cli.run(convert, FLAGS)
