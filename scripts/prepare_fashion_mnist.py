"""Builds the TFDS fashion_mnist dataset offline from Debian's dataset-fashion-mnist files.

  python scripts/prepare_fashion_mnist.py --data_dir=data/tfds

Idempotent: an already built dataset is left alone (--force rebuilds, --verify re-checks it).
Without the source files it installs `dataset-fashion-mnist` when run as root, otherwise it
prints the command. --download uses TFDS's own download instead (needs the internet).
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nfnets_jax.data import fashion_mnist  # pylint: disable=g-import-not-at-top


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", required=True, help="TFDS data_dir to build into")
  parser.add_argument("--source_dir", default=fashion_mnist.DEFAULT_SOURCE_DIR,
                      help="folder with the four *-idx*-ubyte.gz files")
  parser.add_argument("--download", action="store_true",
                      help="use TFDS's own download instead of the local files")
  parser.add_argument("--force", action="store_true", help="rebuild even if already built")
  parser.add_argument("--verify", action="store_true",
                      help="re-verify an existing build against the idx files")
  args = parser.parse_args(argv)
  data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  start = time.time()
  try:
    fashion_mnist.prepare(data_dir, args.source_dir, download=args.download, force=args.force,
                          verify_existing=args.verify)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"fashion_mnist ready in {data_dir} ({time.time() - start:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
