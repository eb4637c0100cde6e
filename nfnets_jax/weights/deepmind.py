"""DeepMind's released NFNet weights: safe loading, validation and conversion to plain ``.npz``.

The released ``F{0..6}_haiku.npz`` files are dill pickles of ``{module path: {param name:
float32 array}}`` (facts, section 7). Unpickling can run arbitrary code, so this module
(1) checks the file's MD5 against the known table before unpickling (unknown files are refused
unless the caller trusts them explicitly), (2) unpickles with a restricted loader that can only
build numpy arrays and plain dicts, and (3) validates every name and shape against the model.

The converted format is an ordinary ``.npz`` (read with ``allow_pickle=False``) whose keys are
``"{module path}//{param name}"`` plus a ``__meta__`` JSON string.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import os
import pickle
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import models
from nfnets_jax.errors import CheckpointError, CheckpointNotFoundError, UnsafePickleError
from nfnets_jax.models import nfnet
from nfnets_jax.models import stacking

# DeepMind's released files by variant, read from the model records.
KNOWN_MD5 = {info.kwargs["variant"]: w.md5 for info, w in models.published_weights(
    "deepmind")}
VARIANT_BY_MD5 = {md5: variant for variant, md5 in KNOWN_MD5.items()}

NPZ_SEPARATOR = "//"
NPZ_META_KEY = "__meta__"
FORMAT_NAME = "nfnets_jax.params.v1"

Params = Dict[str, Dict[str, np.ndarray]]




# ------------------------------------------------------------------------------------------
# MD5.
# ------------------------------------------------------------------------------------------
def file_md5(path_or_file, chunk_size: int = 1 << 22) -> str:
  """MD5 hex digest of a file (path or binary file object, read from its start)."""
  digest = hashlib.md5()
  if isinstance(path_or_file, (str, os.PathLike)):
    with open(path_or_file, "rb") as f:
      return file_md5(f, chunk_size)
  path_or_file.seek(0)
  for chunk in iter(lambda: path_or_file.read(chunk_size), b""):
    digest.update(chunk)
  return digest.hexdigest()


# ------------------------------------------------------------------------------------------
# Restricted unpickling.
# ------------------------------------------------------------------------------------------
_ALLOWED_DTYPE_KINDS = "biufc"  # bool, ints, floats, complex: no objects, no structured dtypes.


def _check_dtype(dtype: np.dtype) -> np.dtype:
  if not isinstance(dtype, np.dtype) or dtype.kind not in _ALLOWED_DTYPE_KINDS \
      or dtype.hasobject or dtype.fields is not None:
    raise UnsafePickleError(f"refusing to load: array dtype {dtype!r} is not a plain number.")
  return dtype


def _safe_dtype(obj, align=False, copy=False):
  if not isinstance(obj, str):
    raise UnsafePickleError(f"refusing to load: numpy.dtype({obj!r}) is not a type code.")
  return _check_dtype(np.dtype(obj, align=bool(align), copy=bool(copy)))


def _safe_reconstruct(subtype, shape, dtype_code):
  # numpy pickles arrays as _reconstruct(ndarray, (0,), b'b') followed by __setstate__.
  if subtype is not np.ndarray:
    raise UnsafePickleError(
        f"refusing to load: array subtype {subtype!r} is not numpy.ndarray.")
  return np.ndarray(shape, dtype=np.uint8)


def _safe_scalar(dtype, data=None):
  _check_dtype(dtype)
  if not isinstance(data, bytes) or len(data) != dtype.itemsize:
    raise UnsafePickleError("refusing to load: malformed numpy scalar.")
  return np.frombuffer(data, dtype=dtype).reshape(())


def _safe_create_array(f, args, state, npdict=None):
  # dill's numpy-array helper: f(*args) then __setstate__(state); only the numpy path.
  if f is not _safe_reconstruct or npdict:
    raise UnsafePickleError("refusing to load: dill array helper used with a non-numpy "
                            "constructor or instance attributes; it would run code.")
  array = f(*args)
  array.__setstate__(state)
  return array


def _safe_encode(obj, encoding="latin1"):
  # Protocol-2 pickles store array bytes as _codecs.encode(str, 'latin1').
  if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError("refusing to load: _codecs.encode used for something other than "
                            "array bytes.")
  return obj.encode("latin1")


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("dill._dill", "_create_array"): _safe_create_array,
    ("_codecs", "encode"): _safe_encode,
    ("collections", "OrderedDict"): dict,
}


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that can only build numpy arrays of numbers and plain dicts/lists/tuples.

  Every global a pickle references goes through :meth:`find_class`; anything outside
  ``_SAFE_GLOBALS`` raises :class:`UnsafePickleError` before it is imported or called.
  """

  def find_class(self, module, name):
    try:
      return _SAFE_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f"refusing to load this pickle: it references {module}.{name}, which is not part of "
          f"a numpy array or a plain dict; unpickling it would run code.") from None

  def persistent_load(self, pid):
    raise UnsafePickleError("refusing to load this pickle: it uses persistent ids.")


