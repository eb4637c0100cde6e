"""Name -> model record registry: one :class:`ModelInfo` per registered name.

A record holds everything known about a name, the way timm keeps ``default_cfgs`` beside
``@register_model``: the constructor and its arguments, train and test image sizes, the default
eval recipe (:class:`EvalRecipe`: resize/crop, crop fraction and mode, interpolation, mean/std),
training defaults (dropout, RandAugment) and every published set of weights
(:class:`Weights`: DeepMind's release file and MD5, the timm name and the constructor options
that make our model compute timm's function, the weights' own eval recipe, published top-1/top-5
with the image size they were measured at, and the license). Model modules register their names
at import time with :func:`register`; users call :func:`create` (or :func:`transform`).
Every consumer (``pretrained``, evaluation, predict, fine-tuning, ``configs/nfnet.py``, the
benchmark, ``weights/``) reads these records, so adding a model means editing one place.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import haiku as hk

from nfnets_jax.constants import IMAGENET_MEAN, IMAGENET_STD

@dataclasses.dataclass(frozen=True)
class EvalRecipe:
  """How test images are made: size, resize/crop, interpolation and normalization.

  ``preproc`` is one of ``data.preprocessing.EVAL_PREPROCS``: 'resize_crop_32' (the
  reference's: bicubic resize of the whole image to S + 32, centre crop S), 'squash' (timm's
  crop_mode='squash': resize ignoring aspect to floor(S / crop_pct), centre crop S),
  'crop_resize' (timm's crop_mode='center': centre crop crop_pct of the shorter side, resize to
  S) or 'none'. ``mean``/``std`` are in [0, 1] pixel units, as timm gives them. ``crop_pct`` is
  the fraction the centre crop keeps; for 'resize_crop_32' it is S / (S + 32).
  """
  image_size: int
  preproc: str = "resize_crop_32"
  crop_pct: float = 0.875
  crop_mode: str = "center"
  interpolation: str = "bicubic"
  mean: Tuple[float, ...] = IMAGENET_MEAN
  std: Tuple[float, ...] = IMAGENET_STD


def resize_crop_32(image_size: int) -> EvalRecipe:
  """The reference's eval (facts, section 6): resize to S + 32 ignoring aspect, crop S."""
  return EvalRecipe(image_size, "resize_crop_32", crop_pct=image_size / (image_size + 32),
                    crop_mode="squash")


def timm_recipe(image_size: int, crop_pct: float, crop_mode: str = "center",
                mean=None, std=None, interpolation: str = "bicubic") -> EvalRecipe:
  """timm's eval transform for a pretrained cfg at ``image_size`` (its test size); mean/std
  default to ImageNet's. timm's third mode, 'border', has no counterpart here."""
  preproc = {"center": "crop_resize", "squash": "squash"}.get(crop_mode)
  if preproc is None:
    raise ValueError(f"timm crop_mode={crop_mode!r} is not supported (use 'center' or 'squash').")
  return EvalRecipe(image_size, preproc, crop_pct=crop_pct, crop_mode=crop_mode,
                    interpolation=interpolation,
                    mean=tuple(mean) if mean is not None else IMAGENET_MEAN,
                    std=tuple(std) if std is not None else IMAGENET_STD)


