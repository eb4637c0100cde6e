"""Fine-tune pretrained weights on your own images (or any TFDS dataset).

Run:
  python experiments/train.py --config=configs/finetune.py --workdir=W \\
      --config.init_from=SOURCE --config.dataset=folder --config.data_dir=ROOT
SOURCE: anything ``nfnets_jax.pretrained.load`` takes (a timm hub folder such as
``dm_nfnet_f0``, DeepMind's ``F0_haiku.npz``, or one of our workdirs such as the one
``make train`` leaves). ROOT holds ``train/<class>/*.png|jpg|...`` and ``test/<class>/...``
(or only ``train/``: a held-out part becomes the test split). The architecture, image sizes,
channels, normalization and eval resize/crop come from SOURCE; the classifier is re-initialised
when the class count differs; every other parameter is loaded exactly. Recipe: 10 epochs, batch
64, SGD Nesterov at lr 0.025 (0.1 x 64 / 256) with one epoch of warm-up and cosine decay, AGC
at 0.04 with the whole classifier excluded ('paper'), weight decay 1e-5, label smoothing 0.1,
EMA 0.99; flips and pad-crop (<= 64 px) or inception crops.
Options: ``--config.optimizer.freeze='^(?!.*/~/linear/)'`` trains only the classifier (a linear
probe); ``--config.optimizer.body_lr_mult=0.1`` a lower learning rate for the body;
``--config.num_epochs=N``; ``--config.sam.rho=0.05 --config.sam.batch_fraction=0.2`` adds SAM
(nfnets_jax/engine/sam.py; measured on the demo in docs/benchmarks.md);
``--config.reinit_head=True``; ``--config.init_params=False`` the same run from random weights
(the from-scratch baseline); ``--config.dataset=cifar10`` any TFDS dataset. Rerunning the
command resumes; SIGTERM saves and exits.

``configs/finetune.py:demo`` is ``make finetune``: the Fashion-MNIST demo model of ``make
train`` fine-tuned on scikit-learn's handwritten digits written as an image folder (no flips:
digits are not mirror-symmetric; the classifier re-initialised: other classes), 30 epochs of the
300 training digits (141 steps) at lr 0.075. Measured on 2 CPU cores: 98.13% top-1 (EMA
98.13%) on the 1,497 test digits in 34 s; from random weights (``--config.init_params=False``,
same steps) 43.62%.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  flags = default.parse_flags(arg, known=("demo",))
  c = default.get_default()
  c.model = ""                       # from init_from
  c.init_from = ""                   # required: --config.init_from=SOURCE
  c.dataset = "folder"
  c.train_split = "train"
  c.eval_split = "test"
  c.train_image_size = 0             # 0: the source's
  c.eval_image_size = 0
  c.image_channels = 0
  c.normalization = "source"
  c.eval_preproc = "source"
  c.train_preproc = "auto"           # pad_crop up to 64 px, inception_crop above
  c.augment = default.ml_collections.ConfigDict(dict(
      flip=True, pad=4, randaugment_layers=0, randaugment_magnitude=0, mixup_alpha=0.0,
      cutmix=False))
  c.shuffle_buffer = 4096
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 10.0
  c.compute_dtype = "float32"        # bfloat16 on GPU/TPU
  c.label_smoothing = 0.1
  c.optimizer.base_lr = 0.1
  c.optimizer.lr_scale_batch = 256
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 1e-5
  c.optimizer.clipping = 0.04
  c.optimizer.agc_exclude = "paper"  # the whole new classifier is left unclipped
  c.ema_decay = 0.99
  c.log_every_steps = 10
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  if "demo" in flags:
    c.reinit_head = True             # digits are not Fashion-MNIST's classes, though both are 10
    c.augment.flip = False
    c.augment.pad = 2
    c.num_epochs = 30.0              # 300 images: 141 steps
    c.optimizer.base_lr = 0.3        # 0.075 at batch 64: a small model takes a larger rate
  return c