def restricted_loads(data: bytes) -> Any:
  """Unpickles ``data`` with :class:`RestrictedUnpickler`."""
  return RestrictedUnpickler(io.BytesIO(data)).load()


# ------------------------------------------------------------------------------------------
# Expected trees and validation.
# ------------------------------------------------------------------------------------------
def expected_param_shapes(model_name: str, num_classes: int = 1000, *, in_channels: int = 3,
                          **overrides) -> Dict[str, Dict[str, Tuple[int, ...]]]:
  """{module: {name: shape}} of a registered model taking ``channels``-channel images, from
  ``jax.eval_shape`` (no compute)."""
  try:
    key = tuple(sorted(overrides.items()))
    hash(key)
  except TypeError:  # Unhashable override (e.g. an initializer): no caching.
    return _expected_param_shapes(model_name, num_classes, in_channels, **overrides)
  tree = _expected_cached(model_name, num_classes, in_channels, key)
  return {m: dict(d) for m, d in tree.items()}


@functools.lru_cache(maxsize=32)
def _expected_cached(model_name, num_classes, in_channels, key):
  return _expected_param_shapes(model_name, num_classes, in_channels, **dict(key))


def _expected_param_shapes(model_name, num_classes, in_channels, **overrides):
  info = models.get_info(model_name)
  if _accepts(info.constructor, "grouped_conv_impl"):
    overrides.setdefault("grouped_conv_impl", "native")  # Faster to trace; same shapes.
  transformed = models.transform(model_name, num_classes, **overrides)
  x = jax.ShapeDtypeStruct((1, 64, 64, in_channels), jnp.float32)
  params, _ = jax.eval_shape(lambda rng, x: transformed.init(rng, x, False),
                             jax.random.PRNGKey(0), x)
  params = stacking.unstack_blocks(params)  # files name blocks one by one
  return {m: {n: tuple(a.shape) for n, a in d.items()} for m, d in params.items()}


def _accepts(constructor, arg: str) -> bool:
  try:
    return arg in inspect.signature(constructor).parameters
  except (TypeError, ValueError):
    return False


def _flat_names(tree: Mapping) -> Dict[str, Any]:
  return {f"{m}{NPZ_SEPARATOR}{n}": v for m, d in tree.items() for n, v in d.items()}


def validate_params(params: Mapping, expected: Mapping, source: str = "checkpoint") -> None:
  """Raises :class:`CheckpointError` naming every missing, extra or mis-shaped parameter."""
  got = {k: tuple(np.shape(v)) for k, v in _flat_names(params).items()}
  want = {k: tuple(v) for k, v in _flat_names(expected).items()}
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
  problems = []

  def listing(keys, fmt):
    shown = ", ".join(fmt(k) for k in keys[:8])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

  if missing:
    problems.append(f"missing parameters: {listing(missing, str)}")
  if extra:
    problems.append(f"unexpected parameters: {listing(extra, str)}")
  if wrong:
    problems.append("wrong shapes: " + listing(
        wrong, lambda k: f"{k} has {got[k]}, expected {want[k]}"))
  if problems:
    raise CheckpointError(
        f"{source} does not match the model: " + "; ".join(problems) +
        ". Is it the right variant / model configuration?")


