"""Pre-activation BatchNorm ResNet-50 baseline on ImageNet: ``resnet_bn.py`` (``:50``).

Run: python experiments/train.py --config=configs/resnet_bn.py --workdir=/tmp/resnet50_bn
Recipe: batch 1024, 90 epochs, lr 0.4 * B / 1024 with 5 warm-up epochs and cosine, SGD
Nesterov, weight decay 5e-5, no clipping (BatchNorm needs none), label smoothing 0.1, flip +
inception crop at 224 px, bfloat16. BatchNorm statistics are model state (averaged over
devices each step). Expected: about 76-77% ImageNet top-1 in 90 epochs.

``resnet_bn.py:50,local``: a 10-step float32 smoke run at 64 px with batch 16.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  depth, flags = default.parse_args(arg or "50", known=("local",))
  c = default.get_default()
  c.model = f"resnet{depth}_bn"
  c.model_kwargs = default.ml_collections.ConfigDict()
  c.train_image_size = 224
  c.eval_image_size = 224
  c.eval_preproc = "crop_resize"
  c.augment = default.ml_collections.ConfigDict(dict(
      flip=True, pad=0, randaugment_layers=0, randaugment_magnitude=0, mixup_alpha=0.0,
      cutmix=False))
  c.batch_size = 1024
  c.num_epochs = 90.0
  c.optimizer.name = "sgd"
  c.optimizer.base_lr = 0.4
  c.optimizer.lr_scale_batch = 1024
  c.optimizer.weight_decay = 5e-5
  c.ema_decay = None
  if "local" in flags:
    default.apply_local(c)
  return c
