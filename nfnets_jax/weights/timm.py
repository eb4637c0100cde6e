"""timm's NFNet weights <-> this package's Haiku models, both ways, exactly.

Supported timm names (``TIMM_MODELS``): ``dm_nfnet_f0`` ... ``dm_nfnet_f6``, ``nfnet_l0``,
``eca_nfnet_l0``, ``eca_nfnet_l1``, ``eca_nfnet_l2``, ``nf_regnet_b1``, ``nf_resnet50`` and timm's
tiny ``test_nfnet``. Each maps to a name of our registry plus constructor overrides that make the
architecture timm's (exact GELU and timm's standardization epsilon for ``dm_nfnet_*``; symmetric
padding, timm's gamma placement and epsilon for the NFNet-L family; ``timm_nf_resnet50`` /
``timm_nf_regnet_b1`` / ``timm_test_nfnet`` from ``models/timm_variants.py``), so logits equal
timm's up to float rounding (see ``docs/pretrained.md`` for the measured errors).

Public API
----------
``TIMM_MODELS``: ``{timm_name: TimmModel}``; ``TimmModel`` has ``model_name`` (our registry
    name), ``overrides`` (constructor kwargs), ``pretrained_cfg`` (timm's default: tag,
    input_size, test_input_size, crop_pct, crop_mode, interpolation, mean, std, ...),
    ``top1``/``top1_img_size`` (ImageNet-1k top-1 of timm's published weights at their test
    size, from timm's ``results/results-imagenet.csv``).
``read_safetensors(path) -> {name: np.ndarray}`` (safetensors' numpy API, no torch).
``read_torch_file(path) -> {name: np.ndarray}``: a ``.pth``/``.bin`` state dict; needs torch,
    loads with ``torch.load(..., weights_only=True)``; without torch a clear TimmWeightsError.
``read_hub_folder(folder) -> (timm_name, num_classes, pretrained_cfg, state_dict)``: a folder in
    timm's hub layout (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).
``to_haiku(state_dict, timm_name, num_classes=None, model_overrides=None)
    -> (model_name, model_kwargs, params, model_state)``: build it with
    ``models.create(model_name, num_classes, **model_kwargs)``; ``params`` is
    ``{module: {name: float32 array}}``, ``model_state`` is ``{}`` (NF models have none).
    Every tensor is consumed exactly once and every shape checked; missing, unexpected and
    mis-shaped tensors raise one ``StateDictMismatchError`` listing them all; the class count
    is read from ``head.fc`` and checked against ``num_classes`` when given.
``from_haiku(params, timm_name, num_classes=None, model_overrides=None) -> {timm_key: array}``
    (numpy, timm names, OIHW convs); the inverse of ``to_haiku`` (bit-exact round trip).
``write_hub_folder(folder, timm_name, state_dict, num_classes, pretrained_cfg=None)``: writes
    ``config.json`` and ``model.safetensors`` as timm's ``save_for_hf`` does; timm loads the
    weights with ``timm.create_model(timm_name, pretrained=True,
    pretrained_cfg_overlay=dict(file=FOLDER + '/model.safetensors', num_classes=N))``.
``model_overrides`` are extra constructor kwargs for non-standard shapes (tests shrink models
with them, matching timm's own kwargs). Errors are ``TimmWeightsError`` (an
``errors.CheckpointError``, so a ValueError) or its
subclasses ``UnknownArchitectureError`` and ``StateDictMismatchError``.

Layouts: conv ``weight`` OIHW <-> HWIO; conv ``gain`` (O, 1, 1, 1) <-> (O,); squeeze-excite 1x1
convs (out, in, 1, 1) <-> dense (in, out); ``head.fc.weight`` (N, F) <-> (F, N); ECA
``conv.weight`` (1, 1, k) <-> (k,); ``skipinit_gain`` () <-> ``skip_gain`` ().
Why model options and not folding: timm standardizes with ``rsqrt(fan_in * (var + 1e-5))``,
DeepMind with ``rsqrt(max(var * fan_in, 1e-4))``. Folding the ratio into the gain is exact for
the converted weights but ties the gain to those weights' variance, so fine-tuning would not
train timm's function; a ``WSConv2D`` option (``weight_std="timm"``) is exact for any weights,
keeps the tensors unchanged (bit-exact round trip) and trains the same function as timm.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import models
from nfnets_jax.errors import CheckpointError
from nfnets_jax.models import stacking
from nfnets_jax.models.nfnet import NFNet
from nfnets_jax.models.nfnet_l import NFNetL
from nfnets_jax.models.timm_variants import TimmNFNet

try:  # A required dependency; kept importable without it so the error can say what to do.
  from safetensors import numpy as _safetensors_numpy
except ImportError:  # pragma: no cover
  _safetensors_numpy = None

SAFETENSORS_NAME = "model.safetensors"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"


class TimmWeightsError(CheckpointError):
  """Any problem reading, mapping or writing timm weights (a CheckpointError, so a ValueError
  and a UserError: command-line tools print it as one line)."""


class UnknownArchitectureError(TimmWeightsError):
  """A timm architecture without a counterpart here."""


class StateDictMismatchError(TimmWeightsError):
  """Tensors missing, unexpected or of the wrong shape (all listed at once)."""

  def __init__(self, message: str, missing=(), unexpected=(), wrong_shape=()):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.wrong_shape = list(wrong_shape)


@dataclasses.dataclass(frozen=True)
class TimmModel:
  """One supported timm architecture (see the module docstring)."""
  timm_name: str
  model_name: str
  overrides: Dict[str, Any]
  pretrained_cfg: Dict[str, Any]
  top1: Optional[float]
  top1_img_size: Optional[int]


def pretrained_cfg(model_name: str, weights: models.Weights) -> Dict[str, Any]:
  """timm's ``pretrained_cfg`` of a registry record's timm weights, in the key order timm's
  save_for_hf writes it (timm 1.0.31 default_cfgs; tests compare it with real timm)."""
  e = weights.eval
  crop_pct = weights.timm_crop_pct if weights.timm_crop_pct is not None else e.crop_pct
  size = weights.train_image_size
  cfg = {"tag": weights.tag, "custom_load": False, "input_size": [3, size, size]}
  if e.image_size != size:
    cfg["test_input_size"] = [3, e.image_size, e.image_size]
  cfg.update(fixed_input_size=False, interpolation=e.interpolation, crop_pct=crop_pct)
  if e.crop_pct != crop_pct:
    cfg["test_crop_pct"] = e.crop_pct
  pool = size // 32
  cfg.update(crop_mode=e.crop_mode, mean=list(e.mean), std=list(e.std),
             num_classes=weights.num_classes, pool_size=[pool, pool],
             first_conv=_first_conv(model_name), classifier="head.fc", license=weights.license)
  return cfg


def _first_conv(model_name: str) -> str:
  """timm's name of the first conv: NFNets have a 4-conv stem, the ResNet-style ones one."""
  return "stem.conv1" if models.get_info(model_name).constructor in (NFNet, NFNetL) \
      else "stem.conv"


