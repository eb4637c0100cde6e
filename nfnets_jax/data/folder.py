"""Your own labelled images as a dataset: ``--config.dataset=folder --config.data_dir=ROOT``.

Layout ``ROOT/<split>/<class>/<image>``: splits ``train`` and ``test`` (or ``val`` /
``validation``), images ``.png .jpg .jpeg .bmp .gif`` (any size, any mode; GIF: first frame).
Class names are the sorted sub-folder names of ``train/``; every other split must have exactly
the same class folders.

The folder is read by a TFDS builder (``FolderImages``, a ``tfds.folder_dataset.ImageFolder``
whose split table comes from the scan below), so it feeds the same ``pipeline`` as any TFDS
dataset: augmentation, exact-once padded evaluation, per-process shards, resume by start step.
Its examples are the encoded files (decoded per example), in a fixed order: sorted by a hash of
the path relative to ROOT (so contiguous per-process shards are not sorted by class).

The scan (once per process, cached) checks the layout and decodes every image once with the
same TensorFlow ops the pipeline uses, so that a bad file never stops training mid-epoch:

* channels: ``config.image_channels`` (1 or 3) when set, else 1 when every image is stored as
  grayscale (1 channel, or gray + alpha), else 3. Alpha is dropped, palettes are expanded,
  color becomes gray by luminance.
* unreadable files (bad bytes behind an image extension, 1/4-bit or colour-palette BMPs that TF
  would decode wrongly): ``config.corrupt_images='skip'`` (default) leaves them out with one
  warning naming the first few and the count; ``'error'`` raises ``DatasetError`` naming them.
* only ``train/``: a held-out split ``holdout`` of ``config.folder_holdout`` (default 0.1) of
  every class (stratified: round(fraction * n) files per class, at least 1 of a class of 2+,
  never all), the files with the smallest SHA-1 of their path relative to ROOT. The same split
  on every run, process and machine; the eval names ``test``/``val``/``validation`` resolve to
  it, and ``train`` is then the rest.

Imports nothing of the package but ``errors`` (and this room).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
import warnings
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds

from nfnets_jax.data import preprocessing
from nfnets_jax.errors import ConfigError, DatasetError, DatasetNotFoundError

NAME = "folder"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TRAIN = "train"
EVAL_SPLITS = ("test", "validation", "val")  # names an eval split folder may have
HOLDOUT = "holdout"  # the held-out part of train/ when ROOT has no eval split folder
CORRUPT_OPTIONS = ("skip", "error")
DEFAULT_HOLDOUT = 0.1
_SHOW = 5  # files named in a message before "... and N more"

_LOCK = threading.Lock()
_FILE_CHECKS: Dict[tuple, Optional[object]] = {}  # (path, size, mtime, channels) -> result
_WARNED = set()


class CorruptImagesWarning(UserWarning):
  """Unreadable image files were left out of a folder dataset."""


@dataclasses.dataclass(frozen=True)
class Scan:
  """What ``scan`` found: ``splits[name]`` = [(path relative to ROOT, label)] in read order."""
  root: str
  class_names: Tuple[str, ...]
  splits: Dict[str, List[Tuple[str, int]]]
  channels: int
  skipped: Tuple[str, ...]  # unreadable files left out (relative paths)


def _names(items, show=_SHOW) -> str:
  items = list(items)
  head = ", ".join(str(i) for i in items[:show])
  return head + (f" ... and {len(items) - show} more" if len(items) > show else "")


def _visible(path: str):
  """Non-hidden entries of a directory: (sorted dirs, sorted files)."""
  dirs, files = [], []
  with os.scandir(path) as it:
    for e in it:
      if e.name.startswith("."):
        continue
      (dirs if e.is_dir() else files).append(e.name)
  return sorted(dirs), sorted(files)


def _is_image(name: str) -> bool:
  return name.lower().endswith(EXTENSIONS)


def _order_key(relpath: str) -> bytes:
  return hashlib.sha1(relpath.replace(os.sep, "/").encode("utf-8")).digest()


def _list(root: str) -> Dict[str, Dict[str, List[str]]]:
  """{split: {class: [relative image paths]}} with the layout errors raised."""
  if not root:
    raise DatasetError("config.dataset='folder' needs --config.data_dir=ROOT, a folder laid out "
                       "as ROOT/<split>/<class>/<image> (splits train and test or val).")
  if not os.path.exists(root):
    raise DatasetNotFoundError(f"Image folder {root!r} does not exist (config.data_dir). Expected "
                               "ROOT/train/<class>/<image> (and ROOT/test/<class>/<image>).")
  if not os.path.isdir(root):
    raise DatasetError(f"config.data_dir={root!r} is a file, not a folder of images.")
  split_dirs, _ = _visible(root)
  if TRAIN not in split_dirs:
    looks_like_classes = any(_is_image(f) for d in split_dirs
                             for f in _visible(os.path.join(root, d))[1])
    hint = (" These folders hold images directly: they look like classes; move them into "
            f"{os.path.join(root, TRAIN)}/." if looks_like_classes else "")
    raise DatasetError(
        f"Image folder {root} has no '{TRAIN}' sub-folder (found: {_names(split_dirs) or 'none'})."
        f" Expected ROOT/<split>/<class>/<image> with splits train and test (or val)." + hint)
  layout = {}
  empty = []
  for split in split_dirs:
    class_dirs, loose = _visible(os.path.join(root, split))
    loose = [f for f in loose if _is_image(f)]
    if loose:
      raise DatasetError(
          f"{len(loose)} image(s) lie directly in {os.path.join(root, split)} ({_names(loose)}): "
          f"put every image in a class sub-folder, {os.path.join(root, split)}/<class>/.")
    if not class_dirs:
      raise DatasetError(f"Split folder {os.path.join(root, split)} has no class sub-folders "
                         "(expected ROOT/<split>/<class>/<image>).")
    layout[split] = {}
    for cls in class_dirs:
      files = [os.path.join(split, cls, f)
               for f in _visible(os.path.join(root, split, cls))[1] if _is_image(f)]
      layout[split][cls] = files
      if not files:
        empty.append(os.path.join(root, split, cls))
  if not any(files for classes in layout.values() for files in classes.values()):
    raise DatasetError(f"No images under {root} (looked for {'/'.join(EXTENSIONS)} files in "
                       "ROOT/<split>/<class>/).")
  if empty:
    raise DatasetError(f"{len(empty)} empty class folder(s) (no {'/'.join(EXTENSIONS)} files): "
                       f"{_names(empty)}. Add images or remove the folder(s).")
  classes = set(layout[TRAIN])
  for split, split_classes in layout.items():
    missing, extra = sorted(classes - set(split_classes)), sorted(set(split_classes) - classes)
    if missing or extra:
      parts = ([f"missing in {split}/: {_names(missing, 20)}"] if missing else []) + (
          [f"not in {TRAIN}/: {_names(extra, 20)}"] if extra else [])
      raise DatasetError(f"Split '{split}' of {root} has other classes than '{TRAIN}' ("
                         + "; ".join(parts) + "). Every split needs the same class folders.")
  return layout


def _bmp_problem(path: str) -> Optional[str]:
  """Why TF would misread this BMP (it ignores palettes), or None (also for non-BMP files)."""
  try:
    with open(path, "rb") as f:
      head = f.read(14 + 124 + 4 * 256)
  except OSError as e:
    return f"cannot be read ({e.strerror or e})"
  if head[:2] != b"BM" or len(head) < 30:
    return None
  dib = int.from_bytes(head[14:18], "little")
  bpp = int.from_bytes(head[28:30], "little") if dib >= 40 else int.from_bytes(head[24:26],
                                                                                "little")
  if bpp >= 16:
    return None
  if bpp != 8:
    return f"{bpp}-bit BMP (not supported; save it as PNG)"
  entry = 3 if dib == 12 else 4
  count = (int.from_bytes(head[46:50], "little") if dib >= 40 else 0) or 256
  palette = head[14 + dib:14 + dib + entry * count]
  for i in range(len(palette) // entry):
    if not palette[entry * i] == palette[entry * i + 1] == palette[entry * i + 2] == i:
      return "8-bit colour-palette BMP (TensorFlow ignores its palette; save it as PNG)"
  return None


def _tf_reason(path: str, channels: int) -> str:
  """The first line of TF's error decoding one file (for messages)."""
  try:
    data = tf.io.read_file(path)
    if channels:
      preprocessing.decode(data, channels)
    else:
      tf.io.decode_image(data, expand_animations=False)
  except (tf.errors.OpError, ValueError) as e:
    msg = str(getattr(e, "message", e)).strip().splitlines()
    msg = (msg[0] if msg else type(e).__name__).split(" [Op:")[0].split("}}")[-1].strip()
    return "not a decodable PNG/JPEG/BMP/GIF image" + (f" ({msg[:120]})" if msg else "")
  return "not a decodable PNG/JPEG/BMP/GIF image"


