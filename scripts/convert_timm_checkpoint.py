"""Converts timm's NFNet weights to our plain ``.npz`` params, and back.

timm -> ours (a hub folder with config.json + model.safetensors, or a bare .safetensors /
.pth / .bin file with --timm_name):
  python scripts/convert_timm_checkpoint.py --input dm_nfnet_f0/ --output f0.npz

ours -> timm (a .npz written by this script or by convert_deepmind_checkpoint.py):
  python scripts/convert_timm_checkpoint.py --to_timm --input f0.npz --output dm_nfnet_f0/

The .npz holds the params and a metadata record (model_name, model_overrides, num_classes,
timm_name, pretrained_cfg, top1, source), also written beside it as ``OUTPUT.json``; it loads
with ``nfnets_jax.weights.deepmind.load_params(path)``. The timm folder loads in timm with
``timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=FOLDER +
'/model.safetensors', num_classes=N))``. Reading .pth/.bin needs torch; safetensors does not.
Every tensor is checked (names, shapes, class count); errors are one line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nfnets_jax.errors import CheckpointError  # noqa: E402
from nfnets_jax import cli  # noqa: E402
from nfnets_jax.weights import deepmind  # noqa: E402  (our plain .npz format)
from nfnets_jax.weights import timm as timm_weights  # noqa: E402




def _jsonable(obj):
  return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def timm_to_ours(args, model_kw) -> str:
  path = args.input
  pretrained_cfg = None
  if os.path.isdir(path):
    timm_name, num_classes, pretrained_cfg, state = timm_weights.read_hub_folder(path)
    if args.timm_name and args.timm_name.split(".")[0] != timm_name:
      raise timm_weights.TimmWeightsError(
          f"{path}/config.json names {timm_name}, not --timm_name={args.timm_name}.")
  else:
    if not args.timm_name:
      raise timm_weights.TimmWeightsError(
          f"{path} is a bare weights file: pass --timm_name (one of "
          f"{', '.join(timm_weights.TIMM_MODELS)}).")
    timm_name = args.timm_name
    num_classes = None
    if path.endswith(".safetensors"):
      state = timm_weights.read_safetensors(path)
    else:
      state = timm_weights.read_torch_file(path)
  num_classes = args.num_classes if args.num_classes is not None else num_classes
  model_name, kwargs, params, _ = timm_weights.to_haiku(state, timm_name, num_classes, model_kw)
  canonical = timm_name.split("/")[-1].split(".")[0]
  info = timm_weights.TIMM_MODELS[canonical]
  head = params[next(m for m in params if m.endswith("/~/linear") and m.count("/~/") == 1)]
  meta = _jsonable(dict(
      model_name=model_name, model_overrides=kwargs, num_classes=int(head["b"].shape[0]),
      timm_name=canonical, pretrained_cfg=pretrained_cfg or info.pretrained_cfg,
      top1=info.top1 if not model_kw else None, top1_img_size=info.top1_img_size,
      source=os.path.basename(os.path.normpath(path))))
  deepmind.save_params_npz(params, args.output, metadata=meta)
  with open(args.output + ".json", "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  n = sum(v.size for d in params.values() for v in d.values())
  return (f"wrote {args.output} (+ .json): timm {canonical} -> {model_name} "
          f"{kwargs}, {meta['num_classes']} classes, {n:,} parameters")


def ours_to_timm(args, model_kw) -> str:
  params, meta = deepmind.load_params_npz(args.input)
  overrides = dict(meta.get("model_overrides", {}))
  overrides.update(model_kw)
  timm_name = args.timm_name or meta.get("timm_name")
  if not timm_name:
    model_name = meta.get("model_name")
    if not model_name:
      raise timm_weights.TimmWeightsError(
          f"{args.input} has no model_name in its metadata: pass --timm_name.")
    timm_name = timm_weights.timm_name_for(model_name, overrides)
  canonical = timm_name.split(".")[0]
  info = timm_weights.TIMM_MODELS.get(canonical)
  if info is not None:
    # Constructor options that the mapping itself implies need not be repeated.
    overrides = {k: v for k, v in overrides.items() if info.overrides.get(k, object()) != v}
  state = timm_weights.from_haiku(params, canonical, args.num_classes, overrides or None)
  num_classes = int(state["head.fc.bias"].shape[0])
  cfg = meta.get("pretrained_cfg") if meta.get("timm_name") == canonical else None
  timm_weights.write_hub_folder(args.output, canonical, state, num_classes, cfg)
  return (f"wrote {args.output}: config.json + model.safetensors for timm {canonical}, "
          f"{num_classes} classes, {len(state)} tensors")


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
