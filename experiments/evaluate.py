r"""Evaluates a checkpoint: top-1, top-5 and loss on a whole split, each example exactly once.

  python experiments/evaluate.py --checkpoint=PATH --config=configs/nfnet.py:F0 \
      [--split=validation] [--dataset=imagenet_v2] [--use_ema] [--output=results.json]

PATH: a training workdir of ours (or its orbax checkpoints/ folder, or one step folder), a
DeepMind ``F*_haiku.npz`` (MD5-checked, unpickled with a restricted loader), or a converted
``.npz``. For our checkpoints raw and EMA parameters are both reported (``--use_ema`` for EMA
only, ``--nouse_ema`` for raw only). The config decides the model and its eval preprocessing
and resolution (``configs/nfnet.py:F1`` evaluates at 320 px with resize_crop_32, ...).
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nfnets_jax import cli  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax import engine  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "Workdir, orbax checkpoint, F*_haiku.npz or .npz.")
flags.DEFINE_string("dataset", None,
                    "TFDS evaluation set overriding the config's (imagenet2012, imagenet_v2, "
                    "imagenet2012_real: ReaL multi-label top-1/top-5).")
flags.DEFINE_string("split", None, "Split (default: the config's eval_split, or the dataset's "
                    "test split: validation for imagenet2012, test for imagenet_v2).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir overriding the config's.")
flags.DEFINE_integer("image_size", None, "Override the eval resolution (default: the config's).")
flags.DEFINE_integer("batch_size", None, "Global eval batch (default: config.eval_batch_size).")
flags.DEFINE_integer("step", None, "Checkpoint step of an orbax checkpoint (default: latest).")
flags.DEFINE_bool("use_ema", None, "EMA only (--use_ema) or raw only (--nouse_ema); default both.")
flags.DEFINE_bool("trust_checkpoint", False,
                  "Unpickle a DeepMind-format file whose MD5 is not a released checkpoint's.")
flags.DEFINE_string("checkpoint_md5", None, "Expected MD5 of the checkpoint file.")
flags.DEFINE_string("output", None, "Write the report as JSON here.")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  engine.evaluate_checkpoint(
      FLAGS.checkpoint, FLAGS.config, dataset=FLAGS.dataset, split=FLAGS.split,
      image_size=FLAGS.image_size, batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir,
      use_ema=FLAGS.use_ema, step=FLAGS.step, trust=FLAGS.trust_checkpoint,
      expected_md5=FLAGS.checkpoint_md5, output=FLAGS.output)


if __name__ == "__main__":
  cli.run(main)
