"""Our ImageNet train pipeline against timm's equivalent, over the same JPEGs, in one run.

Why: an accelerator trains only as fast as the host feeds it, and timm's loader is the usual
yardstick. Both sides read one generated folder of ~300-500 px JPEGs (``write_jpeg_folder``)
and run the F0 recipe with every part counted wherever it runs:

* ours: ``data.train_iterator`` on ``dataset='folder'`` (inception crop with decode of the crop
  window only, bicubic 192, flip, RandAugment 4 layers magnitude 5, MixUp 0.2 / CutMix,
  ImageNet normalization); tf.data uses one thread per core. (The folder has no eval split, so
  ours trains on its default 90%, the other 10% being held out: the same kind of JPEGs.)
* timm: ``timm.data.create_transform`` (RandomResizedCrop 192 bicubic, scale 0.08-1, ratio
  3/4-4/3, flip, ``TIMM_RANDAUGMENT``, ToTensor, Normalize) in a ``DataLoader`` with one worker
  per core, then ``timm.data.Mixup`` (MixUp 0.2 / CutMix, uniform box area) on each batch in
  the main process.

``TIMM_RANDAUGMENT`` = 'rand-n4-m5-inc1-p1.0': 4 layers at magnitude 5 as ours, every layer
applied (timm's default applies each with probability 0.5, ours always) and the increasing
op variants (ours are monotone in M too). timm draws from 15 ops (no Cutout). Speed is
compared as images/s per core, both sides timed alternately in fresh pipelines in one process,
after warm-up batches pulled back to back (so prefetch buffers are drained before timing).

``profile_stages`` measures the CPU time of each stage, one image at a time (tf: graph
functions, timm: PIL with one torch thread), for the per-stage table in docs/benchmarks.md.

torch/timm/PIL are optional: ``compare`` without them runs ours only and says why.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import ml_collections
import numpy as np

from nfnets_jax import data
from nfnets_jax.research import benchmark

TIMM_RANDAUGMENT = "rand-n4-m5-inc1-p1.0"
IMAGE_SIDES = (300, 500)  # generated JPEG sides, inclusive (ImageNet averages ~400 x 350)
JPEG_QUALITY = 90


def timm_missing() -> Optional[str]:
  """None when torch + timm + PIL import, else the reason (the timm side is then skipped)."""
  why = benchmark.timm_available()
  if why:
    return why
  try:
    from PIL import Image  # pylint: disable=unused-import  # noqa: F401
  except ImportError as e:
    return f"{type(e).__name__}: {e}"
  return None


def write_jpeg_folder(root: str, num_images: int = 256, num_classes: int = 8,
                      seed: int = 0) -> str:
  """Writes ``root/train/c<k>/<i>.jpg``: smooth colour fields plus noise, random sides in
  ``IMAGE_SIDES``, quality ``JPEG_QUALITY``. Returns ``root``. Deterministic in ``seed``."""
  if num_images < 2 * num_classes or num_classes < 1:
    raise ValueError(f"Need num_classes >= 1 and num_images >= 2 * num_classes, got "
                     f"{num_images} images, {num_classes} classes.")
  import tensorflow as tf  # heavy: loaded on first use
  rng = np.random.RandomState(seed)
  for i in range(num_images):
    d = os.path.join(root, "train", f"c{i % num_classes}")
    os.makedirs(d, exist_ok=True)
    h, w = rng.randint(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1, size=2)
    yy, xx = np.mgrid[0:h, 0:w] / float(max(h, w))
    freq, phase = rng.uniform(1, 8, size=3), rng.uniform(0, 6, size=3)
    field = np.stack([128 + 100 * np.sin(freq[k] * (xx + 0.7 * yy) + phase[k])
                      for k in range(3)], -1)
    image = np.clip(field + rng.normal(0, 20, field.shape), 0, 255).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(image, quality=JPEG_QUALITY)
    tf.io.write_file(os.path.join(d, f"{i:05d}.jpg"), jpeg)
  return root


def _num_classes(root: str) -> int:
  return len([d for d in os.listdir(os.path.join(root, "train")) if not d.startswith(".")])


def ours_config(root: str, image_size: int = 192, seed: int = 0) -> ml_collections.ConfigDict:
  """The F0 train-pipeline config on the folder ``root``."""
  cfg = benchmark.imagenet_train_config("folder", root, image_size)
  cfg.seed = seed
  return cfg


def ours_stream(root: str, batch: int, image_size: int = 192,
                seed: int = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """(images [B, S, S, 3] normalized, mixed labels [B, K]) from ``data.train_iterator``."""
  cfg = ours_config(root, image_size, seed)
  for b in data.train_iterator(cfg, per_device_batch=batch, num_devices=1):
    yield b["images"][0], b["labels"][0]


def timm_transform(image_size: int = 192):
  """timm's train transform equivalent to the F0 recipe (see the module docstring)."""
  from timm import data as tdata
  return tdata.create_transform(
      image_size, is_training=True, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), hflip=0.5,
      vflip=0.0, color_jitter=None, auto_augment=TIMM_RANDAUGMENT, interpolation="bicubic",
      re_prob=0.0)