def _decode_all(paths: List[str], channels: int) -> List[Optional[int]]:
  """Decoded channel count of every file (0: natural), None where decoding fails."""
  if not paths:
    return []
  paths_t = tf.constant(paths)

  def check(i):
    data = tf.io.read_file(paths_t[i])
    if channels:
      image = preprocessing.decode(data, channels)
    else:
      image = tf.io.decode_image(data, expand_animations=False)
    return i, tf.shape(image)[-1]

  ds = tf.data.Dataset.range(len(paths)).map(check, num_parallel_calls=tf.data.AUTOTUNE,
                                              deterministic=True).ignore_errors()
  out: List[Optional[int]] = [None] * len(paths)
  for i, c in ds.as_numpy_iterator():
    out[int(i)] = int(c)
  return out


def _check_files(paths: List[str], channels: int) -> List[object]:
  """Per file: channel count (int) or the reason (str) it cannot be used; cached by stat."""
  keys, results = [], {}
  for i, p in enumerate(paths):
    try:
      st = os.stat(p)
      keys.append((p, st.st_size, st.st_mtime_ns, channels))
    except OSError as e:  # e.g. a dangling symlink
      keys.append((p, -1, -1, channels))
      results[i] = f"cannot be read ({e.strerror or e})"
  with _LOCK:
    todo = [i for i, k in enumerate(keys) if k not in _FILE_CHECKS and i not in results]
  if todo:
    if not channels:
      for i in todo:
        problem = _bmp_problem(paths[i])
        if problem:
          results[i] = problem
    rest = [i for i in todo if i not in results]
    for i, c in zip(rest, _decode_all([paths[i] for i in rest], channels)):
      results[i] = c if c is not None else _tf_reason(paths[i], channels)
  with _LOCK:
    for i, r in results.items():
      _FILE_CHECKS[keys[i]] = r
    return [_FILE_CHECKS[k] for k in keys]


