"""One door for every set of weights: timm's hub folders and safetensors, DeepMind's released
files, converted ``.npz`` and our own training workdirs.

``load(source, arch=None)`` returns a :class:`Pretrained`: the architecture (our registry name
and overrides), the class count and names, params and state, the source's own eval recipe
(resolution, crop, normalization), ``preprocess(uint8 images)`` and a jit-compiled
``logits(images)``. ``checkpoint_kind`` tells what a file holds; ``load_for_eval`` loads and
validates a checkpoint for a given config's model (every name and shape checked first).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax import models
from nfnets_jax.engine import checkpoint
from nfnets_jax.engine import steps
from nfnets_jax.errors import CheckpointError, CheckpointNotFoundError, EvaluationError
from nfnets_jax.weights import deepmind


def model_kwargs(config) -> dict:
  kwargs = config.get("model_kwargs", None)
  return dict(kwargs.items()) if kwargs is not None else {}


def _hashable_kwargs(config) -> dict:
  """Model kwargs that affect parameter shapes (rates and dropout do not)."""
  kw = model_kwargs(config)
  for k in ("stochdepth_rate", "drop_rate"):
    kw.pop(k, None)
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}


def _resolve_orbax(path: str) -> Tuple[str, Optional[int]]:
  """(checkpoints directory, step or None) for a workdir / checkpoints dir / step dir."""
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  base = os.path.basename(os.path.normpath(path))
  if base.isdigit():
    return os.path.dirname(os.path.normpath(path)), int(base)
  return path, None


def read_checkpoint(directory: str, step: Optional[int] = None) -> Tuple[int, Dict[str, Any]]:
  """(step, state as saved) of checkpoint ``step`` in ``directory``, or of the newest readable
  one. Unreadable newer steps are skipped with a warning on stderr and never moved: reading
  must not modify a workdir (training moves them aside when it resumes)."""
  ckpt = checkpoint.Checkpointer(
      directory, log=lambda message: print(message, file=sys.stderr, flush=True))
  try:
    if step is None:
      found = ckpt.restore_latest(None, move_aside=False)
      if found is None:
        raise CheckpointNotFoundError(f"No checkpoint in {directory} yet: train first.")
      return found
    if step not in ckpt.all_steps():
      raise CheckpointNotFoundError(f"No checkpoint step {step} in {directory} (steps: "
                                    f"{sorted(ckpt.all_steps())}).")
    try:
      return step, ckpt.restore_raw(step)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"Checkpoint {step} in {directory} cannot be read "
                            f"({type(e).__name__}: {e}).") from e
  finally:
    ckpt.close()


def checkpoint_kind(path: str) -> str:
  """'orbax' (a directory), 'npz' (zip archive) or 'deepmind' (a pickle), read from the bytes.

  Anything else raises ``CheckpointError`` saying what the file starts with.
  """
  if not os.path.exists(path):
    raise CheckpointNotFoundError(f"No checkpoint at {path!r}: give a workdir, an orbax checkpoint "
                          "directory, a DeepMind F*_haiku.npz or a converted .npz.")
  if os.path.isdir(path):
    return "orbax"
  with open(path, "rb") as f:
    head = f.read(8)
  if head.startswith(b"PK"):
    return "npz"
  if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
    return "deepmind"
  if not head:
    raise CheckpointError(f"{path} is empty (0 bytes): not a readable checkpoint.")
  raise CheckpointError(
      f"{path} is not a readable checkpoint: it is neither a zip archive (.npz starts with 'PK') "
      f"nor a pickle (DeepMind's release starts with 0x80 and a protocol byte); its first "
      f"bytes are {head!r}. Check the path or download the file again.")


def load_for_eval(path: str, config, num_classes: int, *, channels: int = 3,
                  use_ema: Optional[bool] = None,
                  step: Optional[int] = None, trust: bool = False,
                  expected_md5: Optional[str] = None) -> Dict[str, Any]:
  """Loads and validates ``path`` for ``config.model``.

  Returns ``{'kind', 'step', 'variants': [(label, params, model_state), ...]}`` where labels are
  'raw' and/or 'ema'. ``use_ema``: None = both when available, True = EMA only, False = raw only.
  """
  kind = checkpoint_kind(path)
  model_name = config.model
  info = models.get_info(model_name)
  shape_kwargs = _hashable_kwargs(config)
  expected = deepmind.expected_param_shapes(model_name, num_classes, channels, **shape_kwargs)
  variants: List[Tuple[str, Any, Any]] = []
  if kind == "orbax":
    directory, dir_step = _resolve_orbax(path)
    step = dir_step if step is None else step
    step, raw = read_checkpoint(directory, step)
    if "params" not in raw:
      raise EvaluationError(f"{path} (step {step}) has no 'params'; keys: {sorted(raw)}.")
    model_state = raw.get("model_state", {}) or {}
    if use_ema is not True:
      variants.append(("raw", raw["params"], model_state))
    if use_ema is not False and "ema_params" in raw:
      variants.append(("ema", raw["ema_params"], model_state))
    if use_ema and "ema_params" not in raw:
      raise EvaluationError(f"{path} has no EMA parameters (the run had ema_decay=None); "
                            "drop --use_ema to evaluate the raw parameters.")
    for label, params, _ in variants:
      deepmind.validate_params(params, expected,
                                  source=f"{path} step {step} ({label} params)")
  else:
    if use_ema:
      raise EvaluationError(f"{path} is a single parameter set ({kind}); --use_ema applies to "
                            "our training checkpoints only.")
    if info.has_state:
      raise EvaluationError(f"{model_name} has BatchNorm state, which {kind} files do not hold; "
                            "evaluate its training workdir instead.")
    try:
      params = deepmind.load_params(path, model_name, num_classes, trust=trust,
                                       expected_md5=expected_md5, **shape_kwargs)
    except CheckpointError as e:
      raise EvaluationError(f"{e} (config model: {model_name} with {num_classes} classes, "
                            f"overrides {shape_kwargs})") from None
    variants.append(("raw", params, {}))
  return {"kind": kind, "step": step, "variants": variants}


# ------------------------------------------------------------------------------------------
# load(source): every weight source as one object with its metadata and eval recipe.
# ------------------------------------------------------------------------------------------
RUN_FILE = "run.json"  # written by the engine into every workdir: model, data, eval recipe
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # in [0, 1] units, as timm states them
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class Pretrained:
  """A model with its weights and everything needed to use them.

  ``name`` and ``model_kwargs`` build the architecture (``models.create(name, num_classes,
  **model_kwargs)``); ``params``/``state`` are numpy trees. ``image_size`` is the training
  resolution, ``eval_image_size``/``eval_preproc``/``crop_pct``/``mean``/``std`` (mean and std
  in [0, 1] pixel units, as timm gives them) are the source's own eval recipe, applied by
  ``preprocess``. ``logits(images)`` runs the model in eval mode on NHWC float32 images that are
  already preprocessed (jit-compiled once per input shape).
  """
  name: str
  model_kwargs: Dict[str, Any]
  num_classes: int
  params: Any
  state: Any
  image_size: int
  eval_image_size: int
  crop_pct: float
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  channels: int = 3
  eval_preproc: str = "crop_resize"
  crop_mode: str = "center"
  interpolation: str = "bicubic"
  class_names: Optional[Tuple[str, ...]] = None
  source: str = ""
  kind: str = ""
  step: Optional[int] = None
  timm_name: Optional[str] = None
  ema: bool = False
  config: Optional[Dict[str, Any]] = None
  _logits_fn: Any = dataclasses.field(default=None, repr=False, compare=False)

  def forward(self):
    """The Haiku transform of the architecture (``forward.apply(params, state, rng, x, train)``)."""
    return steps.make_forward(
        ml_collections.ConfigDict(dict(model=self.name, model_kwargs=dict(self.model_kwargs))),
        self.num_classes)

  def logits(self, images) -> np.ndarray:
    """float32 logits [B, num_classes] of preprocessed NHWC float32 ``images`` (eval mode)."""
    if self._logits_fn is None:
      self._logits_fn = jax.jit(steps.make_eval_apply(self.forward()))
    return np.asarray(self._logits_fn(self.params, self.state, jnp.asarray(images, jnp.float32)))

  def preprocess(self, images) -> np.ndarray:
    """uint8 images (one [H, W, C] / [H, W] array, a batch, or a list of any sizes) -> the
    model's input: this source's eval resize/crop at ``eval_image_size``, its channels and its
    normalization, float32 [B, S, S, C]."""
    from nfnets_jax.data import preprocessing  # pylint: disable=import-outside-toplevel
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
      images = [images]
    out = []
    for image in images:
      image = to_channels(np.asarray(image), self.channels)
      crop = preprocessing.eval_preprocess(image, self.eval_preproc, self.eval_image_size,
                                           self.channels, self.crop_pct)
      out.append(np.asarray(crop, np.float32))
    batch = np.stack(out)
    mean = np.asarray(self.mean, np.float32) * 255.0
    std = np.asarray(self.std, np.float32) * 255.0
    return (batch - mean) / std

  def predict(self, images) -> np.ndarray:
    """Class probabilities [B, num_classes] of uint8 ``images`` (see ``preprocess``)."""
    logits = self.logits(self.preprocess(images))
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def label(self, index: int) -> str:
    """The class name of ``index`` (or the index as a string when names are unknown)."""
    if self.class_names and 0 <= index < len(self.class_names):
      return self.class_names[index]
    return str(index)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [H, W] / [H, W, 1|2|3|4] -> [H, W, channels]: alpha dropped, gray repeated, RGB to
  luma (ITU-R 601) for one-channel models."""
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise CheckpointError(f"An image must be [H, W] or [H, W, C]; got shape {image.shape}.")
  c = image.shape[-1]
  if c in (2, 4):  # gray + alpha, RGBA
    image, c = image[..., :c - 1], c - 1
  if c == channels:
    return image
  if c == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if c == 3 and channels == 1:
    luma = image.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(image.dtype)[..., None]
  raise CheckpointError(f"Cannot convert a {c}-channel image to {channels} channels.")


