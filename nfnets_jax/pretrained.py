"""One door for every set of weights: timm's hub folders and safetensors, DeepMind's released
files, converted ``.npz`` and our own training workdirs.

``load(source)`` returns a :class:`Pretrained` for every source: the architecture (our registry
name and constructor arguments), the class count and names, the parameter sets the source holds
(``'raw'`` and, for workdirs with an EMA, ``'ema'``; which one ``params`` is, is chosen
explicitly with ``params=``), the model state, the source's own eval recipe (a
``models.EvalRecipe``: size, resize/crop, interpolation, mean/std), ``preprocess(uint8 images)``
and a jit-compiled ``logits(images)``. Metadata comes from the source where it has it and from
the model's record in the registry otherwise. ``save_timm`` writes the other way. Evaluation,
predict, fine-tuning and the benchmark all come through here.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import models
from nfnets_jax.errors import CheckpointError, CheckpointNotFoundError
from nfnets_jax.weights import checkpoint
from nfnets_jax.weights import deepmind
from nfnets_jax.weights import timm as timm_weights

RUN_FILE = "run.json"  # written by the engine into every workdir: model, data, eval recipe
OUR_CONFIG_KEY = "nfnets_jax"  # our own metadata inside a timm config.json (timm ignores it)

# Which parameter set ``load`` puts in ``Pretrained.params``.
RAW, EMA, EMA_IF_ANY = "raw", "ema", "ema_if_any"
PARAM_CHOICES = (RAW, EMA, EMA_IF_ANY)


def params_choice(use_ema: Optional[bool]) -> str:
  """The ``params=`` choice of a command-line ``--ema``/``init_ema`` flag: True -> 'ema',
  False -> 'raw', unset -> 'ema_if_any'."""
  return EMA_IF_ANY if use_ema is None else (EMA if use_ema else RAW)


@dataclasses.dataclass
class Pretrained:
  """A model with its weights and everything needed to use them.

  ``name`` and ``model_kwargs`` build the architecture (``models.create(name, num_classes,
  **model_kwargs)``); ``params``/``state`` are numpy trees; ``param_sets`` holds every parameter
  set of the source by kind ('raw', 'ema'), ``ema`` says which one ``params`` is. ``image_size``
  is the training resolution, ``eval_image_size``/``eval_preproc``/``crop_pct``/``crop_mode``/
  ``interpolation``/``mean``/``std`` (mean and std in [0, 1] pixel units, as timm gives them)
  are the source's own eval recipe (``recipe``), applied by ``preprocess``. ``logits(images)``
  runs the model in eval mode on NHWC float32 images that are already preprocessed
  (jit-compiled once per input shape).
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
  param_sets: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
  _logits_fn: Any = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def recipe(self) -> models.EvalRecipe:
    """This source's eval recipe as a ``models.EvalRecipe``."""
    return models.EvalRecipe(self.eval_image_size, self.eval_preproc, float(self.crop_pct),
                             self.crop_mode, self.interpolation, tuple(self.mean),
                             tuple(self.std))

  def with_params(self, kind: str) -> "Pretrained":
    """The same model with parameter set ``kind`` ('raw' or 'ema') as ``params``."""
    if kind not in self.param_sets:
      raise CheckpointError(f"{self.source} has no {kind!r} parameters (it holds "
                            f"{sorted(self.param_sets) or ['raw']}).")
    return dataclasses.replace(self, params=self.param_sets[kind], ema=kind == EMA,
                               _logits_fn=None)

  def forward(self):
    """The Haiku transform of the architecture (``forward.apply(params, state, rng, x, train)``)."""
    return models.transform(self.name, self.num_classes, **self.model_kwargs)

  def logits(self, images) -> np.ndarray:
    """float32 logits [B, num_classes] of preprocessed NHWC float32 ``images`` (eval mode)."""
    if self._logits_fn is None:
      forward = self.forward()
      self._logits_fn = jax.jit(
          lambda params, state, x: forward.apply(params, state, None, x, False)[0]["logits"])
    return np.asarray(self._logits_fn(self.params, self.state, jnp.asarray(images, jnp.float32)))

  def preprocess(self, images) -> np.ndarray:
    """uint8 images (one [H, W, C] / [H, W] array, a batch, or a list of any sizes) -> the
    model's input: this source's eval resize/crop at ``eval_image_size``, its channels and its
    normalization, float32 [B, S, S, C]."""
    # TensorFlow is heavy: imported only when images are actually preprocessed.
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

  def check_fits(self, model_name: str, num_classes: int, channels: int = 3,
                 model_kwargs: Optional[Mapping[str, Any]] = None) -> None:
    """Raises ``CheckpointError`` naming every missing, extra or mis-shaped parameter when these
    weights are not those of ``model_name`` with ``num_classes`` classes and ``model_kwargs``."""
    if model_name != self.name:
      raise CheckpointError(f"{self.source} holds a {self.name!r} model, not {model_name!r}.")
    kwargs = {k: v for k, v in models.constructor_kwargs(model_kwargs).items()
              if k not in ("stochdepth_rate", "drop_rate")}  # rates do not change shapes
    expected = deepmind.expected_param_shapes(model_name, num_classes, in_channels=channels,
                                              **kwargs)
    for kind, params in (self.param_sets or {RAW: self.params}).items():
      deepmind.validate_params(params, expected, source=f"{self.source} ({kind} params)")


