"""Converts DeepMind's released NFNet pickle (``F0_haiku.npz`` ...) to a plain ``.npz``.

  python scripts/convert_deepmind_checkpoint.py --input F0_haiku.npz --output f0.npz

The input's MD5 is checked against the released files before it is unpickled (with a
restricted loader); a file with another MD5 needs ``--trust`` or ``--md5``. Every parameter
name and shape is validated against the model. The output contains no pickle and loads with
``nfnets_jax.pretrained.load(path)`` (architecture, eval recipe and class names recorded).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nfnets_jax import cli  # noqa: E402
from nfnets_jax import pretrained  # noqa: E402
from nfnets_jax.errors import CheckpointError  # noqa: E402
from nfnets_jax.weights import deepmind  # noqa: E402




def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True, help="DeepMind F*_haiku.npz (a pickle).")
  parser.add_argument("--output", required=True, help="Plain .npz to write.")
  parser.add_argument("--variant", default=None,
                      help="F0..F7 (or F0+..); default: identified by the file's MD5.")
  parser.add_argument("--md5", default=None, help="Expected MD5 of a file you trust.")
  parser.add_argument("--trust", action="store_true",
                      help="Unpickle a file whose MD5 is not a released checkpoint's.")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="Classifier size; default: read from the file.")
  parser.add_argument("--model_kw", action="append", default=[],
                      help="Extra NFNet constructor argument key=value (repeatable), for "
                           "non-standard models, e.g. --model_kw width=0.5.")
  args = parser.parse_args(argv)

  model_kw = cli.parse_model_kwargs(args.model_kw)
  try:
    md5 = deepmind.file_md5(args.input)
    model = pretrained.load(
        args.input, deepmind.registry_name(args.variant) if args.variant else None,
        trust=args.trust, expected_md5=args.md5, num_classes=args.num_classes,
        model_kwargs=model_kw)
    if model.kind != "deepmind":
      raise CheckpointError(f"{args.input} is not a DeepMind pickle (it is a {model.kind} "
                            "source); it needs no conversion: pretrained.load reads it.")
    pretrained.save_npz(model, args.output, source=os.path.basename(args.input),
                        source_md5=md5)
  except (CheckpointError, OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(v.size for d in model.params.values() for v in d.values())
  print(f"wrote {args.output}: {model.name}, {n:,} parameters, source md5 {md5}")
  return 0

if __name__ == "__main__":
  sys.exit(main())
