#!/usr/bin/env python
r"""Clipping threshold x batch size sweep (AGC), resumable, with baselines and plots.

Default grid: 3 batch sizes (64, 256, 1024) x 5 thresholds (0.01, 0.04, 0.16, 0.64, none) = 15
short runs of configs/fashion_mnist_sweep.py (the Fashion-MNIST demo shortened: nf_demo at widths
32/64/128, one epoch per run, no EMA, lr = 0.4 * batch / 256):
  python scripts/sweep_clipping.py --config=configs/fashion_mnist_sweep.py \
      --config.data_dir=data/tfds --workdir=workdirs/sweep

A paper-style grid on ImageNet:
  python scripts/sweep_clipping.py --config=configs/nfnet.py:F0 --workdir=DIR \
      --clipping=0.01,0.02,0.04,0.08,0.16,0.32,none --batch_sizes=256,1024,4096 \
      --baselines=global_norm,bn_resnet --bn_model=resnet50_bn

One run per point in DIR/bs{B}_clip{C} (learning rate = base_lr * B / lr_scale_batch).
Rerunning skips finished and diverged points and resumes interrupted ones. ``--only=K`` runs the
K-th point alone (``--list`` prints the grid), e.g. one cluster job per point; afterwards
``scripts/sweep_clipping.py collect --workdir=DIR`` writes results.csv, results.md and the PNG
plots (collection also runs at the end of a full sweep).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from nfnets_jax import cli  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Base experiment config (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Sweep directory: one sub-directory per grid point.")
# The default grid is sized for the Fashion-MNIST demo on a 2-core CPU (see
# docs/research_workflows.md); pass your own for other configs.
flags.DEFINE_string("clipping", "0.01,0.04,0.16,0.64,none",
                    "Comma-separated AGC thresholds; 'none' = no clipping (plain SGD).")
flags.DEFINE_string("batch_sizes", "64,256,1024", "Comma-separated global batch sizes.")
flags.DEFINE_string("baselines", "",
                    "Extra runs per batch size: none (plain SGD), global_norm "
                    "(sgd_global_clip at config.optimizer.global_clip_norm), bn_resnet.")
flags.DEFINE_string("bn_model", "resnet26_bn",
                    "Registered BatchNorm model for --baselines=bn_resnet.")
cli.define_model_kw("bn_model_kw", "--bn_model")
flags.DEFINE_integer("only", None, "Run only the point with this 0-based index (see --list).")
flags.DEFINE_bool("list", False, "Print the grid (index, name, batch, lr) and exit.")
flags.DEFINE_bool("collect", False, "Only gather finished points into tables and plots.")
flags.DEFINE_integer("max_attempts", 2,
                     "A point that fails (other than by diverging) this many times is skipped.")


def _grid():
  from nfnets_jax.research import sweep  # pylint: disable=import-outside-toplevel
  return sweep.expand_grid(sweep.parse_clipping(FLAGS.clipping),
                           sweep.parse_batch_sizes(FLAGS.batch_sizes),
                           sweep.parse_baselines(FLAGS.baselines))


def main(argv):
  args = argv[1:]
  if args and args != ["collect"]:
    raise app.UsageError(f"Unexpected arguments {args}; the only subcommand is 'collect'.")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required (the sweep directory).")
  from nfnets_jax.research import sweep  # pylint: disable=import-outside-toplevel
  if FLAGS.collect or args == ["collect"]:
    sweep.collect(FLAGS.workdir)
    return
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/fashion_mnist_sweep.py")
  points = _grid()
  bn_kwargs = cli.model_kwargs(FLAGS, "bn_model_kw")
  if FLAGS.list:
    for p in points:
      cfg = sweep.point_config(FLAGS.config, p, bn_model=FLAGS.bn_model,
                               bn_model_kwargs=bn_kwargs)
      print(f"{p.index:3d}  {p.name:24s} batch {p.batch_size:6d}  {cfg.optimizer.name:16s} "
            f"lr {sweep.scaled_lr(cfg):.4g}  model {cfg.model}")
    return
  from nfnets_jax.engine import train  # pylint: disable=import-outside-toplevel
  print(f"Sweep of {len(points)} points in {FLAGS.workdir} "
        f"({'only point ' + str(FLAGS.only) if FLAGS.only is not None else 'all points'}); "
        "the ETA is printed after each point.")
  sweep.run_sweep(FLAGS.config, points, FLAGS.workdir, train.train_and_evaluate,
                  only=FLAGS.only, bn_model=FLAGS.bn_model, bn_model_kwargs=bn_kwargs,
                  max_attempts=FLAGS.max_attempts)
  if FLAGS.only is None:
    sweep.collect(FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