def _from_recipe(recipe: models.EvalRecipe, **fields) -> Pretrained:
  return Pretrained(eval_image_size=int(recipe.image_size), eval_preproc=recipe.preproc,
                    crop_pct=float(recipe.crop_pct), crop_mode=recipe.crop_mode,
                    interpolation=recipe.interpolation, mean=tuple(recipe.mean),
                    std=tuple(recipe.std), **fields)


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
  # tensorflow_datasets is heavy: imported only when ImageNet's names are needed.
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


def _default_class_names(num_classes: int) -> Optional[Tuple[str, ...]]:
  return imagenet_class_names() if num_classes == 1000 else None


# ------------------------------------------------------------------------------------------
# Telling sources apart.
# ------------------------------------------------------------------------------------------
_SOURCES_HELP = ("give a timm/hub folder (config.json + model.safetensors), a .safetensors file "
                 "with arch=..., DeepMind's F*_haiku.npz, a converted .npz or one of our "
                 "training workdirs")


def checkpoint_kind(path: str) -> str:
  """'orbax' (a directory), 'npz' (zip archive) or 'deepmind' (a pickle), read from the bytes.

  Anything else raises ``CheckpointError`` saying what the file starts with.
  """
  if not os.path.exists(path):
    raise CheckpointNotFoundError(f"No weights at {path!r}: {_SOURCES_HELP}.")
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


def _source_kind(source: str, arch: Optional[str] = None) -> str:
  """'timm_folder', 'safetensors', 'torch', 'workdir', 'npz' or 'deepmind' (by extension, then
  by content; an unknown file given with a timm architecture name goes to the torch reader)."""
  if not os.path.exists(source):
    raise CheckpointNotFoundError(f"No weights at {source!r}: {_SOURCES_HELP}.")
  if os.path.isdir(source):
    if os.path.exists(os.path.join(source, timm_weights.CONFIG_NAME)):
      return "timm_folder"
    return "workdir"
  lower = source.lower()
  if lower.endswith(".safetensors"):
    return "safetensors"
  if lower.endswith((".pth", ".pt", ".bin")):
    return "torch"
  try:
    return checkpoint_kind(source)
  except CheckpointError:
    if _is_timm_name(arch):  # given as timm's weights: the torch reader says what it is
      return "torch"
    raise


def _is_registered(arch: Optional[str]) -> bool:
  return bool(arch) and arch in models.list_models()


def _is_timm_name(arch: Optional[str]) -> bool:
  try:
    return bool(arch) and bool(timm_weights.canonical_name(arch))
  except timm_weights.UnknownArchitectureError:
    return False


def is_external(source: str) -> bool:
  """True for weights whose architecture is in the file (timm folders, safetensors, torch)."""
  return os.path.exists(source) and _source_kind(source) in ("timm_folder", "safetensors",
                                                             "torch")