@dataclasses.dataclass(frozen=True)
class Weights:
  """One published set of weights for a registered architecture.

  ``source``: 'deepmind' (``file`` with its ``md5``: DeepMind's released pickle) or 'timm'
  (``timm_name`` with pretrained tag ``tag``; ``timm_overrides`` are the constructor arguments
  that make our model compute timm's function, e.g. exact GELU). ``eval`` is these weights'
  own eval recipe at their test size, ``train_image_size`` the size they were trained at;
  ``timm_crop_pct`` is timm's ``crop_pct`` at the train size (only to write timm's cfg back).
  ``top1``/``top5`` (percent) are the published ImageNet-1k figures, measured at
  ``metrics_image_size``; ``metrics_source`` says where they were published.
  """
  source: str
  tag: str
  train_image_size: int
  eval: EvalRecipe
  top1: Optional[float] = None
  top5: Optional[float] = None
  metrics_image_size: Optional[int] = None
  metrics_source: str = ""
  license: str = ""
  file: Optional[str] = None
  md5: Optional[str] = None
  timm_name: Optional[str] = None
  timm_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  timm_crop_pct: Optional[float] = None
  num_classes: int = 1000


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """Everything known about one registered model name (see the module docstring)."""
  name: str
  constructor: Callable[..., hk.Module]
  kwargs: Dict[str, Any]
  train_image_size: int = 224
  test_image_size: int = 224
  drop_rate: Optional[float] = None
  randaugment_layers: int = 0
  randaugment_magnitude: int = 0
  has_state: bool = False  # True for models with BatchNorm statistics (use transform_with_state)
  description: str = ""
  eval: Optional[EvalRecipe] = None  # default: the reference's resize_crop_32 at the test size
  weights: Tuple[Weights, ...] = ()

  def __post_init__(self):
    if self.eval is None:
      object.__setattr__(self, "eval", resize_crop_32(self.test_image_size))

  @property
  def timm_names(self) -> Tuple[str, ...]:
    """The timm architectures these weights map to (the first is the default)."""
    return tuple(w.timm_name for w in self.weights if w.timm_name)

  def timm_weights(self, timm_name: Optional[str] = None) -> Optional[Weights]:
    """The record of timm's ``timm_name`` weights (default: the first), or None."""
    for w in self.weights:
      if w.timm_name and (timm_name is None or w.timm_name == timm_name):
        return w
    return None

  @property
  def deepmind_weights(self) -> Optional[Weights]:
    """DeepMind's released weights for this name (file, MD5, published results), or None."""
    return next((w for w in self.weights if w.source == "deepmind"), None)


_REGISTRY: Dict[str, ModelInfo] = {}


def register(name: str, constructor: Callable[..., hk.Module], kwargs: Optional[dict] = None,
             **metadata) -> ModelInfo:
  """Registers ``name``; ``kwargs`` are the constructor defaults for this name."""
  if name in _REGISTRY:
    raise ValueError(f"Model name {name!r} is already registered.")
  info = ModelInfo(name=name, constructor=constructor, kwargs=dict(kwargs or {}), **metadata)
  _REGISTRY[name] = info
  return info


def published_weights(source: Optional[str] = None) -> Tuple[Tuple[ModelInfo, Weights], ...]:
  """(record, weights) of every published set of weights, in registration order; ``source``
  ('deepmind' / 'timm') keeps one kind."""
  return tuple((info, w) for info in _REGISTRY.values() for w in info.weights
               if source is None or w.source == source)


def list_models() -> list:
  """All registered names, sorted."""
  return sorted(_REGISTRY)


def get_info(name: str) -> ModelInfo:
  """Metadata for ``name``; unknown names get an error listing the known ones."""
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown model {name!r}. Known models: {', '.join(list_models())}.")
  return _REGISTRY[name]


def transform(name: str, num_classes: int, **overrides) -> hk.TransformedWithState:
  """The one Haiku transform of a registered model: ``init(rng, images, is_training)`` and
  ``apply(params, state, rng, images, is_training) -> ({'logits', 'pool', ...}, state)``.

  Stateful for every family (NF models simply have an empty state), so callers need not know
  which models carry BatchNorm statistics.
  """
  get_info(name)  # unknown names fail here, before tracing

  def forward(images, is_training):
    return create(name, num_classes, **overrides)(images, is_training)

  return hk.transform_with_state(forward)


def constructor_kwargs(kwargs: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """Constructor arguments read back from JSON or a config: lists become tuples again."""
  items = kwargs.items() if kwargs else ()
  return {k: tuple(v) if isinstance(v, list) else v for k, v in items}


def create(name: str, num_classes: int, **overrides) -> hk.Module:
  """Builds the registered model ``name`` (call inside ``hk.transform``).

  ``overrides`` replace the registered constructor arguments (e.g. ``width=0.25``).
  """
  info = get_info(name)
  kwargs = dict(info.kwargs)
  kwargs.update(overrides)
  return info.constructor(num_classes=num_classes, **kwargs)