def timm_mixup(num_classes: int):
  """MixUp 0.2 or CutMix (Beta(1, 1): uniform box area), one of them per batch, labels mixed."""
  from timm import data as tdata
  return tdata.Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, mode="batch",
                     label_smoothing=0.0, num_classes=num_classes)


def timm_stream(root: str, batch: int, image_size: int = 192, workers: Optional[int] = None,
                seed: int = 0) -> Iterator[Tuple[object, object]]:
  """(images, mixed labels) torch batches: timm's transform in ``workers`` DataLoader worker
  processes (default one per core), Mixup in this process."""
  import torch
  from timm import data as tdata
  workers = benchmark.cpu_cores() if workers is None else int(workers)
  dataset = tdata.ImageDataset(os.path.join(root, "train"), transform=timm_transform(image_size))
  gen = torch.Generator().manual_seed(seed)
  sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=1 << 40,
                                           generator=gen)
  loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler,
                                       num_workers=workers, drop_last=True)
  mix = timm_mixup(_num_classes(root))
  # One torch thread here too, as in each worker: the workers already fill the cores, and
  # torch's thread pool spin-waits badly on an oversubscribed machine (Mixup took ~40x longer).
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    for images, labels in loader:
      yield mix(images, labels)
  finally:
    torch.set_num_threads(threads)


def cpu_seconds() -> Optional[float]:
  """CPU time (user + system) of this process, its live child processes (DataLoader workers,
  read from /proc) and its reaped children; None where /proc is missing (not Linux)."""
  if not os.path.isdir("/proc/self"):
    return None
  t = os.times()
  # process_time: this process's threads at ns resolution (os.times ticks at 10 ms, so a
  # short timed window could read 0).
  total = time.process_time() + t.children_user + t.children_system
  me = str(os.getpid())
  tick = os.sysconf("SC_CLK_TCK")
  for pid in os.listdir("/proc"):
    if not pid.isdigit() or pid == me:
      continue
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if fields[1] == me:  # ppid; then utime, stime at fields 11, 12
      total += (int(fields[11]) + int(fields[12])) / tick
  return total


def time_stream(stream: Iterator, batch: int, batches: int, warmup: int) -> dict:
  """Pulls ``warmup`` batches back to back (startup; drains prefetch buffers), then times
  ``batches`` more: images/s = batches * batch / elapsed, and images per CPU second (all
  threads and worker processes), which other programs on a busy machine disturb far less."""
  t0 = time.perf_counter()
  for _ in range(warmup):
    next(stream)
  warm_s = time.perf_counter() - t0
  c0 = cpu_seconds()
  t0 = time.perf_counter()
  for _ in range(batches):
    next(stream)
  elapsed = time.perf_counter() - t0
  c1 = cpu_seconds()
  cpu = None if c0 is None else c1 - c0
  return dict(warmup_s=warm_s, elapsed_s=elapsed, images_per_s=batches * batch / elapsed,
              cpu_s=cpu, images_per_cpu_s=None if not cpu else batches * batch / cpu)


