"""NFNet-F0..F7 (and the wider F0+..F7+) on ImageNet with the paper's recipe.

Run, e.g. on a TPU/GPU host with ImageNet prepared in TFDS:
  python experiments/train.py --config=configs/nfnet.py:F0 --workdir=/tmp/nfnet_f0
Recipe (Brock et al. 2021b): global batch 4096 (gradient accumulation makes it up on fewer
devices), 360 epochs, lr 0.1 * B / 256 with 5 warm-up epochs then cosine to 0, SGD Nesterov 0.9,
weight decay 2e-5, AGC 0.01 (classifier weight excluded), label smoothing 0.1, EMA 0.99999,
stochastic depth 0.25, per-variant dropout, image sizes and RandAugment, MixUp + CutMix,
bfloat16 compute. Expected ImageNet top-1 (paper): F0 83.6, F1 84.7, F2 85.1, F3 85.7,
F4 85.9, F5 86.0, F6 86.5 (with SAM, not implemented here).

Deep variants compile their first step faster with ``--config.model_kwargs.scan_blocks=True``.
``configs/nfnet.py:F0,local``: a 10-step smoke run at 64 px, batch 16, float32 (runs on a CPU).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position

# variant: (train px, test px, RandAugment layers, RandAugment magnitude, dropout)
VARIANTS = {
    "F0": (192, 256, 4, 5, 0.2),
    "F1": (224, 320, 4, 10, 0.3),
    "F2": (256, 352, 4, 10, 0.4),
    "F3": (320, 416, 4, 15, 0.4),
    "F4": (384, 512, 4, 15, 0.5),
    "F5": (416, 544, 4, 15, 0.5),
    "F6": (448, 576, 4, 15, 0.5),
    "F7": (480, 608, 4, 15, 0.5),
}


def get_config(arg=None):
  variant, flags = default.parse_args(arg or "F0", known=("local",))
  variant = variant.upper()
  plus = variant.endswith("+")
  base = variant.rstrip("+")
  if base not in VARIANTS:
    raise ValueError(f"Unknown NFNet variant {variant!r}; use one of "
                     f"{sorted(VARIANTS)} or the same with '+' (e.g. 'F0+').")
  train_px, test_px, ra_layers, ra_mag, dropout = VARIANTS[base]
  c = default.get_default()
  c.model = f"nfnet_{base.lower()}" + ("_plus" if plus else "")
  c.model_kwargs = default.ml_collections.ConfigDict(dict(
      stochdepth_rate=0.25, drop_rate=dropout,
      # True: each stage's repeated blocks run as one lax.scan (same parameters and numbers);
      # F7's first train step compiles ~4x faster, F0's slower (docs/benchmarks.md).
      scan_blocks=False))
  c.train_image_size = train_px
  c.eval_image_size = test_px
  c.augment.randaugment_layers = ra_layers
  c.augment.randaugment_magnitude = ra_mag
  if "local" in flags:
    default.apply_local(c)
  return c