@functools.lru_cache(maxsize=None)
def imagenet_class_names() -> Tuple[str, ...]:
  """The 1000 ImageNet-1k class names in label order, from the list TFDS ships (first synonym;
  falls back to WordNet ids)."""
  try:
    from tensorflow_datasets.datasets.siscore import labels  # pylint: disable=import-outside-toplevel
    names = [name.split(",")[0].strip() for name in labels.IMAGENET_LABELS_LIST]
    if len(names) == 1000:
      return tuple(names)
  except ImportError:
    pass
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
  with open(path) as f:
    return tuple(line.strip() for line in f if line.strip())


def _source_kind(source: str) -> str:
  """'timm_folder', 'safetensors', 'torch', 'workdir', 'npz' or 'deepmind'."""
  if not os.path.exists(source):
    raise CheckpointNotFoundError(
        f"No weights at {source!r}: give a timm/hub folder (config.json + model.safetensors), "
        "a .safetensors file with arch=..., a DeepMind F*_haiku.npz, a converted .npz or one "
        "of our training workdirs.")
  if os.path.isdir(source):
    if os.path.exists(os.path.join(source, "config.json")):
      return "timm_folder"
    return "workdir"
  lower = source.lower()
  if lower.endswith(".safetensors"):
    return "safetensors"
  if lower.endswith((".pth", ".pt", ".bin")):
    return "torch"
  return checkpoint_kind(source)