# ------------------------------------------------------------------------------------------
# load(source).
# ------------------------------------------------------------------------------------------
def load(source: str, arch: Optional[str] = None, *, params: str = EMA_IF_ANY,
         num_classes: Optional[int] = None, trust: bool = False, step: Optional[int] = None,
         expected_md5: Optional[str] = None, model_kwargs: Optional[Mapping[str, Any]] = None,
         ema: Optional[bool] = None) -> Pretrained:
  """Loads weights from ``source`` as a :class:`Pretrained` with their eval recipe.

  ``source``: a timm/hub model folder (``config.json`` + ``model.safetensors``: architecture and
  classes from ``config.json``); a bare ``.safetensors`` (or, with torch installed, ``.pth``/
  ``.bin``) file with ``arch`` = a supported timm name; DeepMind's released ``F*_haiku.npz``
  (MD5-checked against the model records, or ``expected_md5``; ``trust=True`` for other files
  in that format); a converted ``.npz`` (architecture from its metadata); one of our training
  workdirs, its ``checkpoints/`` folder or one step folder (``step``: default the newest
  readable checkpoint; a checkpoint folder without the workdir's ``run.json`` is read as
  ``arch``, a registry name, with ``model_kwargs``). ``params``: 'raw', 'ema' or 'ema_if_any' (the EMA parameters of a
  workdir that kept them, else the raw ones); sources other than workdirs hold one set, 'raw'.
  ``model_kwargs``: constructor arguments of a non-standard architecture in a DeepMind pickle
  or an ``.npz`` (e.g. ``width``; rates are ignored), over those the file records. ``ema`` is
  the older spelling (True/False/None) of ``params``.
  """
  shapes = {k: v for k, v in models.constructor_kwargs(model_kwargs).items()
            if k not in ("stochdepth_rate", "drop_rate")}
  if ema is not None:
    params = params_choice(ema)
  if params not in PARAM_CHOICES:
    raise CheckpointError(f"params={params!r}; use one of {PARAM_CHOICES}.")
  source = os.fspath(source)
  kind = _source_kind(source, arch)
  if kind == "workdir":
    return _load_workdir(source, params=params, step=step, arch=arch, shapes=shapes)
  if params == EMA:
    raise CheckpointError(f"{source} is a single parameter set ({kind}); EMA parameters exist "
                          "only in our training workdirs.")
  if kind in ("timm_folder", "safetensors", "torch"):
    model = _load_timm(source, kind, arch, num_classes, shapes)
  elif kind == "npz":
    model = _load_npz(source, arch, num_classes, expected_md5, shapes)
  else:
    model = _load_deepmind(source, arch, num_classes, trust, expected_md5, shapes)
  model.param_sets = {RAW: model.params}
  return model


def _timm_folder_extras(folder: str) -> Tuple[Optional[Tuple[str, ...]], Dict[str, Any]]:
  """(label names, our own metadata) that ``save_timm`` wrote into a hub ``config.json``."""
  try:
    with open(os.path.join(folder, timm_weights.CONFIG_NAME)) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return None, {}
  labels = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
  if isinstance(labels, dict):
    labels = [labels[k] for k in sorted(labels, key=int)]
  return (tuple(labels) if labels else None), dict(config.get(OUR_CONFIG_KEY) or {})


def _timm_cfg_recipe(cfg: Mapping[str, Any]) -> Tuple[int, models.EvalRecipe]:
  """(train size, eval recipe at the test size) of a timm ``pretrained_cfg``."""
  train = int(cfg["input_size"][-1])
  test = int((cfg.get("test_input_size") or cfg["input_size"])[-1])
  crop = float(cfg.get("test_crop_pct") or cfg.get("crop_pct", 0.875))
  return train, models.timm_recipe(test, crop, cfg.get("crop_mode", "center"),
                                   cfg.get("mean"), cfg.get("std"),
                                   cfg.get("interpolation", "bicubic"))