# Every timm architecture with published weights in the model registry (one record per name).
TIMM_MODELS: Dict[str, TimmModel] = {
    w.timm_name: TimmModel(w.timm_name, info.name, dict(w.timm_overrides),
                           pretrained_cfg(info.name, w), w.top1, w.metrics_image_size)
    for info, w in models.published_weights("timm")}


# ------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------
def _require_safetensors():
  if _safetensors_numpy is None:
    raise TimmWeightsError(
        "safetensors is not installed: `pip install safetensors` (a dependency of nfnets_jax).")
  return _safetensors_numpy


def read_safetensors(path) -> Dict[str, np.ndarray]:
  """All tensors of a ``.safetensors`` file as numpy arrays (no torch involved)."""
  st = _require_safetensors()
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise TimmWeightsError(f"{path}: no such file.")
  try:
    return dict(st.load_file(path))
  except Exception as e:  # safetensors raises its own error types for corrupt headers.
    raise TimmWeightsError(f"{path}: not a readable safetensors file ({e}).") from None


def read_torch_file(path) -> Dict[str, np.ndarray]:
  """A torch-pickled state dict (``.pth``/``.bin``) as numpy arrays.

  Needs torch (loaded with ``weights_only=True``, which refuses arbitrary code); without torch,
  a TimmWeightsError says how to proceed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise TimmWeightsError(f"{path}: no such file.")
  with open(path, "rb") as f:
    head = f.read(8)
  # torch.save writes a zip archive ('PK'); older torch a pickle (0x80, protocol byte).
  if not (head.startswith(b"PK") or (head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5)):
    raise TimmWeightsError(
        f"{path} is not a torch checkpoint (neither a zip archive nor a pickle; it starts with "
        f"{head!r}) nor safetensors: check the path, or give timm's model.safetensors.")
  try:
    import torch  # pylint: disable=import-outside-toplevel  (optional, heavy)
  except ImportError:
    raise TimmWeightsError(
        f"{path} is a torch checkpoint and reading it needs torch, which is not installed. "
        "Install torch (e.g. scripts/install_timm_extra.sh) or use the model.safetensors file "
        "of the same weights.") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001  torch raises many types for bad/unsafe files.
    raise TimmWeightsError(f"{path}: torch.load(weights_only=True) failed: {e}") from None
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]  # timm training checkpoints nest the weights.
  if not isinstance(obj, Mapping):
    raise TimmWeightsError(f"{path}: expected a state dict, found {type(obj).__name__}.")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise TimmWeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
    value = value.detach().cpu()
    if value.dtype in (torch.bfloat16, torch.float16):
      value = value.float()
    out[str(key)] = value.numpy()
  if out and all(k.startswith("module.") for k in out):  # saved from DataParallel
    out = {k[len("module."):]: v for k, v in out.items()}
  return out


def canonical_name(timm_name: str) -> str:
  """'dm_nfnet_f0.dm_in1k' / 'timm/dm_nfnet_f0' -> 'dm_nfnet_f0' (supported names only)."""
  name = str(timm_name)
  name = name.split("/")[-1].split(".")[0]
  if name not in TIMM_MODELS:
    raise UnknownArchitectureError(
        f"timm architecture {timm_name!r} has no counterpart here; supported: "
        f"{', '.join(TIMM_MODELS)}.")
  return name


def read_hub_folder(folder) -> Tuple[str, int, dict, Dict[str, np.ndarray]]:
  """Reads a folder in timm's hub layout -> (timm_name, num_classes, pretrained_cfg, tensors).

  ``config.json`` names the architecture; the weights are ``model.safetensors`` (preferred) or
  ``pytorch_model.bin`` (needs torch).
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise TimmWeightsError(f"{folder}: not a folder.")
  config_path = os.path.join(folder, CONFIG_NAME)
  if not os.path.isfile(config_path):
    raise TimmWeightsError(
        f"{folder}: no {CONFIG_NAME}; a timm hub folder holds {CONFIG_NAME} and "
        f"{SAFETENSORS_NAME} (found: {', '.join(sorted(os.listdir(folder))) or 'nothing'}).")
  try:
    with open(config_path) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise TimmWeightsError(f"{config_path}: not readable JSON ({e}).") from None
  if not isinstance(config, dict):
    raise TimmWeightsError(f"{config_path}: expected a JSON object.")
  pretrained_cfg = dict(config.get("pretrained_cfg") or
                        {k: v for k, v in config.items() if k != "architecture"})
  arch = config.get("architecture") or pretrained_cfg.get("architecture")
  if not arch:
    raise TimmWeightsError(f"{config_path}: no 'architecture' field.")
  timm_name = canonical_name(arch)
  num_classes = config.get("num_classes", pretrained_cfg.get("num_classes"))
  st_path = os.path.join(folder, SAFETENSORS_NAME)
  pt_path = os.path.join(folder, TORCH_WEIGHTS_NAME)
  if os.path.isfile(st_path):
    state_dict = read_safetensors(st_path)
  elif os.path.isfile(pt_path):
    state_dict = read_torch_file(pt_path)
  else:
    raise TimmWeightsError(
        f"{folder}: no weights file ({SAFETENSORS_NAME} or {TORCH_WEIGHTS_NAME}); found: "
        f"{', '.join(sorted(os.listdir(folder)))}.")
  return timm_name, (int(num_classes) if num_classes is not None else None), pretrained_cfg, \
      state_dict


