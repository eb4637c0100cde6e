r"""Writes scikit-learn's handwritten digits as an image folder for the fine-tuning demo.

    python scripts/prepare_finetune_demo.py --out=data/finetune_demo

``sklearn.datasets.load_digits`` ships (offline, inside the scikit-learn package) 1,797 real
8 x 8 grayscale scans of handwritten digits 0-9 (UCI "optdigits", 17 gray levels, white ink on
black like Fashion-MNIST). This writes them as ``OUT/train/<digit>/<index>.png`` and
``OUT/test/<digit>/<index>.png`` (8-bit grayscale PNGs, levels 0-16 scaled to 0-255, at their
native 8 x 8: the pipeline resizes them to the model's resolution): ``--train_per_class``
images of every digit (default 30, 300 in all: few enough that starting from the Fashion-MNIST
demo model beats training from scratch) and all the others (1,497) as the test split.

Deterministic (a fixed seeded permutation per class; ``<index>`` is the position in
``load_digits``) and idempotent: files already holding the right bytes are left alone, and PNGs
inside OUT/train/<digit>/ and OUT/test/<digit>/ that are not part of the set are removed.
Needs ``scikit-learn`` and Pillow (installed with matplotlib); no network.
"""
from __future__ import annotations

import io
import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nfnets_jax import cli  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Folder to write (OUT/train, OUT/test).")
flags.DEFINE_integer("train_per_class", 30,
                     "Training images per digit (the rest is the test split).")
flags.mark_flag_as_required("out")

SEED = 0
SPLITS = ("train", "test")


def load():
  try:
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  except ImportError:
    cli.fail("the demo dataset comes from scikit-learn: `pip install scikit-learn`.")
  digits = load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
  return images, digits.target.astype(int)


def plan(labels: np.ndarray, train_per_class: int):
  """{split: [(index, label)]}: per digit a seeded permutation, the first k go to train."""
  rng = np.random.RandomState(SEED)
  out = {split: [] for split in SPLITS}
  for label in range(10):
    idx = np.flatnonzero(labels == label)
    idx = idx[rng.permutation(len(idx))]
    if not 0 < train_per_class < len(idx):
      raise app.UsageError(f"--train_per_class must be in [1, {len(idx) - 1}] (digit {label} "
                           f"has {len(idx)} images).")
    out["train"] += [(int(i), label) for i in sorted(idx[:train_per_class])]
    out["test"] += [(int(i), label) for i in sorted(idx[train_per_class:])]
  return out


def png_bytes(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(image, mode="L").save(buf, format="PNG")
  return buf.getvalue()


def write(out_dir: str, train_per_class: int = 30) -> dict:
  """Writes the folder; returns {split: count} and the numbers written/unchanged/removed."""
  images, labels = load()
  stats = dict(written=0, unchanged=0, removed=0)
  counts = {}
  for split, examples in plan(labels, train_per_class).items():
    counts[split] = len(examples)
    wanted = {}
    for index, label in examples:
      wanted[os.path.join(out_dir, split, str(label), f"{index:04d}.png")] = index
    for label in range(10):
      folder = os.path.join(out_dir, split, str(label))
      os.makedirs(folder, exist_ok=True)
      for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".png") and path not in wanted:
          os.remove(path)
          stats["removed"] += 1
    for path, index in wanted.items():
      data = png_bytes(images[index])
      if os.path.exists(path):
        with open(path, "rb") as f:
          if f.read() == data:
            stats["unchanged"] += 1
            continue
      tmp = path + ".tmp"
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, path)
      stats["written"] += 1
  return dict(counts=counts, **stats)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = write(FLAGS.out, FLAGS.train_per_class)
  counts = result["counts"]
  print(f"Wrote scikit-learn digits (8x8 grayscale PNG, 10 classes '0'..'9') to {FLAGS.out}: "
        f"train {counts['train']} ({FLAGS.train_per_class} per class), test {counts['test']}; "
        f"{result['written']} file(s) written, {result['unchanged']} unchanged, "
        f"{result['removed']} stale removed.")
  print(f"Use it with --config.dataset=folder --config.data_dir={FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