def _check_structure(obj: Any, source: str) -> Params:
  """Checks a two-level {str: {str: numeric array}} mapping; returns float32-preserving dicts."""
  if not isinstance(obj, dict) or not obj:
    raise CheckpointError(f"{source}: expected a non-empty mapping {{module: {{name: array}}}}, "
                          f"got {type(obj).__name__}.")
  out = {}
  for module, inner in obj.items():
    if not isinstance(module, str) or not isinstance(inner, dict):
      raise CheckpointError(f"{source}: entry {module!r} is not a module name mapping to a dict.")
    out[module] = {}
    for name, value in inner.items():
      if not isinstance(name, str) or not isinstance(value, np.ndarray):
        raise CheckpointError(
            f"{source}: {module}/{name} is a {type(value).__name__}, not a numpy array.")
      _check_dtype(value.dtype)
      out[module][name] = value
  return out


# ------------------------------------------------------------------------------------------
# DeepMind pickles.
# ------------------------------------------------------------------------------------------
def infer_variant(params: Params, prefix: str = "NFNet") -> str:
  """Guesses 'F{k}' or 'F{k}+' from the number of blocks and the stem width."""
  num_blocks = sum(1 for m in params
                   if m.startswith(f"{prefix}/~/nf_block") and "/~/" not in m[len(prefix) + 3:])
  if num_blocks == 0 or num_blocks % 12:
    raise CheckpointError(
        f"cannot tell the NFNet variant: {num_blocks} blocks found (F-series have 12*k); "
        "pass variant= explicitly.")
  stem = params.get(f"{prefix}/~/stem_conv3", {}).get("w")
  plus = stem is not None and stem.shape[-1] == 192
  return f"F{num_blocks // 12 - 1}" + ("+" if plus else "")


def registry_name(variant: str) -> str:
  """Our registry name of DeepMind's variant 'F0'... ('F0+' -> 'nfnet_f0_plus')."""
  return "nfnet_" + nfnet.canonical_variant(variant).lower().replace("+", "_plus")