# ------------------------------------------------------------------------------------------
# The mapping.
# ------------------------------------------------------------------------------------------
# kind -> (timm shape from our shape, ours from timm's array, timm's from our array)
_KINDS = {
    "conv_w": (lambda s: (s[3], s[2], s[0], s[1]),
               lambda a: np.transpose(a, (2, 3, 1, 0)),
               lambda a: np.transpose(a, (3, 2, 0, 1))),
    "conv_gain": (lambda s: (s[0], 1, 1, 1),
                  lambda a: a.reshape(a.shape[0]),
                  lambda a: a.reshape(a.shape[0], 1, 1, 1)),
    "vector": (lambda s: tuple(s), lambda a: a, lambda a: a),
    "scalar": (lambda s: tuple(s), lambda a: a, lambda a: a),
    "se_w": (lambda s: (s[1], s[0], 1, 1),
             lambda a: a[:, :, 0, 0].T,
             lambda a: a.T[:, :, None, None]),
    "fc_w": (lambda s: (s[1], s[0]), lambda a: a.T, lambda a: a.T),
    "eca_w": (lambda s: (1, 1, s[0]), lambda a: a.reshape(-1), lambda a: a.reshape(1, 1, -1)),
}

_CONV_PARAMS = {"w": ("weight", "conv_w"), "gain": ("gain", "conv_gain"),
                "bias": ("bias", "vector")}
