r"""Evaluates weights: top-1, top-5 and loss on a whole split, each example exactly once.

  python experiments/evaluate.py --checkpoint=SOURCE [--config=configs/nfnet.py:F0] \
      [--arch=dm_nfnet_f0] [--recipe=source|config] [--split=validation] \
      [--dataset=imagenet_v2] [--use_ema] [--output=results.json]

SOURCE: anything ``nfnets_jax.pretrained.load`` takes: a timm/hub folder (``config.json`` +
``model.safetensors``) or a ``.safetensors`` file with ``--arch``; DeepMind's ``F*_haiku.npz``
(MD5-checked, restricted unpickler) or a converted ``.npz``; one of our training workdirs (or
its ``checkpoints/`` folder, or one step folder), for which raw and EMA parameters are both
reported (``--use_ema`` for EMA only, ``--nouse_ema`` for raw only).

Without ``--config`` the weights bring their architecture and their own eval recipe
(``--recipe=source``: timm's ``pretrained_cfg`` test size, crop_pct and mean/std; the
reference's ``resize_crop_32`` at the test size for DeepMind's), on ImageNet's validation split,
or, for a workdir, on the test split of the data it was trained on. With ``--config`` (e.g.
``configs/nfnet.py:F1``: 320 px, resize_crop_32) our workdirs and DeepMind's files are
evaluated as that config's model and recipe; ``--recipe=config`` applies the config's recipe to
timm weights too.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax import cli  # noqa: E402  pylint: disable=wrong-import-position
from nfnets_jax import engine  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "Anything nfnets_jax.pretrained.load takes: a timm/hub "
                    "folder, a .safetensors file (with --arch), F*_haiku.npz, .npz or a workdir.")
flags.DEFINE_string("arch", None, "timm architecture of a bare weight file (dm_nfnet_f0, ...).")
flags.DEFINE_enum("recipe", "source", ["source", "config"],
                  "Eval resize/crop/normalization: the weights' own ('source': timm's "
                  "pretrained_cfg, the reference's for DeepMind's) or the config's.")
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
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None and not os.path.isdir(FLAGS.checkpoint):
    config = default.get_default()  # ImageNet validation; the weights bring their model
  engine.evaluate_checkpoint(
      FLAGS.checkpoint, config, arch=FLAGS.arch, recipe=FLAGS.recipe, dataset=FLAGS.dataset,
      split=FLAGS.split, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
      data_dir=FLAGS.data_dir, params={None: "all", True: "ema", False: "raw"}[FLAGS.use_ema],
      step=FLAGS.step, trust=FLAGS.trust_checkpoint, expected_md5=FLAGS.checkpoint_md5,
      output=FLAGS.output)


if __name__ == "__main__":
  cli.run(main)