def load_deepmind_checkpoint(path, variant: Optional[str] = None, *,
                             expected_md5: Optional[str] = None, trust: bool = False,
                             num_classes: Optional[int] = None, validate: bool = True,
                             module_prefix: str = "NFNet", **model_overrides) -> Params:
  """Loads a DeepMind ``F*_haiku.npz`` pickle safely and returns Haiku params (numpy).

  The MD5 is checked before unpickling: against ``expected_md5`` when given, else against the
  released files' table (``KNOWN_MD5``); a file with an unknown MD5 is refused unless
  ``trust=True``. ``variant`` ('F0'...) defaults to the one the MD5 (or, for trusted files, the
  tree) identifies. ``num_classes`` defaults to the checkpoint's classifier size;
  ``model_overrides`` (e.g. ``width``) describe non-standard models for validation.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointNotFoundError(f"No checkpoint at {path!r}.")
  with open(path, "rb") as f:
    # Hash and unpickle through the same open file.
    md5 = file_md5(f)
    if expected_md5 is not None:
      if md5 != expected_md5.lower():
        raise CheckpointError(
            f"MD5 mismatch for {path}: the file has {md5}, expected {expected_md5}. The file is "
            "corrupt, truncated or not the one you meant; refusing to unpickle it.")
    elif md5 in VARIANT_BY_MD5:
      known = VARIANT_BY_MD5[md5]
      if variant is not None and registry_name(variant) != registry_name(known):
        raise CheckpointError(
            f"{path} is DeepMind's released NFNet-{known} checkpoint (by MD5), not "
            f"NFNet-{variant}.")
      variant = known
    elif not trust:
      raise CheckpointError(
          f"{path} has MD5 {md5}, which is not one of DeepMind's released NFNet checkpoints "
          f"({', '.join(f'{k} {v}' for k, v in KNOWN_MD5.items())}). Unpickling an unknown file "
          "can run code; if you trust it, pass trust=True (or its expected_md5).")
    f.seek(0)
    head = f.read(4)
    if head.startswith(b"PK"):
      raise CheckpointError(
          f"{path} is a zip/.npz archive, not a DeepMind pickle; load it with load_params().")
    if not head or head[0] != 0x80:
      raise CheckpointError(f"{path} is not a pickle (starts with {head!r}).")
    f.seek(0)
    try:
      obj = RestrictedUnpickler(f).load()
    except UnsafePickleError as e:
      raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            KeyError, AttributeError, MemoryError) as e:
      raise CheckpointError(
          f"{path} is truncated or corrupt: unpickling failed with "
          f"{type(e).__name__}: {e}") from None
  params = _check_structure(obj, path)
  if variant is None:
    variant = infer_variant(params, module_prefix)
  if num_classes is None:
    fc = params.get(f"{module_prefix}/~/linear", {}).get("b")
    num_classes = int(fc.shape[0]) if fc is not None else 1000
  if validate:
    expected = expected_param_shapes(registry_name(variant), num_classes, **model_overrides)
    if module_prefix != "NFNet":  # The registry's NFNet is named 'NFNet'.
      expected = {module_prefix + m[len("NFNet"):]: d for m, d in expected.items()}
    validate_params(params, expected, source=f"{path} (NFNet-{variant})")
  return params


# ------------------------------------------------------------------------------------------
# Plain .npz (no pickle).
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class NpzMetadata:
  """The record a converted ``.npz`` keeps beside its params (key ``__meta__``, JSON).

  Written and read only through :func:`save_params_npz` / :func:`load_params_npz`, so its key
  names are defined here once. ``model_name``/``model_overrides``: the architecture (our
  registry name and the constructor arguments that differ from its defaults, e.g. timm's exact
  GELU); ``num_classes``; ``timm_name``/``pretrained_cfg`` for weights that came from timm;
  ``eval`` (an ``models.EvalRecipe`` as a dict) and ``class_names`` when known;
  ``source``/``source_md5``: the file converted; ``top1``/``top1_img_size``: its published
  accuracy.
  """
  model_name: Optional[str] = None
  model_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
  num_classes: Optional[int] = None
  timm_name: Optional[str] = None
  pretrained_cfg: Optional[Dict[str, Any]] = None
  eval: Optional[Dict[str, Any]] = None
  class_names: Optional[List[str]] = None
  source: Optional[str] = None
  source_md5: Optional[str] = None
  top1: Optional[float] = None
  top1_img_size: Optional[int] = None
  format: str = FORMAT_NAME

  @classmethod
  def from_dict(cls, meta: Mapping[str, Any], source: str = "metadata") -> "NpzMetadata":
    """From a JSON record; JSON lists in ``model_overrides`` become tuples again."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(meta) - fields)
    if unknown:
      raise CheckpointError(f"{source}: unknown metadata field(s) {unknown}; known: "
                            f"{sorted(fields)}.")
    out = cls(**meta)
    out.model_overrides = models.constructor_kwargs(out.model_overrides)
    return out

  def to_json(self) -> str:
    record = dataclasses.asdict(self)
    record["format"] = FORMAT_NAME
    return json.dumps(record, sort_keys=True,
                      default=lambda o: list(o) if isinstance(o, tuple) else str(o))

  def recipe(self) -> Optional["models.EvalRecipe"]:
    """The stored eval recipe, or None when the file has none."""
    if not self.eval:
      return None
    e = dict(self.eval)
    e["mean"], e["std"] = tuple(e["mean"]), tuple(e["std"])
    return models.EvalRecipe(**e)