def is_external(source: str) -> bool:
  """True for weights whose architecture is in the file (timm folders, safetensors, torch)."""
  return os.path.exists(source) and _source_kind(source) in ("timm_folder", "safetensors",
                                                             "torch")


def load(source: str, arch: Optional[str] = None, *, ema: Optional[bool] = None,
         num_classes: Optional[int] = None, trust: bool = False,
         step: Optional[int] = None) -> Pretrained:
  """Loads weights from ``source`` as a :class:`Pretrained` with their eval recipe.

  ``source``: a timm/hub model folder (``config.json`` + ``model.safetensors``: architecture and
  classes from ``config.json``); a bare ``.safetensors`` (or, with torch installed, ``.pth``/
  ``.bin``) file with ``arch`` = a supported timm name; DeepMind's released ``F*_haiku.npz``
  (MD5-checked; ``trust=True`` for other files in that format) or a converted ``.npz``; one of
  our training workdirs, its ``checkpoints/`` folder or one step folder (the newest readable
  checkpoint; EMA parameters when present unless ``ema=False``).
  """
  source = os.fspath(source)
  kind = _source_kind(source)
  if kind in ("timm_folder", "safetensors", "torch"):
    return _load_timm(source, kind, arch, num_classes)
  if kind == "workdir":
    return _load_workdir(source, ema=ema, step=step)
  return _load_deepmind(source, kind, arch, num_classes, trust)