def _fraction(config) -> float:
  value = config.get("folder_holdout", DEFAULT_HOLDOUT)
  value = DEFAULT_HOLDOUT if value is None else float(value)
  if not 0.0 <= value < 1.0:
    raise ConfigError(f"config.folder_holdout={value} must be in [0, 1) (the fraction of "
                      "train/ held out for evaluation when ROOT has no test/ or val/ folder).")
  return value


def scan(config) -> Scan:
  """Lists, checks and splits the image folder ``config.data_dir`` (see the module doc)."""
  root = config.get("data_dir", None)
  root = os.path.abspath(os.path.expanduser(root)) if root else root
  layout = _list(root)
  corrupt = config.get("corrupt_images", "skip") or "skip"
  if corrupt not in CORRUPT_OPTIONS:
    raise ConfigError(f"config.corrupt_images={corrupt!r}; expected one of {CORRUPT_OPTIONS}.")
  fraction = _fraction(config)
  wanted = config.get("image_channels", None) or None  # None or 0: the folder's own
  if wanted is not None and int(wanted) not in (1, 3):
    raise ConfigError(f"config.image_channels={wanted} must be 1 (grayscale) or 3 (RGB), or "
                      "None/0 for the folder's own (1 if every image is grayscale, else 3).")

  rel = [p for classes in layout.values() for files in classes.values() for p in files]
  natural = dict(zip(rel, _check_files([os.path.join(root, p) for p in rel], 0)))
  bad = {p: r for p, r in natural.items() if isinstance(r, str)}
  good = [p for p in rel if p not in bad]
  if wanted is not None:
    channels = int(wanted)
  else:
    channels = 1 if good and all(natural[p] in (1, 2) for p in good) else 3
  convert = [p for p in good if natural[p] != channels]
  for p, r in zip(convert, _check_files([os.path.join(root, p) for p in convert], channels)):
    if isinstance(r, str):
      bad[p] = f"cannot be converted to {channels} channel(s): {r}"

  if bad:
    names = sorted(bad)
    listing = "; ".join(f"{p}: {bad[p]}" for p in names[:_SHOW]) + (
        f"; ... and {len(names) - _SHOW} more" if len(names) > _SHOW else "")
    if corrupt == "error":
      raise DatasetError(f"{len(names)} unreadable image file(s) in {root}: {listing}. Fix or "
                         "remove them, or set --config.corrupt_images=skip to leave them out.")
    key = (root, tuple(names))
    with _LOCK:
      first = key not in _WARNED
      _WARNED.add(key)
    if first:
      warnings.warn(f"Skipping {len(names)} unreadable image file(s) of {len(rel)} in {root}: "
                    f"{listing} (config.corrupt_images='skip').", CorruptImagesWarning,
                    stacklevel=2)
    unreadable_classes = sorted(
        os.path.join(root, split, cls) for split, classes in layout.items()
        for cls, files in classes.items() if all(p in bad for p in files))
    if unreadable_classes:
      raise DatasetError(f"Class folder(s) with no readable image: {_names(unreadable_classes)}.")

  class_names = tuple(sorted(layout[TRAIN]))
  label = {c: i for i, c in enumerate(class_names)}
  splits: Dict[str, List[Tuple[str, int]]] = {}
  has_eval = any(s in layout for s in EVAL_SPLITS)
  for split, classes in layout.items():
    if split == TRAIN and not has_eval and fraction > 0:
      train, held = [], []
      for cls, files in classes.items():
        files = sorted((p for p in files if p not in bad), key=_order_key)
        k = min(max(1, round(fraction * len(files))), len(files) - 1) if len(files) > 1 else 0
        held += [(p, label[cls]) for p in files[:k]]
        train += [(p, label[cls]) for p in files[k:]]
      splits[TRAIN], splits[HOLDOUT] = train, held
    else:
      splits[split] = [(p, label[cls]) for cls, files in classes.items()
                       for p in files if p not in bad]
  for split in splits:
    splits[split].sort(key=lambda ex: _order_key(ex[0]))
  return Scan(root=root, class_names=class_names, splits=splits, channels=channels,
              skipped=tuple(sorted(bad)))


