"""Converts timm's NFNet weights to our plain ``.npz`` params, and back.

timm -> ours (a hub folder with config.json + model.safetensors, or a bare .safetensors /
.pth / .bin file with --timm_name):
  python scripts/convert_timm_checkpoint.py --input dm_nfnet_f0/ --output f0.npz

ours -> timm (a .npz written by this script or by convert_deepmind_checkpoint.py):
  python scripts/convert_timm_checkpoint.py --to_timm --input f0.npz --output dm_nfnet_f0/

The .npz holds the params and a metadata record (``weights.deepmind.NpzMetadata``: model_name,
model_overrides, num_classes, timm_name, pretrained_cfg, eval recipe, class names, top1,
source), also written beside it as ``OUTPUT.json``; it loads with
``nfnets_jax.pretrained.load(path)`` with timm's architecture and eval recipe. The timm folder loads in timm with
``timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=FOLDER +
'/model.safetensors', num_classes=N))``. Reading .pth/.bin needs torch; safetensors does not.
Every tensor is checked (names, shapes, class count); errors are one line.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nfnets_jax import cli  # noqa: E402
from nfnets_jax import pretrained  # noqa: E402
from nfnets_jax.errors import CheckpointError  # noqa: E402
from nfnets_jax.weights import timm as timm_weights  # noqa: E402




def timm_to_ours(args, model_kw) -> str:
  if args.timm_name and os.path.isdir(args.input):
    # The folder names its own architecture; a different --timm_name is an error.
    folder_name = timm_weights.read_hub_folder(args.input)[0]
    if timm_weights.canonical_name(args.timm_name) != folder_name:
      raise timm_weights.TimmWeightsError(
          f"{args.input}/config.json names {folder_name}, not --timm_name={args.timm_name}.")
  if not os.path.isdir(args.input) and not args.timm_name and os.path.isfile(args.input):
    raise timm_weights.TimmWeightsError(
        f"{args.input} is a bare weights file: pass --timm_name (one of "
        f"{', '.join(timm_weights.TIMM_MODELS)}).")
  model = pretrained.load(args.input, args.timm_name, num_classes=args.num_classes,
                          model_kwargs=model_kw)
  info = timm_weights.TIMM_MODELS[model.timm_name]
  meta = pretrained.save_npz(model, args.output,
                             source=os.path.basename(os.path.normpath(args.input)),
                             top1=info.top1 if not model_kw else None,
                             top1_img_size=info.top1_img_size)
  with open(args.output + ".json", "w") as f:
    f.write(meta.to_json())
  n = sum(v.size for d in model.params.values() for v in d.values())
  return (f"wrote {args.output} (+ .json): timm {model.timm_name} -> {model.name} "
          f"{model.model_kwargs}, {model.num_classes} classes, {n:,} parameters")


def ours_to_timm(args, model_kw) -> str:
  model = pretrained.load(args.input, num_classes=args.num_classes, model_kwargs=model_kw)
  if args.timm_name:
    model.timm_name = timm_weights.canonical_name(args.timm_name)
  timm_name = pretrained.save_timm(model, args.output)
  return (f"wrote {args.output}: config.json + model.safetensors for timm {timm_name}, "
          f"{model.num_classes} classes")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True,
                      help="timm hub folder / .safetensors / .pth / .bin, or with --to_timm "
                           "our .npz.")
  parser.add_argument("--output", required=True, help=".npz to write, or with --to_timm a folder.")
  parser.add_argument("--to_timm", action="store_true", help="Convert our .npz to a timm folder.")
  parser.add_argument("--timm_name", default=None,
                      help="timm architecture (default: from config.json / the .npz metadata).")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="Expected class count (default: read from the classifier).")
  parser.add_argument("--model_kw", action="append", default=[],
                      help="Extra constructor argument key=value for non-standard shapes "
                           "(repeatable), e.g. --model_kw 'depths=(1,1,1,1)'.")
  args = parser.parse_args(argv)
  model_kw = cli.parse_model_kwargs(args.model_kw)
  try:
    message = (ours_to_timm if args.to_timm else timm_to_ours)(args, model_kw)
  except (CheckpointError, OSError) as e:  # TimmWeightsError is a CheckpointError.
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(message)
  return 0


if __name__ == "__main__":
  sys.exit(main())