def _load_timm(source, kind, arch, num_classes) -> Pretrained:
  from nfnets_jax.weights import timm  # pylint: disable=import-outside-toplevel
  if kind == "timm_folder":
    timm_name, folder_classes, cfg, state_dict = timm.read_hub_folder(source)
    if arch and timm._canonical(arch) != timm_name:  # pylint: disable=protected-access
      raise CheckpointError(f"{source} holds {timm_name!r} (config.json) but arch={arch!r}.")
    num_classes = num_classes or folder_classes
  else:
    if not arch:
      raise CheckpointError(
          f"{source} is a bare weight file: pass the timm architecture, e.g. "
          f"arch='dm_nfnet_f0' (supported: {sorted(timm.TIMM_MODELS)}).")
    timm_name = timm._canonical(arch)  # pylint: disable=protected-access
    state_dict = (timm.read_safetensors(source) if kind == "safetensors"
                  else timm.read_torch_file(source))
    cfg = dict(timm.TIMM_MODELS[timm_name].pretrained_cfg)
  name, kwargs, params, state = timm.to_haiku(state_dict, timm_name, num_classes)
  num_classes = int(timm.num_classes_of(state_dict, source))
  test_size = cfg.get("test_input_size") or cfg.get("input_size")
  return Pretrained(
      name=name, model_kwargs=dict(kwargs), num_classes=num_classes, params=params,
      state=state, image_size=int(cfg["input_size"][-1]), eval_image_size=int(test_size[-1]),
      crop_pct=float(cfg.get("test_crop_pct") or cfg.get("crop_pct", 0.875)),
      crop_mode=cfg.get("crop_mode", "center"), interpolation=cfg.get("interpolation", "bicubic"),
      mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
      channels=int(cfg["input_size"][0]), eval_preproc="crop_resize",
      class_names=imagenet_class_names() if num_classes == 1000 else None,
      source=os.path.abspath(source), kind="timm", timm_name=timm_name)


def _load_deepmind(source, kind, arch, num_classes, trust) -> Pretrained:
  meta = {}
  if kind == "npz":
    params, meta = deepmind.load_params_npz(source)
    name = arch or meta.get("model")
    if not name:
      prefix = next(iter(params)).split("/")[0]
      name = deepmind._model_name(deepmind._infer_variant(params, prefix))  # pylint: disable=protected-access
    params = deepmind.load_params(source, name, num_classes)
  else:
    params = deepmind.load_deepmind_checkpoint(source, trust=trust, num_classes=num_classes)
    prefix = next(iter(params)).split("/")[0]
    name = deepmind._model_name(deepmind._infer_variant(params, prefix))  # pylint: disable=protected-access
  info = models.get_info(name)
  classes = int(next(v["w"].shape[-1] for k, v in params.items() if k.endswith("/~/linear")))
  return Pretrained(
      name=name, model_kwargs=dict(meta.get("model_kwargs", {})), num_classes=classes,
      params=params, state={}, image_size=int(info.train_image_size),
      eval_image_size=int(info.test_image_size), crop_pct=info.test_image_size /
      (info.test_image_size + 32), mean=IMAGENET_MEAN, std=IMAGENET_STD, channels=3,
      eval_preproc="resize_crop_32",
      class_names=imagenet_class_names() if classes == 1000 else None,
      source=os.path.abspath(source), kind="deepmind" if kind == "deepmind" else "npz")