def _close(stream) -> None:
  close = getattr(stream, "close", None)
  if close is not None:
    close()


def compare(num_images: int = 256, batch: int = 32, batches: int = 10, warmup: int = 6,
            rounds: int = 2, image_size: int = 192, with_timm: bool = True,
            root: Optional[str] = None, log: Callable[[str], None] = print) -> dict:
  """Times ours and timm's alternately (``rounds`` x each, fresh pipelines) on one JPEG folder.

  Returns per side the rounds and the median ``images_per_s`` and ``images_per_s_per_core``;
  with timm also ``ratio_ours_over_timm`` (per core, of the medians) and per round.
  """
  if batches < 1 or warmup < 1 or rounds < 1 or batch < 2 or batch % 2:
    raise ValueError(f"Need batches, warmup, rounds >= 1 and an even batch >= 2; got "
                     f"{batches}, {warmup}, {rounds}, {batch}.")
  why_not = timm_missing() if with_timm else "not requested"
  owned = root is None
  tmp = tempfile.TemporaryDirectory(prefix="nfnets_pipe_") if owned else None
  root = tmp.name if owned else root
  cores = benchmark.cpu_cores()
  try:
    if not os.path.isdir(os.path.join(root, "train")):
      t0 = time.perf_counter()
      write_jpeg_folder(root, num_images)
      log(f"[pipeline] wrote {num_images} JPEGs ({IMAGE_SIDES[0]}-{IMAGE_SIDES[1]} px) in "
          f"{time.perf_counter() - t0:.1f}s")
    sides = {"ours": lambda: ours_stream(root, batch, image_size)}
    if why_not is None:
      sides["timm"] = lambda: timm_stream(root, batch, image_size)
    else:
      log(f"[pipeline] timm side skipped: {why_not}")
    runs: Dict[str, List[dict]] = {k: [] for k in sides}
    for r in range(rounds):
      for name, make in sides.items():
        stream = make()
        try:
          res = time_stream(stream, batch, batches, warmup)
        finally:
          _close(stream)
        res["images_per_s_per_core"] = res["images_per_s"] / cores
        runs[name].append(res)
        log(f"[pipeline] round {r} {name}: {res['images_per_s']:.1f} img/s, "
            f"{res['images_per_s_per_core']:.1f} per core, "
            f"{res['images_per_cpu_s'] or float('nan'):.1f} per CPU second")
    out = dict(cpu_cores=cores, batch=batch, batches_timed=batches, warmup_batches=warmup,
               rounds=rounds, image_size=image_size, num_images=num_images,
               load_average=list(os.getloadavg()), timm_skipped=why_not if why_not else None,
               timm_randaugment=TIMM_RANDAUGMENT)
    for name, rs in runs.items():
      ips = statistics.median(r["images_per_s"] for r in rs)
      per_cpu = [r["images_per_cpu_s"] for r in rs if r["images_per_cpu_s"]]
      out[name] = dict(rounds=rs, images_per_s=ips, images_per_s_per_core=ips / cores,
                       images_per_cpu_s=statistics.median(per_cpu) if per_cpu else None)
    if "timm" in runs:
      out["ratio_ours_over_timm"] = (out["ours"]["images_per_s_per_core"]
                                     / out["timm"]["images_per_s_per_core"])
      out["ratio_per_round"] = [a["images_per_s"] / b["images_per_s"]
                                for a, b in zip(runs["ours"], runs["timm"])]
      if out["ours"]["images_per_cpu_s"] and out["timm"]["images_per_cpu_s"]:
        out["ratio_per_cpu_s_ours_over_timm"] = (out["ours"]["images_per_cpu_s"]
                                                 / out["timm"]["images_per_cpu_s"])
    return out
  finally:
    if tmp is not None:
      tmp.cleanup()


