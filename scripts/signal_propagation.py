#!/usr/bin/env python
"""Signal propagation plots at initialization: NF models vs BatchNorm and unnormalized ResNets.

  scripts/signal_propagation.py --model=nfnet_f0 \
      --compare=nf_resnet50,resnet50_bn,resnet50_noscale --out_dir=results/spp

Writes ``spp.csv`` (one row per model and residual block) and ``spp.png`` (average squared
channel mean, average channel variance, residual-branch variance per block). Defaults keep the
run under about a minute per model on a laptop CPU (64 px, batch 16); full resolution
(``--image_size=224``) is heavy on CPU. ``--model_kw width=0.5`` (repeatable) changes the
``--model``; ``--model_kwargs='{"resnet50_bn": {"width": 0.5}}'`` (JSON, by model name) any.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from nfnets_jax import cli  # noqa: E402
from nfnets_jax import models  # noqa: E402
from nfnets_jax.research import signal_propagation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "nfnet_f0", "Registered NF model to analyse.")
flags.DEFINE_list("compare", ["nf_resnet50", "resnet50_bn", "resnet50_noscale"],
                  "Registered models drawn alongside (empty for none).")
flags.DEFINE_integer("image_size", 64, "Input height and width.")
flags.DEFINE_integer("batch", 16, "Number of N(0, 1) input images.")
flags.DEFINE_integer("seed", 0, "PRNG seed for parameters and inputs.")
flags.DEFINE_string("skip_gain", "1.0",
                    "Value for every skip_gain parameter ('init' keeps the init value 0, "
                    "which makes non-transition NF blocks the identity).")
cli.define_model_kw("model_kw", "--model (--model_kwargs: also a JSON object of "
                    "{model name: overrides} for any model drawn)")
flags.DEFINE_string("out_dir", "results/signal_propagation", "Where spp.csv/spp.png go.")


def per_model_kwargs(model: str, overrides: dict) -> dict:
  """{model name: constructor overrides}: entries naming a registered model with a dict of
  overrides (the JSON spelling) are that model's, the others are ``model``'s."""
  names = set(models.list_models())
  out = {name: dict(value) for name, value in overrides.items()
         if name in names and isinstance(value, dict)}
  own = {key: value for key, value in overrides.items() if key not in out}
  if own:
    out[model] = {**out.get(model, {}), **own}
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    skip_gain = None if FLAGS.skip_gain.lower() in ("init", "none") else float(FLAGS.skip_gain)
  except ValueError:
    raise app.UsageError(f"--skip_gain={FLAGS.skip_gain}: use a number or 'init'.") from None
  kwargs = per_model_kwargs(FLAGS.model, cli.model_kwargs(FLAGS))
  names = [FLAGS.model] + [m for m in FLAGS.compare if m and m != FLAGS.model]
  signal_propagation.run(names, FLAGS.out_dir, image_size=FLAGS.image_size, batch=FLAGS.batch,
                         seed=FLAGS.seed, skip_gain=skip_gain, model_kwargs=kwargs)


if __name__ == "__main__":
  cli.run(main)
