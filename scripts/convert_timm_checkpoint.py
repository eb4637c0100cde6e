"""Converts timm's NFNet weights to our plain ``.npz`` params, and back.

timm -> ours (a hub folder with config.json + model.safetensors, or a bare .safetensors /
.pth / .bin file with --timm_name):
  python scripts/convert_timm_checkpoint.py --input dm_nfnet_f0/ --output f0.npz

ours -> timm (a .npz written by this script or by convert_deepmind_checkpoint.py):
  python scripts/convert_timm_checkpoint.py --to_timm --input f0.npz --output dm_nfnet_f0/

The .npz holds the params and a metadata record (``weights.deepmind.NpzMetadata``: model_name,
model_overrides, num_classes, timm_name, pretrained_cfg, eval recipe, class names, top1,
source), also written beside it as ``OUTPUT.json``; it loads with
``nfnets_jax.pretrained.load(path)`` with timm's architecture and eval recipe. The timm folder
loads in timm with ``timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(
file=FOLDER + '/model.safetensors', num_classes=N))``. Reading .pth/.bin needs torch;
safetensors does not. Every tensor is checked (names, shapes, class count); errors are one line.
Shrunk shapes: ``--model_kw width=0.25 --model_kw 'depths=(1,1,1,1)'``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from nfnets_jax import cli  # noqa: E402
from nfnets_jax import pretrained  # noqa: E402
from nfnets_jax.errors import UserError  # noqa: E402
from nfnets_jax.weights import timm as timm_weights  # noqa: E402

# Its own flags: tests import this script and convert_deepmind_checkpoint.py together.
FLAGS = flags.FlagValues()
flags.DEFINE_string("input", None, "timm hub folder / .safetensors / .pth / .bin, or with "
                    "--to_timm our .npz.", flag_values=FLAGS)
flags.DEFINE_string("output", None, ".npz to write, or with --to_timm a folder.",
                    flag_values=FLAGS)
flags.DEFINE_bool("to_timm", False, "Convert our .npz to a timm folder.", flag_values=FLAGS)
flags.DEFINE_string("timm_name", None, "timm architecture (default: from config.json / the .npz "
                    "metadata).", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "Expected class count (default: read from the "
                     "classifier).", flag_values=FLAGS)
cli.define_model_kw("model_kw", "the model (non-standard shapes)", flag_values=FLAGS)
flags.mark_flags_as_required(["input", "output"], flag_values=FLAGS)


def timm_to_ours(model_kw) -> str:
  source, output, timm_name = FLAGS.input, FLAGS.output, FLAGS.timm_name
  if timm_name and os.path.isdir(source):
    # The folder names its own architecture; a different --timm_name is an error.
    folder_name = timm_weights.read_hub_folder(source)[0]
    if timm_weights.canonical_name(timm_name) != folder_name:
      raise timm_weights.TimmWeightsError(
          f"{source}/config.json names {folder_name}, not --timm_name={timm_name}.")
  if not os.path.isdir(source) and not timm_name and os.path.isfile(source):
    raise timm_weights.TimmWeightsError(
        f"{source} is a bare weights file: pass --timm_name (one of "
        f"{', '.join(timm_weights.TIMM_MODELS)}).")
  model = pretrained.load(source, timm_name, num_classes=FLAGS.num_classes,
                          model_kwargs=model_kw)
  info = timm_weights.TIMM_MODELS[model.timm_name]
  meta = pretrained.save_npz(model, output, source=os.path.basename(os.path.normpath(source)),
                             top1=info.top1 if not model_kw else None,
                             top1_img_size=info.top1_img_size)
  with open(output + ".json", "w") as f:
    f.write(meta.to_json())
  n = sum(v.size for d in model.params.values() for v in d.values())
  return (f"wrote {output} (+ .json): timm {model.timm_name} -> {model.name} "
          f"{model.model_kwargs}, {model.num_classes} classes, {n:,} parameters")


def ours_to_timm(model_kw) -> str:
  model = pretrained.load(FLAGS.input, num_classes=FLAGS.num_classes, model_kwargs=model_kw)
  if FLAGS.timm_name:
    model.timm_name = timm_weights.canonical_name(FLAGS.timm_name)
  timm_name = pretrained.save_timm(model, FLAGS.output)
  return (f"wrote {FLAGS.output}: config.json + model.safetensors for timm {timm_name}, "
          f"{model.num_classes} classes")


def convert(argv) -> None:
  """Converts as the flags say; errors (weights, names, shapes) are ``UserError``s."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  model_kw = cli.model_kwargs(FLAGS)
  try:
    print((ours_to_timm if FLAGS.to_timm else timm_to_ours)(model_kw))
  except UserError:
    raise
  except OSError as e:  # a path given on the command line cannot be read or written
    cli.fail(str(e))


def main(argv=None) -> int:
  """Runs the command line ``argv`` (default ``sys.argv[1:]``) here; returns the exit status."""
  return cli.call(convert, sys.argv[1:] if argv is None else argv, FLAGS)


if __name__ == "__main__":
  cli.run(convert, FLAGS)