_SPEC_PART = re.compile(r"^\s*([^\[\]+\s]+)\s*(\[.*\])?\s*$")


def resolve_split(scan_result: Scan, spec: str) -> str:
  """``spec`` (e.g. ``'validation'``, ``'test[:50%]'``, ``'train+test'``) in the builder's names.

  ``test``/``validation``/``val`` name the one eval folder present (or ``holdout``).
  """
  splits = scan_result.splits
  eval_dirs = [s for s in EVAL_SPLITS if s in splits]
  parts = []
  for part in str(spec).split("+"):
    m = _SPEC_PART.match(part)
    name, rest = (m.group(1), m.group(2) or "") if m else (part.strip(), "")
    if name not in splits and name in EVAL_SPLITS:
      if len(eval_dirs) == 1:
        name = eval_dirs[0]
      elif HOLDOUT in splits:
        name = HOLDOUT
      elif not eval_dirs:
        raise DatasetError(
            f"Split {name!r} asked for, but {scan_result.root} has only '{TRAIN}/' and "
            "config.folder_holdout=0: add a test/ (or val/) folder or set "
            "--config.folder_holdout=0.1 to hold out part of train/.")
      else:
        raise DatasetError(f"Split {name!r} is ambiguous: {scan_result.root} has "
                           f"{', '.join(d + '/' for d in eval_dirs)}; name one of them.")
    if name not in splits:
      known = sorted(splits) + [s for s in EVAL_SPLITS if s not in splits and (
          eval_dirs or HOLDOUT in splits)]
      raise DatasetError(f"Unknown split {name!r} (from {spec!r}) for the image folder "
                         f"{scan_result.root}; known: {', '.join(known)}.")
    parts.append(name + rest)
  return "+".join(parts)


