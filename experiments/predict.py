r"""Predicts the classes of images with any weights ``nfnets_jax.pretrained.load`` accepts.

  python experiments/predict.py --checkpoint=SOURCE [--arch=dm_nfnet_f0] [--top_k=5] [--json] \
      IMAGE [IMAGE ...]

SOURCE: a timm/hub model folder, a ``.safetensors`` file (with ``--arch``), DeepMind's
``F*_haiku.npz``, a converted ``.npz`` or one of our training workdirs (EMA weights when
present; ``--noema`` for the raw ones). Images of any size, grayscale/RGB/RGBA, PNG/JPEG/BMP/GIF,
go through the source's own eval recipe. Prints the top-k labels with probabilities per image
(``--json``: one JSON object per line, ``{"path", "top_k": [{"label", "index", "prob"}]}``).
Labels: ImageNet names for 1000-class ImageNet models, the class names saved with a workdir,
else the index. An unreadable image is reported by name on stderr, the others are still
predicted, and the exit status is 1.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF only decodes images here

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nfnets_jax import cli  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Weights: timm folder, .safetensors, DeepMind .npz, "
                    "converted .npz or a training workdir.")
flags.DEFINE_string("arch", None, "timm architecture of a bare weight file (dm_nfnet_f0, ...).")
flags.DEFINE_integer("top_k", 5, "How many classes to print per image.")
flags.DEFINE_bool("json", False, "One JSON object per image and line instead of text.")
flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
flags.DEFINE_bool("ema", None, "Workdirs: EMA (--ema) or raw (--noema) weights; default EMA "
                  "when the run kept one.")
flags.DEFINE_bool("trust_checkpoint", False,
                  "Unpickle a DeepMind-format file whose MD5 is not a released checkpoint's.")
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more image paths after the flags.")
  # Reading images imports TensorFlow: only here, so that --help and flag errors are quick.
  from nfnets_jax import predict  # pylint: disable=g-import-not-at-top
  failed = predict.predict_files(
      FLAGS.checkpoint, argv[1:], arch=FLAGS.arch, top_k=FLAGS.top_k, as_json=FLAGS.json,
      batch_size=FLAGS.batch_size, ema=FLAGS.ema, trust=FLAGS.trust_checkpoint)
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