def _per_call_ms(fn, args_list, repeats: int = 2) -> float:
  """Median over ``args_list`` of the CPU time (this process, all threads) of one call, in ms,
  after one untimed call. CPU time, not wall time: other programs on the machine barely move it.
  """
  fn(*args_list[0])
  times = []
  for args in args_list:
    t0 = time.process_time()
    for _ in range(repeats):
      fn(*args)
    times.append((time.process_time() - t0) / repeats)
  return 1e3 * statistics.median(times)


def _files(root: str, n: int) -> List[str]:
  train = os.path.join(root, "train")
  paths = sorted(os.path.join(train, c, f) for c in os.listdir(train)
                 for f in os.listdir(os.path.join(train, c)))
  return paths[:n]


def profile_ours(root: str, num_images: int = 16, image_size: int = 192,
                 magnitude: float = 5.0) -> List[Tuple[str, float]]:
  """[(stage, CPU ms per image)] of our stages, one image per graph call (batch ops: / batch)."""
  import tensorflow as tf  # heavy: loaded on first use
  ra = data.randaugment
  prep = data.preprocessing
  raw = [tf.io.read_file(p) for p in _files(root, num_images)]
  key = lambda i: tf.constant([7, i], tf.int64)  # pylint: disable=unnecessary-lambda-assignment
  rows = [("graph call overhead (empty function)",
           _per_call_ms(tf.function(lambda b: b), [(b,) for b in raw]))]
  rows.append(("decode whole JPEG", _per_call_ms(
      tf.function(lambda b: tf.io.decode_jpeg(b, channels=3)), [(b,) for b in raw])))
  crop = tf.function(lambda b, k: prep.inception_crop(b, k, image_size, 3))
  rows.append((f"inception crop: decode crop window + bicubic {image_size}", _per_call_ms(
      crop, [(b, key(i)) for i, b in enumerate(raw)])))
  images = [crop(b, key(i)) for i, b in enumerate(raw)]
  for k, name in enumerate(ra.OP_NAMES):
    fn = tf.function(lambda im, s, k=k: ra.apply_op(im, k, magnitude, s))
    rows.append((f"RandAugment op {name}", _per_call_ms(
        fn, [(im, key(i)) for i, im in enumerate(images)], repeats=1)))
  rows.append((f"RandAugment 4 layers (one image)", _per_call_ms(
      tf.function(lambda im, s: ra.randaugment(im, s, 4, magnitude)),
      [(im, key(i)) for i, im in enumerate(images)], repeats=1)))
  batch = tf.stack(images)
  n = int(batch.shape[0])
  labels = tf.one_hot(tf.range(n) % 8, 8)
  seed = tf.constant([1, 2], tf.int64)
  rows.append((f"flip (batch of {n}, per image)", _per_call_ms(
      tf.function(lambda x: prep.flip_batch(x, seed)), [(batch,)]) / n))
  rows.append((f"MixUp/CutMix halves (batch of {n}, per image)", _per_call_ms(
      tf.function(lambda x, y: data.mixing.mix_batch(x, y, seed, 0.2, True)),
      [(batch, labels)]) / n))
  mean, std = prep.NORMALIZATION["imagenet"]
  rows.append((f"normalize (batch of {n}, per image)", _per_call_ms(
      tf.function(lambda x: prep.normalize(x, mean, std)), [(batch,)]) / n))
  return rows


def profile_timm(root: str, num_images: int = 16,
                 image_size: int = 192) -> List[Tuple[str, float]]:
  """[(stage, CPU ms per image)] of timm's stages (PIL), one image at a time in this process, with
  one torch thread (as in a DataLoader worker)."""
  import torch
  from PIL import Image as image_mod
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # as in a DataLoader worker
  try:
    return _profile_timm(torch, image_mod, root, num_images, image_size)
  finally:
    torch.set_num_threads(threads)