class _DecodeImage(tfds.decode.Decoder):
  """Decodes any PNG/JPEG/BMP/GIF to the folder's channel count (``preprocessing.decode``)."""

  def __init__(self, channels: int):
    super().__init__()
    self._channels = channels

  def decode_example(self, serialized_example):
    return preprocessing.decode(serialized_example, self._channels)


class FolderImages(tfds.folder_dataset.ImageFolder):
  """TFDS's ``ImageFolder`` over a checked ``Scan``: any of our extensions and modes, held-out
  split, sub-splits (``'train[:10%]'``, ``tfds.core.ReadInstruction``) and ``resolve_split``."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, scan_result: Scan):  # pylint: disable=super-init-not-called
    self._scan = scan_result
    self._image_shape = (None, None, scan_result.channels)
    self._image_dtype = None
    # ImageFolder's own __init__ lists the files itself (PNG/JPEG only): set up as it does.
    tfds.core.DatasetBuilder.__init__(self, data_dir=scan_result.root)
    self._data_dir = scan_result.root
    self.info.features["label"].names = list(scan_result.class_names)
    self.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=name, shard_lengths=[len(examples)], num_bytes=0)
        for name, examples in scan_result.splits.items()]))

  @property
  def scan(self) -> Scan:
    return self._scan

  @property
  def class_names(self) -> Tuple[str, ...]:
    return self._scan.class_names

  def resolve_split(self, spec: str) -> str:
    return resolve_split(self._scan, spec)

  def _as_dataset(self, split, shuffle_files=False, decoders=None, read_config=None):
    del shuffle_files, read_config  # the pipeline shuffles; the order here is fixed
    if not isinstance(split, tfds.core.ReadInstruction):
      split = tfds.core.ReadInstruction.from_spec(str(split))
    paths, labels = [], []
    for ins in split.to_absolute(dict(self.info.splits.items())):
      for rel, label in self._scan.splits[ins.splitname][ins.from_:ins.to]:
        paths.append(os.path.join(self._scan.root, rel))
        labels.append(label)
    decoders = dict(decoders or {})
    decoders.setdefault("image", _DecodeImage(self._scan.channels))
    features = self.info.features
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                             tf.constant(labels, tf.int64)))

    def load(path, label):
      example = {"image": tf.io.read_file(path), "label": label, "image/filename": path}
      return features.decode_example(example, decoders=decoders)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def builder(config) -> FolderImages:
  """The TFDS builder of the image folder ``config.data_dir`` (scanned and checked)."""
  return FolderImages(scan(config))
