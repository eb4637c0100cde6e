"""Shared defaults of every experiment config: the NFNet ImageNet recipe (facts, section 5).

Not a runnable config by itself; the configs beside it start from ``get_default()`` and
override fields. Field meanings are documented inline.
"""
import ml_collections

from nfnets_jax import optim


def get_default() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = "nfnet_f0"                  # a name in nfnets_jax.models (list_models()); '' with
                                        # init_from: the source's architecture
  c.model_kwargs = ml_collections.ConfigDict()  # constructor overrides (width, drop_rate, ...)
  c.dataset = "imagenet2012"            # TFDS name, 'folder' (your images), or 'synthetic'
  # TFDS data_dir (None = default); with dataset='folder' the image folder ROOT, laid out as
  # ROOT/<split>/<class>/<image> (docs/finetuning.md)
  c.data_dir = ml_collections.config_dict.placeholder(str)
  # dataset='folder' only: the fraction of each class of ROOT/train held out for evaluation
  # when ROOT has no test/ or val/ folder (same files on every run; 0 = none)
  c.folder_holdout = 0.1
  # dataset='folder' only: unreadable image files are 'skip'ped with one warning, or an 'error'
  c.corrupt_images = "skip"
  c.train_split = "train"
  c.eval_split = "validation"           # ImageNet test = TFDS validation
  c.train_image_size = 192
  c.eval_image_size = 256
  c.train_preproc = "inception_crop"    # 'inception_crop' | 'pad_crop' | 'none'
  c.eval_preproc = "resize_crop_32"     # 'resize_crop_32' | 'crop_resize' | 'none'
  c.eval_crop_pct = 0.875
  c.normalization = "imagenet"          # 'imagenet' | 'dataset' | 'custom' | 'none' | 'source'
  c.normalization_mean = ()             # 'custom': per channel, in [0, 1] pixel units
  c.normalization_std = ()
  c.augment = ml_collections.ConfigDict(dict(
      flip=True, pad=4, randaugment_layers=4, randaugment_magnitude=5, mixup_alpha=0.2,
      cutmix=True))
  c.shuffle_buffer = 16384
  c.batch_size = 4096                   # GLOBAL batch per optimizer step
  c.per_device_batch_size = ml_collections.config_dict.placeholder(int)  # None: batch/devices
  c.eval_batch_size = 1024              # global
  c.eval_flip = False                   # True: average logits with the left-right mirror
  c.num_epochs = 360.0
  c.num_train_steps = ml_collections.config_dict.placeholder(int)  # overrides num_epochs
  c.label_smoothing = 0.1
  c.compute_dtype = "bfloat16"          # params/grads/optimizer state stay float32
  # The recipe's optimizer, defined once in nfnets_jax.optim.default_optimizer_config (AGC ->
  # weight decay -> Nesterov SGD). name: 'sgd_agc' | 'sgd' | 'sgd_global_clip' | 'adamw';
  # lr = base_lr * batch_size / lr_scale_batch (None: no scaling); freeze: regex of parameter
  # paths not to train; body_lr_mult: lr multiplier outside the classifier.
  c.optimizer = optim.default_optimizer_config()
  # Sharpness-Aware Minimization (nfnets_jax/engine/sam.py): rho = 0 is plain training; the
  # ascent gradient comes from the first batch_fraction of each device's micro-batch, per
  # device (sync=True: averaged over all devices first).
  c.sam = ml_collections.ConfigDict(dict(rho=0.0, batch_fraction=1.0, sync=False))
  c.ema_decay = ml_collections.config_dict.placeholder(float)
  c.ema_decay = 0.99999                 # None disables the parameter EMA
  c.nonfinite = "stop"                  # 'stop' | 'skip' on a non-finite loss
  c.log_every_steps = 50
  c.eval_every_steps = 0                # 0 = evaluate only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  # Rerunning a finished run (its final checkpoint and summary.json in the workdir) prints one
  # line and stops; True evaluates that final checkpoint again (and rewrites summary.json).
  c.eval_on_finished = False
  # Write checkpoints in a background thread (orbax async) while training continues; the
  # state is copied first. False: every save blocks until it is on disk.
  c.async_checkpointing = True
  # Fine-tuning: start from pretrained weights (anything nfnets_jax.pretrained.load takes).
  # Only step 0: a workdir with checkpoints resumes from them. Fields set to '' / 0 / 'source'
  # (model, image sizes, channels, eval_preproc, normalization) are taken from the source.
  c.init_from = ""
  c.init_arch = ""                      # timm architecture of a bare .safetensors file
  c.init_ema = ml_collections.config_dict.placeholder(bool)  # None: EMA weights when present
  c.reinit_head = False                 # re-initialise the classifier even if classes match
  c.init_params = True                  # False: only architecture/sizes/normalization from
                                        # init_from, random weights (the from-scratch baseline)
  c.image_channels = 0                  # 0: the dataset's own (or the source's) channels
  # Devices. 'pmap': every device holds the whole state (the reference). 'mesh': jax.jit over a
  # (data, fsdp) mesh; parameters, optimizer state and EMA are sharded over fsdp devices (1 =
  # replicated; must divide the device count). Same numbers, same checkpoints, either way.
  c.parallel = "pmap"
  c.fsdp = 1
  # 'blocks': recompute each residual block's activations in the backward pass (same numbers,
  # less activation memory, ~1/3 more compute).
  c.remat = "none"
  # JAX's persistent compilation cache (nfnets_jax/engine/compile_cache.py): 'auto' = the
  # JAX_COMPILATION_CACHE_DIR environment variable, else ~/.cache/nfnets_jax/
  # jax_compilation_cache; a path; '' = off. A second launch skips recompiling its first step.
  c.compilation_cache_dir = "auto"
  # A jax.profiler trace of train steps [start, stop) into workdir/profile (TensorBoard's
  # profile plugin or Perfetto), e.g. (10, 13); None: off.
  c.profile_steps = ml_collections.config_dict.placeholder(tuple)
  # Engine knobs (rarely changed).
  c.num_devices = ml_collections.config_dict.placeholder(int)  # first N local devices (1 process)
  c.debug_nan_at_step = ml_collections.config_dict.placeholder(int)  # test hook: NaN at step
  c.synthetic = ml_collections.ConfigDict(dict(  # used when dataset == 'synthetic'
      num_classes=10, channels=3, num_train_examples=1024, num_eval_examples=100, noise=1.0))
  return c