def _profile_timm(torch, image_mod, root, num_images, image_size):
  transform = timm_transform(image_size)
  steps = list(transform.transforms)
  crop, flip, randaug, rest = steps[0], steps[1], steps[2], steps[3:]
  paths = _files(root, num_images)

  def load(p):
    with open(p, "rb") as f:
      return image_mod.open(f).convert("RGB")

  rows = [("PIL open + decode whole JPEG", _per_call_ms(load, [(p,) for p in paths]))]
  pils = [load(p) for p in paths]
  rows.append((f"RandomResizedCrop {image_size} bicubic + flip", _per_call_ms(
      lambda im: flip(crop(im)), [(im,) for im in pils])))
  small = [flip(crop(im)) for im in pils]
  for op in randaug.ops:
    rows.append((f"RandAugment op {op.name}", _per_call_ms(op, [(im,) for im in small])))
  rows.append(("RandAugment 4 layers (one image)", _per_call_ms(randaug,
                                                                [(im,) for im in small])))

  def to_tensor(im):
    for t in rest:
      im = t(im)
    return im

  rows.append(("ToTensor + Normalize", _per_call_ms(to_tensor, [(im,) for im in small])))
  batch = torch.stack([to_tensor(im) for im in small])
  n = batch.shape[0] - batch.shape[0] % 2
  mix = timm_mixup(8)
  labels = torch.arange(n) % 8
  rows.append((f"Mixup/CutMix (batch of {n}, per image)", _per_call_ms(
      lambda x, y: mix(x.clone(), y), [(batch[:n], labels)]) / n))
  return rows


def profile_stages(num_images: int = 16, image_size: int = 192, with_timm: bool = True,
                   root: Optional[str] = None) -> dict:
  """Per-stage CPU ms per image, ours and (when importable) timm's, on generated JPEGs."""
  owned = root is None
  tmp = tempfile.TemporaryDirectory(prefix="nfnets_prof_") if owned else None
  root = tmp.name if owned else root
  try:
    if not os.path.isdir(os.path.join(root, "train")):
      write_jpeg_folder(root, max(num_images, 16))
    out = dict(ours=profile_ours(root, num_images, image_size), num_images=num_images,
               image_size=image_size)
    why_not = timm_missing() if with_timm else "not requested"
    if why_not is None:
      out["timm"] = profile_timm(root, num_images, image_size)
    out["timm_skipped"] = why_not
    return out
  finally:
    if tmp is not None:
      tmp.cleanup()


def profile_table(profile: dict) -> str:
  """Markdown table of ``profile_stages``: stage | ours CPU ms | timm's stage | timm CPU ms."""
  lines = ["| ours: stage | CPU ms / image | timm: stage | CPU ms / image |",
           "|---|---|---|---|"]
  ours, theirs = profile["ours"], profile.get("timm") or []
  for i in range(max(len(ours), len(theirs))):
    a = ours[i] if i < len(ours) else ("", None)
    b = theirs[i] if i < len(theirs) else ("", None)
    fa = "" if a[1] is None else f"{a[1]:.3f}"
    fb = "" if b[1] is None else f"{b[1]:.3f}"
    lines.append(f"| {a[0]} | {fa} | {b[0]} | {fb} |")
  return "\n".join(lines)


def summary(result: dict) -> str:
  """Lines of ``compare``'s result: per side img/s, per core, per CPU second; the ratios."""
  lines = [f"input pipeline ({result['cpu_cores']} cores, batch {result['batch']}, "
           f"{result['rounds']} rounds of {result['batches_timed']} batches):"]
  for name in ("ours", "timm"):
    if name in result:
      r = result[name]
      per_cpu = r["images_per_cpu_s"]
      lines.append(f"  {name}: {r['images_per_s']:.1f} img/s, {r['images_per_s_per_core']:.1f} "
                   f"img/s per core, {per_cpu or float('nan'):.1f} img per CPU second")
  if "ratio_ours_over_timm" in result:
    per_cpu = result.get("ratio_per_cpu_s_ours_over_timm")
    lines.append(f"  ours / timm per core: x{result['ratio_ours_over_timm']:.2f} (rounds: "
                 + ", ".join(f"{x:.2f}" for x in result["ratio_per_round"])
                 + f"); per CPU second: x{per_cpu or float('nan'):.2f}")
  else:
    lines.append(f"  timm not run: {result['timm_skipped']}")
  return "\n".join(lines)
