"""Builds the TFDS fashion_mnist dataset offline from Debian's dataset-fashion-mnist files.

  python scripts/prepare_fashion_mnist.py --data_dir=data/tfds

Idempotent: an already built dataset is left alone (--force rebuilds, --verify re-checks it).
Without the source files it installs `dataset-fashion-mnist` when run as root, otherwise it
prints the command. --download uses TFDS's own download instead (needs the internet).
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402  pylint: disable=g-import-not-at-top
from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

from nfnets_jax import cli  # noqa: E402  pylint: disable=g-import-not-at-top
from nfnets_jax.data import fashion_mnist  # noqa: E402  pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into.")
flags.DEFINE_string("source_dir", fashion_mnist.DEFAULT_SOURCE_DIR,
                    "Folder with the four *-idx*-ubyte.gz files.")
flags.DEFINE_bool("download", False, "Use TFDS's own download instead of the local files.")
flags.DEFINE_bool("force", False, "Rebuild even if already built.")
flags.DEFINE_bool("verify", False, "Re-verify an existing build against the idx files.")
flags.mark_flag_as_required("data_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  data_dir = os.path.abspath(os.path.expanduser(FLAGS.data_dir))
  start = time.time()
  try:
    fashion_mnist.prepare(data_dir, FLAGS.source_dir, download=FLAGS.download, force=FLAGS.force,
                          verify_existing=FLAGS.verify)
  except FileNotFoundError as e:  # the source files, with the command that installs them
    cli.fail(str(e))
  print(f"fashion_mnist ready in {data_dir} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
  cli.run(main)
