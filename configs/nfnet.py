"""NFNet-F0..F7 (and the wider F0+..F7+) on ImageNet with the paper's recipe.

Run, e.g. on a TPU/GPU host with ImageNet prepared in TFDS:
  python experiments/train.py --config=configs/nfnet.py:F0 --workdir=/tmp/nfnet_f0
Recipe (Brock et al. 2021b): global batch 4096 (gradient accumulation makes it up on fewer
devices), 360 epochs, lr 0.1 * B / 256 with 5 warm-up epochs then cosine to 0, SGD Nesterov 0.9,
weight decay 2e-5, AGC 0.01 (classifier weight excluded), label smoothing 0.1, EMA 0.99999,
stochastic depth 0.25, per-variant dropout, image sizes and RandAugment, MixUp + CutMix,
bfloat16 compute. Expected ImageNet top-1 (paper): F0 83.6, F1 84.7, F2 85.1, F3 85.7,
F4 85.9, F5 86.0, F6 86.5 (with SAM, not implemented here). Image sizes, RandAugment and
dropout per variant come from the model registry's record (``models.get_info('nfnet_f0')``).

Deep variants compile their first step faster with ``--config.model_kwargs.scan_blocks=True``.
``configs/nfnet.py:F0,local``: a 10-step smoke run at 64 px, batch 16, float32 (runs on a CPU).
Without ImageNet, the same run of the same recipe: ``F0,synthetic`` on the built-in synthetic
set (4 classes; no augmentation, which it does not apply) or ``F0,folder`` on your images
(``--config.data_dir=ROOT``, laid out as for fine-tuning, docs/finetuning.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position

from nfnets_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from nfnets_jax.models import nfnet  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  variant, flags = default.parse_args(arg or "F0", known=("local", "synthetic", "folder"))
  if {"synthetic", "folder"} <= flags:
    raise ValueError("Choose one of the options 'synthetic' and 'folder'.")
  variant = variant.upper()
  plus = variant.endswith("+")
  base = variant.rstrip("+")
  if variant not in nfnet.NFNET_VARIANTS:
    raise ValueError(f"Unknown NFNet variant {variant!r}; use one of "
                     f"{sorted(v for v in nfnet.NFNET_VARIANTS if not v.endswith('+'))} or the "
                     "same with '+' (e.g. 'F0+').")
  info = models.get_info(f"nfnet_{base.lower()}" + ("_plus" if plus else ""))
  c = default.get_default()
  c.model = info.name
  c.model_kwargs = default.ml_collections.ConfigDict(dict(
      stochdepth_rate=0.25, drop_rate=info.drop_rate,
      # True: each stage's repeated blocks run as one lax.scan (same parameters and numbers);
      # F7's first train step compiles ~4x faster, F0's slower (docs/benchmarks.md).
      scan_blocks=False))
  c.train_image_size = info.train_image_size
  c.eval_image_size = info.test_image_size
  c.augment.randaugment_layers = info.randaugment_layers
  c.augment.randaugment_magnitude = info.randaugment_magnitude
  if "local" in flags:
    default.apply_local(c)
  for source in ("synthetic", "folder"):
    if source in flags:
      default.apply_local_data(c, source)
  return c