def _load_timm(source, kind, arch, num_classes, shapes) -> Pretrained:
  labels, ours = None, {}
  if kind == "timm_folder":
    timm_name, folder_classes, cfg, state_dict = timm_weights.read_hub_folder(source)
    if arch and timm_weights.canonical_name(arch) != timm_name:
      raise CheckpointError(f"{source} holds {timm_name!r} (config.json) but arch={arch!r}.")
    num_classes = num_classes or folder_classes
    labels, ours = _timm_folder_extras(source)
    if not shapes and ours.get("model_kwargs"):  # a non-standard shape save_timm recorded
      shapes = models.constructor_kwargs(ours["model_kwargs"])
  else:
    if not arch:
      raise CheckpointError(
          f"{source} is a bare weight file: pass the timm architecture, e.g. "
          f"arch='dm_nfnet_f0' (supported: {sorted(timm_weights.TIMM_MODELS)}).")
    timm_name = timm_weights.canonical_name(arch)
    state_dict = (timm_weights.read_safetensors(source) if kind == "safetensors"
                  else timm_weights.read_torch_file(source))
    cfg = timm_weights.TIMM_MODELS[timm_name].pretrained_cfg
  name, kwargs, params, state = timm_weights.to_haiku(state_dict, timm_name, num_classes,
                                                      model_overrides=shapes or None)
  num_classes = int(timm_weights.num_classes_of(state_dict, source))
  train_size, recipe = _timm_cfg_recipe(cfg)
  if ours.get("eval"):  # written by save_timm: our exact recipe (e.g. resize_crop_32)
    recipe = _recipe_from_dict(ours["eval"])
  class_names = tuple(ours["class_names"]) if ours.get("class_names") else labels
  return _from_recipe(
      recipe, name=name, model_kwargs=dict(kwargs), num_classes=num_classes, params=params,
      state=state, image_size=train_size, channels=int(cfg["input_size"][0]),
      class_names=class_names or _default_class_names(num_classes),
      source=os.path.abspath(source), kind="timm", timm_name=timm_name)


def _recipe_from_dict(record: Mapping[str, Any]) -> models.EvalRecipe:
  record = dict(record)
  record["mean"], record["std"] = tuple(record["mean"]), tuple(record["std"])
  return models.EvalRecipe(**record)


def _classifier_size(params) -> int:
  return int(next(v["b"].shape[-1] for k, v in params.items()
                  if k.endswith("/~/linear") and k.count("/~/") == 1))


def _load_npz(source, arch, num_classes, expected_md5, shapes) -> Pretrained:
  """A converted ``.npz``: the architecture, eval recipe and class names from its metadata."""
  raw, meta = deepmind.load_params_npz(source)
  if not raw:
    raise CheckpointError(f"{source} holds no parameters.")
  name = arch or meta.model_name
  if not name:
    prefix = next(iter(raw)).split("/")[0]
    if prefix != "NFNet":
      raise CheckpointError(
          f"{source} has no model name in its metadata and is not an NFNet-F tree: convert it "
          "again with scripts/convert_timm_checkpoint.py or scripts/"
          "convert_deepmind_checkpoint.py, which record the architecture.")
    name = deepmind.registry_name(deepmind.infer_variant(raw, prefix))
  kwargs = dict(meta.model_overrides) if name == meta.model_name else {}
  kwargs.update(shapes)
  params = deepmind.load_params(source, name, num_classes, expected_md5=expected_md5, **kwargs)
  info = models.get_info(name)
  recipe, train_size = meta.recipe(), info.train_image_size
  if recipe is None and meta.pretrained_cfg:  # converted from timm: timm's recipe
    train_size, recipe = _timm_cfg_recipe(meta.pretrained_cfg)
  elif recipe is None:
    published = info.deepmind_weights
    recipe = published.eval if published else info.eval
  classes = _classifier_size(params)
  names = tuple(meta.class_names) if meta.class_names else _default_class_names(classes)
  return _from_recipe(
      recipe, name=name, model_kwargs=kwargs, num_classes=classes, params=params, state={},
      image_size=int(train_size), channels=3, class_names=names,
      source=os.path.abspath(source), kind="npz", timm_name=meta.timm_name)


def _load_deepmind(source, arch, num_classes, trust, expected_md5, shapes) -> Pretrained:
  """DeepMind's released pickle: the model and eval recipe from the model records."""
  variant = None
  if arch:
    if not arch.startswith("nfnet_f"):
      raise CheckpointError(f"{source} is a DeepMind pickle, which only exists for NFNet-F "
                            f"models, not arch={arch!r}.")
    variant = arch[len("nfnet_"):].replace("_plus", "+")
  params = deepmind.load_deepmind_checkpoint(source, variant, trust=trust,
                                             num_classes=num_classes, expected_md5=expected_md5,
                                             **shapes)
  name = deepmind.registry_name(variant or deepmind.infer_variant(params))
  info = models.get_info(name)
  published = info.deepmind_weights
  classes = _classifier_size(params)
  return _from_recipe(
      published.eval if published else info.eval, name=name, model_kwargs=dict(shapes),
      num_classes=classes, params=params, state={}, image_size=int(info.train_image_size),
      channels=3, class_names=_default_class_names(classes), source=os.path.abspath(source),
      kind="deepmind")