def apply_local(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ImageNet configs' ``local`` setting: ten tiny float32 steps at 64 px, for a laptop."""
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_train_steps = 10
  c.train_image_size = 64
  c.eval_image_size = 64
  c.eval_split = "validation[:64]"
  c.shuffle_buffer = 256
  c.compute_dtype = "float32"
  c.log_every_steps = 1
  c.checkpoint_every_steps = 5
  return c


def apply_local_data(c: ml_collections.ConfigDict, source: str) -> ml_collections.ConfigDict:
  """The ``local`` setting without ImageNet: ``'synthetic'`` (the built-in set: 4 classes, 16
  training images, so an epoch is one step and the recipe's warm-up epochs end within the 10
  steps) or ``'folder'`` (your images: ``--config.data_dir=ROOT``, read as RGB, evaluated on
  the whole eval folder: TFDS refuses a slice larger than the split)."""
  apply_local(c)
  c.dataset = source
  if source == "synthetic":
    c.synthetic.num_classes = 4
    c.synthetic.num_train_examples = 16
    c.synthetic.num_eval_examples = 64
  else:
    c.eval_split = "validation"  # test/, val/ or validation/, or the held-out part of train/
    c.image_channels = 3  # the recipe's ImageNet normalization has three channels
  return c


def parse_args(arg, known=()):
  """Splits ``'F0,local'`` into ``('F0', {'local'})``; unknown flags are an error."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  head = parts[0] if parts else None
  flags = set(parts[1:])
  unknown = flags - set(known)
  if unknown:
    raise ValueError(f"Unknown config option(s) {sorted(unknown)}; known: {sorted(known)}.")
  return head, flags


def parse_flags(arg, known=()):
  """``'local'`` -> ``{'local'}`` for configs without a variant argument."""
  flags = {p.strip() for p in (arg or "").split(",") if p.strip()}
  unknown = flags - set(known)
  if unknown:
    raise ValueError(f"Unknown config option(s) {sorted(unknown)}; known: {sorted(known)}.")
  return flags
