"""A deterministic synthetic dataset (class templates + noise): install checks and engine tests.

Run: python experiments/train.py --config=configs/synthetic.py:tiny --workdir=/tmp/synthetic
``tiny`` trains a ~5k-parameter NF model on 8x8 images for 3 steps in seconds; without ``tiny``
it is the demo NF model on 28x28 images for 200 steps (it should reach ~100% top-1, the data is
easy). The global batch of each step does not depend on the device or process layout.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  flags = default.parse_flags(arg, known=("tiny",))
  c = default.get_default()
  c.model = "nf_demo"
  c.dataset = "synthetic"
  c.synthetic.channels = 1
  c.synthetic.num_eval_examples = 100
  c.train_image_size = 28
  c.eval_image_size = 28
  c.batch_size = 64
  c.eval_batch_size = 16
  c.num_train_steps = 200
  c.log_every_steps = 20
  c.checkpoint_every_steps = 100
  c.compute_dtype = "float32"
  c.optimizer.base_lr = 0.2
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.clipping = 0.05
  c.ema_decay = 0.9
  if "tiny" in flags:
    c.model = "nf_demo_tiny"
    c.train_image_size = 8
    c.eval_image_size = 8
    c.batch_size = 16
    c.num_train_steps = 3
    c.log_every_steps = 1
  return c
