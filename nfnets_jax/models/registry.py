"""Name -> model constructor registry, with per-name metadata (image sizes, dropout, RandAugment).

Model modules register their names at import time with :func:`register`; users call
:func:`create` inside a Haiku transform.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import haiku as hk


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What the training/eval recipe needs to know about a registered model."""
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


_REGISTRY: Dict[str, ModelInfo] = {}


def register(name: str, constructor: Callable[..., hk.Module], kwargs: Optional[dict] = None,
             **metadata) -> ModelInfo:
  """Registers ``name``; ``kwargs`` are the constructor defaults for this name."""
  if name in _REGISTRY:
    raise ValueError(f"Model name {name!r} is already registered.")
  info = ModelInfo(name=name, constructor=constructor, kwargs=dict(kwargs or {}), **metadata)
  _REGISTRY[name] = info
  return info


def list_models() -> list:
  """All registered names, sorted."""
  return sorted(_REGISTRY)


def get_info(name: str) -> ModelInfo:
  """Metadata for ``name``; unknown names get an error listing the known ones."""
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown model {name!r}. Known models: {', '.join(list_models())}.")
  return _REGISTRY[name]


def create(name: str, num_classes: int, **overrides) -> hk.Module:
  """Builds the registered model ``name`` (call inside ``hk.transform``).

  ``overrides`` replace the registered constructor arguments (e.g. ``width=0.25``).
  """
  info = get_info(name)
  kwargs = dict(info.kwargs)
  kwargs.update(overrides)
  return info.constructor(num_classes=num_classes, **kwargs)