_LINEAR_PARAMS = {"w": ("weight", "se_w"), "b": ("bias", "vector")}
_BLOCK_CONVS = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
                "conv_shortcut": "downsample.conv"}
_BLOCK_RE = re.compile(r"^nf_block(?:_(\d+))?(?:/~/(.*))?$")


@dataclasses.dataclass(frozen=True)
class _Entry:
  module: str
  name: str
  timm_key: str
  kind: str
  shape: Tuple[int, ...]  # ours

  @property
  def timm_shape(self):
    return tuple(_KINDS[self.kind][0](self.shape))


def _model_spec(model_name: str, kwargs: dict, num_classes: int):
  """(ordered entries, block->(stage, index)) for our model, from abstract shapes only."""
  freeze = lambda v: tuple(v) if isinstance(v, list) else v
  return _model_spec_cached(model_name, int(num_classes),
                            tuple(sorted((k, freeze(v)) for k, v in kwargs.items())))


@functools.lru_cache(maxsize=32)
def _model_spec_cached(model_name, num_classes, kwargs_items):
  kwargs = dict(kwargs_items)
  holder = {}

  def forward(x):
    module = models.create(model_name, num_classes, **kwargs)
    holder["module"] = module
    return module(x, is_training=False)["logits"]

  shapes = jax.eval_shape(hk.transform(forward).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  shapes = stacking.unstack_blocks(shapes)  # timm's names are per block, as ours on disk
  module = holder["module"]
  if isinstance(module, NFNet):
    stages = [spec.stage for spec in module.block_specs]
  else:
    stages = [s for s, depth in enumerate(module.depth_pattern) for _ in range(depth)]
  positions, seen = [], {}
  for s in stages:
    positions.append((s, seen.get(s, 0)))
    seen[s] = seen.get(s, 0) + 1
  se_prefix = "attn" if isinstance(module, TimmNFNet) and module.blocks[0].reg else "attn_last"
  prefix = module.module_name + "/~/"
  entries = []
  for path in shapes:
    if not path.startswith(prefix):
      raise RuntimeError(f"Unexpected module path {path!r} (no {prefix!r} prefix).")
    rel = path[len(prefix):]
    for name, leaf in shapes[path].items():
      key, kind = _timm_name(rel, name, positions, se_prefix)
      entries.append(_Entry(path, name, key, kind, tuple(leaf.shape)))
  keys = [e.timm_key for e in entries]
  if len(set(keys)) != len(keys):
    raise RuntimeError(f"{model_name}: the mapping sends two parameters to one timm tensor.")
  return tuple(entries), module.module_name


def _timm_name(rel: str, name: str, positions, se_prefix: str) -> Tuple[str, str]:
  """Our (module path below the top module, param name) -> (timm key, layout kind)."""
  m = re.fullmatch(r"stem_conv(\d)", rel)
  if m:
    return f"stem.conv{int(m.group(1)) + 1}.{_CONV_PARAMS[name][0]}", _CONV_PARAMS[name][1]
  if rel in ("initial_conv", "final_conv"):
    base = "stem.conv" if rel == "initial_conv" else "final_conv"
    return f"{base}.{_CONV_PARAMS[name][0]}", _CONV_PARAMS[name][1]
  if rel == "linear":
    return ("head.fc.weight", "fc_w") if name == "w" else ("head.fc.bias", "vector")
  m = _BLOCK_RE.fullmatch(rel)
  if m:
    stage, index = positions[int(m.group(1) or 0)]
    block = f"stages.{stage}.{index}"
    sub = m.group(2)
    if sub is None and name == "skip_gain":
      return f"{block}.skipinit_gain", "scalar"
    if sub in _BLOCK_CONVS:
      return f"{block}.{_BLOCK_CONVS[sub]}.{_CONV_PARAMS[name][0]}", _CONV_PARAMS[name][1]
    if sub == "squeeze_excite/~/linear":
      return f"{block}.{se_prefix}.fc1.{_LINEAR_PARAMS[name][0]}", _LINEAR_PARAMS[name][1]
    if sub == "squeeze_excite/~/linear_1":
      return f"{block}.{se_prefix}.fc2.{_LINEAR_PARAMS[name][0]}", _LINEAR_PARAMS[name][1]
    if sub == "eca" and name == "w":
      return f"{block}.attn_last.conv.weight", "eca_w"
  raise RuntimeError(f"No timm name for parameter {rel}/{name}.")


def _resolve(timm_name: str, model_overrides: Optional[dict]):
  name = canonical_name(timm_name)
  info = TIMM_MODELS[name]
  kwargs = dict(info.overrides)
  kwargs.update(model_overrides or {})
  return name, info, kwargs


def _contiguous(array, dtype=None) -> np.ndarray:
  """A C-contiguous copy that keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
  return np.array(array, dtype=dtype, order="C", copy=True)


def _fmt(items, limit=40):
  items = list(items)
  text = ", ".join(items[:limit])
  return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _mismatch_error(what, missing, unexpected, wrong_shape):
  parts = []
  if missing:
    parts.append(f"{len(missing)} missing: {_fmt(missing)}")
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected: {_fmt(unexpected)}")
  if wrong_shape:
    parts.append(f"{len(wrong_shape)} of the wrong shape: {_fmt(wrong_shape)}")
  return StateDictMismatchError(f"{what}: " + "; ".join(parts) + ".",
                                missing, unexpected, wrong_shape)


def num_classes_of(state_dict: Mapping[str, Any], source: str = "state dict") -> int:
  """The class count of a timm state dict, read from ``head.fc``."""
  for key, axis in (("head.fc.weight", 0), ("head.fc.bias", 0)):
    if key in state_dict:
      return int(np.shape(state_dict[key])[axis])
  raise StateDictMismatchError(
      f"{source}: no classifier (head.fc.weight / head.fc.bias), so the class count is "
      "unknown; headless (num_classes=0) weights are not supported.",
      missing=["head.fc.weight", "head.fc.bias"])


def to_haiku(state_dict: Mapping[str, Any], timm_name: str, num_classes: Optional[int] = None,
             model_overrides: Optional[dict] = None):
  """timm tensors -> (model_name, model_kwargs, params, model_state); see the module docstring."""
  name, info, kwargs = _resolve(timm_name, model_overrides)
  if num_classes is not None and not any(k.startswith("head.fc.") for k in state_dict):
    found = int(num_classes)  # No head: the mismatch error below lists it with the rest.
  else:
    found = num_classes_of(state_dict, f"{name} weights")
  if num_classes is not None and int(num_classes) != found:
    raise TimmWeightsError(
        f"{name} weights have {found} classes (head.fc), but num_classes={num_classes} was "
        "asked for.")
  entries, _ = _model_spec(info.model_name, kwargs, found)
  params: Dict[str, Dict[str, np.ndarray]] = {}
  missing, wrong_shape, consumed = [], [], set()
  for e in entries:
    if e.timm_key not in state_dict:
      missing.append(e.timm_key)
      continue
    consumed.add(e.timm_key)
    array = np.asarray(state_dict[e.timm_key])
    if tuple(array.shape) != e.timm_shape:
      wrong_shape.append(f"{e.timm_key} {tuple(array.shape)} (expected {e.timm_shape})")
      continue
    value = _contiguous(_KINDS[e.kind][1](array), np.float32)
    params.setdefault(e.module, {})[e.name] = value
  unexpected = sorted(set(state_dict) - consumed)
  if missing or unexpected or wrong_shape:
    raise _mismatch_error(f"{name} weights do not match {info.model_name}", missing,
                          unexpected, wrong_shape)
  return info.model_name, kwargs, params, {}


def from_haiku(params: Mapping[str, Mapping[str, Any]], timm_name: str,
               num_classes: Optional[int] = None,
               model_overrides: Optional[dict] = None) -> Dict[str, np.ndarray]:
  """Our params -> a timm state dict (numpy, timm names and layouts); inverse of to_haiku."""
  name, info, kwargs = _resolve(timm_name, model_overrides)
  params = stacking.unstack_blocks(params)
  heads = [m for m in params if m.endswith("/~/linear") and m.count("/~/") == 1]
  if num_classes is None:
    if len(heads) != 1 or "b" not in params[heads[0]]:
      raise TimmWeightsError("Cannot find the classifier in params; pass num_classes.")
    num_classes = int(np.shape(params[heads[0]]["b"])[0])
  entries, _ = _model_spec(info.model_name, kwargs, num_classes)
  out: Dict[str, np.ndarray] = {}
  missing, wrong_shape, expected = [], [], set()
  for e in entries:
    expected.add((e.module, e.name))
    if e.module not in params or e.name not in params[e.module]:
      missing.append(f"{e.module}/{e.name}")
      continue
    array = np.asarray(jax.device_get(params[e.module][e.name]))
    if tuple(array.shape) != e.shape:
      wrong_shape.append(f"{e.module}/{e.name} {tuple(array.shape)} (expected {e.shape})")
      continue
    out[e.timm_key] = _contiguous(_KINDS[e.kind][2](array), np.float32)
  unexpected = sorted(f"{m}/{n}" for m in params for n in params[m] if (m, n) not in expected)
  if missing or unexpected or wrong_shape:
    raise _mismatch_error(
        f"params are not those of {info.model_name} ({num_classes} classes, the counterpart "
        f"of timm's {name})", missing, unexpected, wrong_shape)
  return out


def timm_name_for(model_name: str, model_kwargs: Optional[dict] = None) -> str:
  """The timm architecture of one of our (registry name, kwargs), or UnknownArchitectureError."""
  model_kwargs = dict(model_kwargs or {})
  for name, info in TIMM_MODELS.items():
    if info.model_name != model_name:
      continue
    if all(model_kwargs.get(k) == v for k, v in info.overrides.items()):
      return name
  hint = ""
  if any(info.model_name == model_name for info in TIMM_MODELS.values()):
    needed = [f"{n}: {info.overrides}" for n, info in TIMM_MODELS.items()
              if info.model_name == model_name]
    hint = f" (timm's counterpart needs the overrides {'; '.join(needed)})"
  raise UnknownArchitectureError(
      f"Model {model_name!r} with {model_kwargs} has no timm counterpart{hint}; supported: "
      + ", ".join(f"{info.model_name} -> {n}" for n, info in TIMM_MODELS.items()) + ".")


# ------------------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------------------
def hub_config(timm_name: str, num_classes: int, num_features: int,
               pretrained_cfg: Optional[Mapping[str, Any]] = None) -> dict:
  """The ``config.json`` timm's save_for_hf writes for this architecture and class count."""
  name = canonical_name(timm_name)
  cfg = json.loads(json.dumps(TIMM_MODELS[name].pretrained_cfg))
  for key, value in (pretrained_cfg or {}).items():
    cfg[key] = list(value) if isinstance(value, tuple) else value
  cfg["num_classes"] = int(num_classes)
  for key in ("file", "source", "architecture", "state_dict", "hf_hub_id", "url"):
    cfg.pop(key, None)
  return {
      "architecture": name,
      "num_classes": int(num_classes),
      "num_features": int(num_features),
      "global_pool": "avg",
      "model_args": {"in_chans": 3, "num_classes": int(num_classes), "global_pool": "avg"},
      "pretrained_cfg": cfg,
  }


def write_hub_folder(folder, timm_name: str, state_dict: Mapping[str, Any],
                     num_classes: Optional[int] = None,
                     pretrained_cfg: Optional[Mapping[str, Any]] = None,
                     label_names: Optional[list] = None,
                     extra: Optional[Mapping[str, Any]] = None) -> str:
  """Writes ``config.json`` + ``model.safetensors`` in timm's hub layout; returns the folder.

  ``pretrained_cfg`` entries override the architecture's defaults (e.g. ``mean``/``std`` of a
  fine-tuned model); ``label_names`` (one per class) go where timm's ``save_for_hf`` puts them
  (timm moves them into ``pretrained_cfg`` on load); ``extra`` adds top-level keys that timm
  ignores (our own metadata).
  """
  st = _require_safetensors()
  name = canonical_name(timm_name)
  found = num_classes_of(state_dict, f"{name} state dict")
  if num_classes is not None and int(num_classes) != found:
    raise TimmWeightsError(
        f"num_classes={num_classes} but the state dict's head.fc has {found} classes.")
  num_features = int(np.shape(state_dict["head.fc.weight"])[1]) \
      if "head.fc.weight" in state_dict else 0
  config = hub_config(name, found, num_features, pretrained_cfg)
  if label_names:
    if len(label_names) != found:
      raise TimmWeightsError(f"{len(label_names)} label names for {found} classes.")
    config["label_names"] = [str(n) for n in label_names]
  for key, value in (extra or {}).items():
    config[key] = value
  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  tensors = {k: _contiguous(v) for k, v in state_dict.items()}
  st_tmp = os.path.join(folder, SAFETENSORS_NAME + ".tmp")
  st.save_file(tensors, st_tmp, metadata={"format": "pt"})
  os.replace(st_tmp, os.path.join(folder, SAFETENSORS_NAME))
  cfg_tmp = os.path.join(folder, CONFIG_NAME + ".tmp")
  with open(cfg_tmp, "w") as f:
    json.dump(config, f, indent=2)
  os.replace(cfg_tmp, os.path.join(folder, CONFIG_NAME))
  return folder


__all__ = [
    "TIMM_MODELS", "TimmModel", "TimmWeightsError", "UnknownArchitectureError",
    "StateDictMismatchError", "read_safetensors", "read_torch_file", "read_hub_folder",
    "to_haiku", "from_haiku", "write_hub_folder", "hub_config", "num_classes_of",
    "timm_name_for",
]