def read_run_file(workdir: str) -> Dict[str, Any]:
  """The ``run.json`` the engine wrote into ``workdir`` (model, data, eval recipe)."""
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{workdir} has no {RUN_FILE} (written by the engine since this version): it is not a "
        "training workdir of nfnets_jax, or an old one. Pass --config to evaluate it.")
  with open(path) as f:
    return json.load(f)


def _workdir_of(path: str) -> Tuple[str, Optional[int]]:
  directory, step = _resolve_orbax(path)
  workdir = os.path.dirname(os.path.normpath(directory))
  if os.path.basename(os.path.normpath(directory)) != "checkpoints":
    workdir = path
  return workdir, step


def _load_workdir(source, *, ema, step) -> Pretrained:
  workdir, dir_step = _workdir_of(source)
  run = read_run_file(workdir)
  directory = os.path.join(workdir, "checkpoints")
  step = dir_step if step is None else step
  step, raw = read_checkpoint(directory, step)
  use_ema = "ema_params" in raw if ema is None else bool(ema)
  if use_ema and "ema_params" not in raw:
    raise CheckpointError(f"{source} has no EMA parameters (the run had ema_decay=None); "
                          "pass ema=False.")
  mean, std = run.get("mean"), run.get("std")
  return Pretrained(
      name=run["model"], model_kwargs=dict(run.get("model_kwargs") or {}),
      num_classes=int(run["num_classes"]), params=raw["ema_params" if use_ema else "params"],
      state=raw.get("model_state", {}) or {}, image_size=int(run["train_image_size"]),
      eval_image_size=int(run["eval_image_size"]), crop_pct=float(run.get("eval_crop_pct", 0.875)),
      mean=tuple(mean) if mean else (0.0,) * int(run["channels"]),
      std=tuple(std) if std else (1.0 / 255.0,) * int(run["channels"]),
      channels=int(run["channels"]), eval_preproc=run.get("eval_preproc", "none"),
      class_names=tuple(run["class_names"]) if run.get("class_names") else None,
      source=os.path.abspath(source), kind="workdir", step=int(step), ema=use_ema,
      config=run.get("config"))


def save_timm(model: Pretrained, folder: str) -> str:
  """Writes ``model`` as a timm hub folder (``config.json`` + ``model.safetensors``) that
  ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=FOLDER +
  '/model.safetensors', num_classes=N))`` loads with the same logits; returns the timm name.

  The folder's ``pretrained_cfg`` carries this model's eval recipe (sizes, crop, mean/std). A
  model without a timm counterpart (e.g. our ``nf_demo``) raises an error saying so.
  """
  from nfnets_jax.weights import timm  # pylint: disable=import-outside-toplevel
  timm_name = model.timm_name or timm.timm_name_for(model.name, model.model_kwargs)
  info = timm.TIMM_MODELS[timm_name]
  extra = {k: v for k, v in model.model_kwargs.items() if info.overrides.get(k, object()) != v}
  state_dict = timm.from_haiku(model.params, timm_name, model.num_classes,
                               model_overrides=extra or None)
  cfg = {
      "input_size": [model.channels, model.image_size, model.image_size],
      "test_input_size": [model.channels, model.eval_image_size, model.eval_image_size],
      "crop_pct": float(model.crop_pct),
      "mean": list(model.mean),
      "std": list(model.std),
  }
  timm.write_hub_folder(folder, timm_name, state_dict, model.num_classes, cfg)
  return timm_name
