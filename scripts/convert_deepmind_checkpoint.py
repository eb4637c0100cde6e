"""Converts DeepMind's released NFNet pickle (``F0_haiku.npz`` ...) to a plain ``.npz``.

  python scripts/convert_deepmind_checkpoint.py --input F0_haiku.npz --output f0.npz

The input's MD5 is checked against the released files before it is unpickled (with a
restricted loader); a file with another MD5 needs ``--trust`` or ``--md5``. Every parameter
name and shape is validated against the model. The output loads with
``nfnets_jax.weights.deepmind.load_params(path, model_name='nfnet_f0')`` and contains no pickle.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nfnets_jax import cli  # noqa: E402
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
  md5 = deepmind.file_md5(args.input)
  try:
    params = deepmind.load_deepmind_checkpoint(
        args.input, args.variant, expected_md5=args.md5, trust=args.trust,
        num_classes=args.num_classes, **model_kw)
  except deepmind.CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  variant = args.variant or deepmind._VARIANT_BY_MD5.get(md5) or \
      deepmind._infer_variant(params, next(iter(params)).split("/")[0])
  model_name = deepmind._model_name(variant)
  num_classes = int(params["NFNet/~/linear"]["b"].shape[0]) if "NFNet/~/linear" in params \
      else args.num_classes
  deepmind.save_params_npz(params, args.output, metadata=dict(
      model_name=model_name, num_classes=num_classes, model_overrides=model_kw,
      source=os.path.basename(args.input), source_md5=md5))
  n = sum(v.size for d in params.values() for v in d.values())
  print(f"wrote {args.output}: {model_name}, {n:,} parameters, source md5 {md5}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
