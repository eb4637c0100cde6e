#!/usr/bin/env python
"""Signal propagation plots at initialization: NF models vs BatchNorm and unnormalized ResNets.

  scripts/signal_propagation.py --model=nfnet_f0 \
      --compare=nf_resnet50,resnet50_bn,resnet50_noscale --out_dir=results/spp

Writes ``spp.csv`` (one row per model and residual block) and ``spp.png`` (average squared
channel mean, average channel variance, residual-branch variance per block). Defaults keep the
run under about a minute per model on a laptop CPU (64 px, batch 16); full resolution
(``--image_size=224``) is heavy on CPU.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

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
flags.DEFINE_string("model_kwargs", "{}",
                    "JSON: {model name: constructor overrides}, e.g. "
                    "'{\"nfnet_f0\": {\"width\": 0.5}}'.")
flags.DEFINE_string("out_dir", "results/signal_propagation", "Where spp.csv/spp.png go.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  skip_gain = None if FLAGS.skip_gain.lower() in ("init", "none") else float(FLAGS.skip_gain)
  try:
    kwargs = json.loads(FLAGS.model_kwargs)
  except json.JSONDecodeError as e:
    raise app.UsageError(f"--model_kwargs is not valid JSON: {e}") from None
  names = [FLAGS.model] + [m for m in FLAGS.compare if m and m != FLAGS.model]
  signal_propagation.run(names, FLAGS.out_dir, image_size=FLAGS.image_size, batch=FLAGS.batch,
                         seed=FLAGS.seed, skip_gain=skip_gain, model_kwargs=kwargs)


if __name__ == "__main__":
  app.run(main)