def save_params_npz(params: Mapping, path, metadata=None) -> None:
  """Writes ``{module: {name: array}}`` as an ordinary ``.npz`` (no pickle inside), with
  ``metadata`` (an :class:`NpzMetadata`, or a dict of its fields)."""
  if not isinstance(metadata, NpzMetadata):
    metadata = NpzMetadata.from_dict(dict(metadata or {}), source=f"metadata for {path}")
  flat = {}
  for key, value in _flat_names(stacking.unstack_blocks(params)).items():
    if key == NPZ_META_KEY:
      raise ValueError(f"Parameter name {key!r} collides with the metadata key.")
    flat[key] = np.asarray(value)
  flat[NPZ_META_KEY] = np.array(metadata.to_json())
  path = os.fspath(path)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **flat)
  os.replace(tmp, path)


def load_params_npz(path) -> Tuple[Params, NpzMetadata]:
  """Reads a file written by :func:`save_params_npz`; returns (params, metadata)."""
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except ValueError as e:  # Object arrays need pickle: refused.
    raise CheckpointError(f"{path}: not a plain numeric .npz ({e}).") from None
  except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise CheckpointError(f"{path} is not a readable .npz ({type(e).__name__}: {e}).") from None
  meta = NpzMetadata(format="")
  if NPZ_META_KEY in flat:
    try:
      meta = NpzMetadata.from_dict(json.loads(str(flat.pop(NPZ_META_KEY))), source=path)
    except (ValueError, TypeError) as e:
      raise CheckpointError(f"{path}: its metadata is not readable ({e}).") from None
  params: Params = collections.defaultdict(dict)
  for key, value in flat.items():
    module, sep, name = key.rpartition(NPZ_SEPARATOR)
    if not sep or not module or not name:
      raise CheckpointError(
          f"{path}: key {key!r} is not 'module{NPZ_SEPARATOR}param'; not a converted params "
          "file.")
    _check_dtype(value.dtype)
    params[module][name] = value
  return dict(params), meta


def load_params(path, model_name: Optional[str] = None, num_classes: Optional[int] = None, *,
                expected_md5: Optional[str] = None, trust: bool = False, validate: bool = True,
                **overrides) -> Params:
  """Loads params from a converted ``.npz`` or a DeepMind pickle (detected by content).

  With ``model_name`` (a registered name) every name and shape is validated against that
  model built with ``num_classes`` (default: the file's classifier size) and ``overrides``.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(4)
  if not head.startswith(b"PK"):
    variant = None
    if model_name is not None:
      if not model_name.startswith("nfnet_f"):
        raise CheckpointError(
            f"{path} is a pickle (DeepMind format), which only exists for NFNet-F models, "
            f"not {model_name!r}.")
      variant = nfnet.canonical_variant(model_name[len("nfnet_"):])
    return load_deepmind_checkpoint(path, variant, expected_md5=expected_md5, trust=trust,
                                    num_classes=num_classes, validate=validate, **overrides)
  if expected_md5 is not None and file_md5(path) != expected_md5.lower():
    raise CheckpointError(f"MD5 mismatch for {path}: expected {expected_md5}.")
  params, meta = load_params_npz(path)
  if not params:
    raise CheckpointError(f"{path} holds no parameters.")
  if model_name is None:
    model_name = meta.model_name
  if model_name is not None and validate:
    if meta.model_name not in (None, model_name):
      raise CheckpointError(f"{path} holds {meta.model_name} parameters, not {model_name}.")
    if meta.model_name == model_name:
      overrides = {**meta.model_overrides, **overrides}
    prefix = next(iter(params)).split("/")[0]
    if num_classes is None:
      fc = params.get(f"{prefix}/~/linear", {}).get("b")
      num_classes = int(fc.shape[0]) if fc is not None else 1000
    expected = expected_param_shapes(model_name, num_classes, **overrides)
    validate_params(params, expected, source=path)
  return params
