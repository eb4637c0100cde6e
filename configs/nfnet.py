"""NFNet-F0..F7 (and the wider F0+..F7+) on ImageNet with the paper's recipe.

Run, e.g. on a TPU/GPU host with ImageNet prepared in TFDS:
  python experiments/train.py --config=configs/nfnet.py:F0 --workdir=/tmp/nfnet_f0
Recipe (Brock et al. 2021b): global batch 4096 (gradient accumulation makes it up on fewer
devices), 360 epochs, lr 0.1 * B / 256 with 5 warm-up epochs then cosine to 0, SGD Nesterov 0.9,
weight decay 2e-5, AGC 0.01 (classifier weight excluded), label smoothing 0.1, EMA 0.99999,
stochastic depth 0.25, per-variant dropout, image sizes and RandAugment, MixUp + CutMix,
bfloat16 compute. Expected ImageNet top-1 (paper): F0 83.6, F1 84.7, F2 85.1, F3 85.7,
F4 85.9, F5 86.0; with SAM F5 86.3, F6 86.5. Image sizes, RandAugment and dropout per variant
come from the model registry's record (``models.get_info('nfnet_f0')``).

``configs/nfnet.py:F5_sam`` and ``configs/nfnet.py:F6_sam`` (any variant takes the ``_sam``
suffix) add Sharpness-Aware Minimization as the paper ran it (nfnets_jax/engine/sam.py): the
ascent gradient per device (not synchronised), from 20% of each device's batch, radius rho 0.05
(``--config.sam.rho``, ``--config.sam.batch_fraction``, ``--config.sam.sync``).

Each stage's repeated blocks are stacked and scanned (``model_kwargs.scan_blocks``, default True),
so F7 reaches its first train step in 1.5-1.7x F0's time (docs/benchmarks.md "Time to first step");
``--config.model_kwargs.scan_blocks=False``
runs block by block as earlier versions did.
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


# The paper's SAM runs (F5/F6 + SAM): radius and the fraction of each device's batch that
# gives the ascent gradient.
SAM_RHO = 0.05
SAM_BATCH_FRACTION = 0.2


def get_config(arg=None):
  variant, flags = default.parse_args(arg or "F0", known=("local", "synthetic", "folder"))
  if {"synthetic", "folder"} <= flags:
    raise ValueError("Choose one of the options 'synthetic' and 'folder'.")
  variant = variant.upper()
  with_sam = variant.endswith("_SAM")
  variant = variant[:-len("_SAM")] if with_sam else variant
  plus = variant.endswith("+")
  base = variant.rstrip("+")
  if variant not in nfnet.NFNET_VARIANTS:
    raise ValueError(f"Unknown NFNet variant {variant!r}; use one of "
                     f"{sorted(v for v in nfnet.NFNET_VARIANTS if not v.endswith('+'))} or the "
                     "same with '+' (e.g. 'F0+'), optionally with '_sam' (e.g. 'F6_sam').")
  info = models.get_info(f"nfnet_{base.lower()}" + ("_plus" if plus else ""))
  c = default.get_default()
  c.model = info.name
  c.model_kwargs = default.ml_collections.ConfigDict(dict(
      stochdepth_rate=0.25, drop_rate=info.drop_rate,
      # True (the model's default): each stage's repeated blocks are stacked arrays run as one
      # lax.scan (same numbers, per-block names on disk); False: block by block, as before
      # (docs/benchmarks.md "Time to first step").
      scan_blocks=True,
      # Overridable for quick runs of the same graph at a fraction of the memory, e.g. F7 at
      # --config.model_kwargs.width=0.25 --config.model_kwargs.group_width=32 (its 1,661
      # arrays, 1/16 of its weights): docs/benchmarks.md "Time to first step".
      width=1.0, group_width=default.ml_collections.config_dict.placeholder(int)))
  c.train_image_size = info.train_image_size
  c.eval_image_size = info.test_image_size
  c.augment.randaugment_layers = info.randaugment_layers
  c.augment.randaugment_magnitude = info.randaugment_magnitude
  if with_sam:
    c.sam.rho = SAM_RHO
    c.sam.batch_fraction = SAM_BATCH_FRACTION
  if "local" in flags:
    default.apply_local(c)
  for source in ("synthetic", "folder"):
    if source in flags:
      default.apply_local_data(c, source)
  return c
