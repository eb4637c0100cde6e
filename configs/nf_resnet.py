"""NF-ResNet baselines (Brock et al. 2021a) on ImageNet: ``nf_resnet.py:50`` (26, 50, 101, 152,
200, 288, 600 when registered).

Run: python experiments/train.py --config=configs/nf_resnet.py:50 --workdir=/tmp/nf_resnet50
Recipe: the 2021a setting of batch 1024, 90 epochs (360 gives a little more), lr 0.4 (scaled
by B/1024) with cosine decay, Nesterov, weight decay 5e-5, AGC 0.01, label smoothing 0.1, EMA,
flip + inception crop at 224 px, no RandAugment/MixUp, bfloat16. Expected (2021a, 90
epochs): NF-ResNet-50 about 76.8% ImageNet top-1 (NF-ResNet-50 with AGC and the F-recipe: ~79%).

``nf_resnet.py:50,local``: a 10-step float32 smoke run at 64 px with batch 16.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  depth, flags = default.parse_args(arg or "50", known=("local",))
  c = default.get_default()
  c.model = f"nf_resnet{depth}"
  c.model_kwargs = default.ml_collections.ConfigDict()
  c.train_image_size = 224
  c.eval_image_size = 224
  c.eval_preproc = "crop_resize"
  c.augment = default.ml_collections.ConfigDict(dict(
      flip=True, pad=0, randaugment_layers=0, randaugment_magnitude=0, mixup_alpha=0.0,
      cutmix=False))
  c.batch_size = 1024
  c.num_epochs = 90.0
  c.optimizer.base_lr = 0.4
  c.optimizer.lr_scale_batch = 1024
  c.optimizer.warmup_epochs = 5.0
  c.optimizer.weight_decay = 5e-5
  c.optimizer.clipping = 0.01
  if "local" in flags:
    default.apply_local(c)
  return c