def read_run_file(workdir: str) -> Dict[str, Any]:
  """The ``run.json`` the engine wrote into ``workdir`` (model, data, eval recipe)."""
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    found = sorted(os.listdir(workdir))[:8] if os.path.isdir(workdir) else []
    raise CheckpointError(
        f"{workdir} holds no weights that nfnets_jax can read: no {RUN_FILE} of a training "
        f"workdir, no config.json of a timm folder (found: {', '.join(found) or 'nothing'}). "
        f"Point to a training workdir, a timm/hub folder or a weights file.")
  with open(path) as f:
    return json.load(f)


def _workdir_of(path: str) -> str:
  directory, _ = checkpoint.resolve(path)
  if os.path.basename(os.path.normpath(directory)) == "checkpoints":
    return os.path.dirname(os.path.normpath(directory))
  return path


def _run_of_arch(arch: str, shapes, raw) -> Dict[str, Any]:
  """A run record for checkpoints without ``run.json`` (older workdirs) read as ``arch``."""
  info = models.get_info(arch)
  return {"model": arch, "model_kwargs": dict(shapes), "channels": 3,
          "num_classes": _classifier_size(raw["params"]),
          "train_image_size": info.train_image_size, "eval_image_size": info.eval.image_size,
          "eval_preproc": info.eval.preproc, "eval_crop_pct": info.eval.crop_pct,
          "mean": list(info.eval.mean), "std": list(info.eval.std)}


def _load_workdir(source, *, params, step, arch=None, shapes=None) -> Pretrained:
  workdir = _workdir_of(source)
  has_run = os.path.exists(os.path.join(workdir, RUN_FILE))
  run = read_run_file(workdir) if has_run or not _is_registered(arch) else None
  step, raw = checkpoint.read(source, step)
  if run is None:
    run = _run_of_arch(arch, shapes or {}, raw)
  sets = {RAW: raw["params"]}
  if "ema_params" in raw:
    sets[EMA] = raw["ema_params"]
  if params == EMA and EMA not in sets:
    raise CheckpointError(f"{source} has no EMA parameters (the run had ema_decay=None); "
                          "use the raw ones (params='raw', --noema / --nouse_ema).")
  chosen = EMA if params == EMA or (params == EMA_IF_ANY and EMA in sets) else RAW
  channels = int(run["channels"])
  # The normalization the run trained with, in [0, 1] pixel units. run.json files written before
  # it was always recorded hold None where the images went in unnormalized (the synthetic set,
  # normalization='none'): mean 0 and std 1/255 is that identity.
  mean = tuple(run["mean"]) if run.get("mean") else (0.0,) * channels
  std = tuple(run["std"]) if run.get("std") else (1.0 / 255.0,) * channels
  recipe = models.EvalRecipe(
      int(run["eval_image_size"]), run.get("eval_preproc", "none"),
      crop_pct=float(run.get("eval_crop_pct", 0.875)), mean=mean, std=std)
  return _from_recipe(
      recipe, name=run["model"], model_kwargs=models.constructor_kwargs(run.get("model_kwargs")),
      num_classes=int(run["num_classes"]), params=sets[chosen],
      state=raw.get("model_state", {}) or {}, image_size=int(run["train_image_size"]),
      channels=channels,
      class_names=tuple(run["class_names"]) if run.get("class_names") else None,
      source=os.path.abspath(source), kind="workdir", step=int(step), ema=chosen == EMA,
      config=run.get("config"), param_sets=sets)


