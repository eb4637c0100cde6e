"""NF-RegNet-B0..B8 on ImageNet (Brock et al. 2021a): ``nf_regnet.py:B0``.

Run: python experiments/train.py --config=configs/nf_regnet.py:B0 --workdir=/tmp/nf_regnet_b0
Recipe (facts, section 5): batch 1024, lr 0.4 (not scaled with the batch), 360 epochs, 5
warm-up epochs then cosine, plain SGD Nesterov without AGC, weight decay 5e-5 (B0) rising to
1e-4 (B5+), label smoothing 0.1, EMA, no RandAugment, bfloat16, per-variant image sizes
(B0 192/224). Expected (2021a): NF-RegNet-B0 about 76.8% ImageNet top-1.

``nf_regnet.py:B0,local``: a 10-step float32 smoke run at 64 px with batch 16.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position

# variant: (train px, test px, weight decay)
VARIANTS = {
    "B0": (192, 224, 5e-5), "B1": (224, 256, 5e-5), "B2": (240, 272, 5e-5),
    "B3": (288, 320, 5e-5), "B4": (320, 384, 5e-5), "B5": (384, 456, 1e-4),
    "B6": (456, 528, 1e-4), "B7": (512, 600, 1e-4), "B8": (600, 672, 1e-4),
}


def get_config(arg=None):
  variant, flags = default.parse_args(arg or "B0", known=("local",))
  variant = variant.upper()
  if variant not in VARIANTS:
    raise ValueError(f"Unknown NF-RegNet variant {variant!r}; use one of {sorted(VARIANTS)}.")
  train_px, test_px, wd = VARIANTS[variant]
  c = default.get_default()
  c.model = f"nf_regnet_{variant.lower()}"
  c.model_kwargs = default.ml_collections.ConfigDict()
  c.train_image_size = train_px
  c.eval_image_size = test_px
  c.augment = default.ml_collections.ConfigDict(dict(
      flip=True, pad=0, randaugment_layers=0, randaugment_magnitude=0, mixup_alpha=0.0,
      cutmix=False))
  c.batch_size = 1024
  c.optimizer.name = "sgd"
  c.optimizer.base_lr = 0.4
  c.optimizer.lr_scale_batch = None
  c.optimizer.weight_decay = wd
  if "local" in flags:
    default.apply_local(c)
  return c
