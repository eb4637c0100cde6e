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
from configs import nf_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  # The NF-ResNet recipe with the BatchNorm model, plain SGD (no clipping) and no EMA.
  c = nf_resnet.get_config(arg)
  c.model = c.model.replace("nf_resnet", "resnet") + "_bn"
  c.optimizer.name = "sgd"
  c.optimizer.warmup_epochs = 5.0
  c.ema_decay = None
  return c