# ------------------------------------------------------------------------------------------
# save_npz / save_timm.
# ------------------------------------------------------------------------------------------
def save_npz(model: Pretrained, path: str, **metadata) -> deepmind.NpzMetadata:
  """Writes ``model.params`` as our plain ``.npz`` with the record ``load`` reads back: the
  architecture, class count and names, eval recipe, timm name and cfg (``metadata`` adds
  ``source``, ``source_md5``, ``top1``...: fields of ``deepmind.NpzMetadata``)."""
  timm_cfg = _timm_cfg(model, model.timm_name) if model.timm_name else None
  meta = deepmind.NpzMetadata(
      model_name=model.name, model_overrides=dict(model.model_kwargs),
      num_classes=int(model.num_classes), timm_name=model.timm_name, pretrained_cfg=timm_cfg,
      eval=dataclasses.asdict(model.recipe),
      class_names=list(model.class_names) if model.class_names else None)
  meta = dataclasses.replace(meta, **metadata)
  deepmind.save_params_npz(model.params, path, meta)
  return meta


# ------------------------------------------------------------------------------------------
# save_timm.
# ------------------------------------------------------------------------------------------
def _squash_crop_pct(size: int, scale: int) -> float:
  """The crop_pct for which timm's ``floor(size / crop_pct)`` is exactly ``scale``."""
  pct = size / scale
  while math.floor(size / pct) < scale:
    pct = math.nextafter(pct, 0.0)
  return pct


def timm_cfg_of(recipe: models.EvalRecipe, train_image_size: int,
                channels: int) -> Dict[str, Any]:
  """What timm's ``pretrained_cfg`` can say of ``recipe``: sizes, crop fraction and mode,
  interpolation, mean/std ('resize_crop_32' is timm's 'squash' at S / (S + 32); 'none' is
  'squash' at 1.0)."""
  size = int(recipe.image_size)
  mode, pct = recipe.crop_mode, float(recipe.crop_pct)
  if recipe.preproc == "resize_crop_32":
    mode, pct = "squash", _squash_crop_pct(size, size + 32)
  elif recipe.preproc == "none":
    mode, pct = "squash", 1.0
  elif recipe.preproc == "crop_resize":
    mode = "center"
  return {
      "input_size": [channels, int(train_image_size), int(train_image_size)],
      "test_input_size": [channels, size, size],
      "crop_pct": pct,
      "test_crop_pct": pct,
      "crop_mode": mode,
      "interpolation": recipe.interpolation,
      "mean": list(recipe.mean),
      "std": list(recipe.std),
  }


def _timm_cfg(model: Pretrained, timm_name: str) -> Dict[str, Any]:
  """timm's own cfg of ``timm_name`` when ``model``'s recipe is that cfg's, else the cfg's
  fields that ``timm_cfg_of`` derives from the model's recipe over it."""
  cfg = dict(timm_weights.TIMM_MODELS[timm_name].pretrained_cfg)
  if _timm_cfg_recipe(cfg) == (model.image_size, model.recipe) and model.channels == 3:
    return cfg
  cfg.update(timm_cfg_of(model.recipe, model.image_size, model.channels))
  return cfg


def save_timm(model: Pretrained, folder: str) -> str:
  """Writes ``model`` as a timm hub folder (``config.json`` + ``model.safetensors``) that
  ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=FOLDER +
  '/model.safetensors', num_classes=N))`` loads with the same logits; returns the timm name.

  ``config.json`` carries what timm's ``pretrained_cfg`` can hold of this model's eval recipe
  (sizes, crop fraction and mode, interpolation, mean/std) and its class names (timm's
  ``label_names``); the rest (our exact eval preprocessing, the source) goes under the
  ``nfnets_jax`` key beside it, which ``load`` reads back. A model without a timm counterpart
  (e.g. our ``nf_demo``) raises an error saying so.
  """
  timm_name = model.timm_name or timm_weights.timm_name_for(model.name, model.model_kwargs)
  info = timm_weights.TIMM_MODELS[timm_name]
  extra = {k: v for k, v in model.model_kwargs.items() if info.overrides.get(k, object()) != v}
  state_dict = timm_weights.from_haiku(model.params, timm_name, model.num_classes,
                                       model_overrides=extra or None)
  recipe = model.recipe
  ours = {"eval": dataclasses.asdict(recipe), "model": model.name, "model_kwargs": extra,
          "source": model.source, "source_kind": model.kind,
          "class_names": list(model.class_names) if model.class_names else None}
  timm_weights.write_hub_folder(
      folder, timm_name, state_dict, model.num_classes, _timm_cfg(model, timm_name),
      label_names=list(model.class_names) if model.class_names else None,
      extra={OUR_CONFIG_KEY: ours})
  return timm_name
