"""Top-k predictions for image files, batched, with progress: what ``experiments/predict.py`` runs.

Each image is read on its own (``data.image_files``), so an unreadable file is reported by name
and the others are still predicted.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Dict, List, Optional, Sequence, TextIO

import numpy as np

from nfnets_jax import pretrained
from nfnets_jax.data import image_files


def top_classes(model: pretrained.Pretrained, probs: np.ndarray, k: int) -> List[Dict]:
  """``[{'label', 'index', 'prob'}, ...]`` of the ``k`` most probable classes, best first."""
  k = max(1, min(int(k), probs.shape[-1]))
  order = np.argsort(-probs, kind="stable")[:k]
  return [{"label": model.label(int(i)), "index": int(i), "prob": float(probs[i])}
          for i in order]


def format_text(path: str, predictions: List[Dict]) -> str:
  lines = [path]
  for p in predictions:
    lines.append(f"  {p['prob']:7.2%}  {p['label']}  ({p['index']})")
  return "\n".join(lines)


def predict_files(source: str, paths: Sequence[str], *, arch: Optional[str] = None,
                  top_k: int = 5, as_json: bool = False,
                  batch_size: int = 16, ema: Optional[bool] = None, trust: bool = False,
                  out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                  model: Optional[pretrained.Pretrained] = None) -> List[str]:
  """Prints the top-k classes of every image in ``paths`` (all classes, quietly, when ``top_k``
  exceeds their number); returns the paths that failed."""
  model = model or pretrained.load(source, arch, params=pretrained.params_choice(ema), trust=trust)
  print(f"{model.name} ({model.kind}, {model.num_classes} classes) at {model.eval_image_size}px"
        f" with {model.eval_preproc}", file=err, flush=True)
  failed: List[str] = []
  progress = _Progress(len(paths), err)
  batch_paths, batch_images = [], []

  def flush():
    if not batch_images:
      return
    probs = model.predict(batch_images)
    for path, p in zip(batch_paths, probs):
      predictions = top_classes(model, p, top_k)
      if as_json:
        out.write(json.dumps({"path": path, "top_k": predictions}) + "\n")
      else:
        out.write(format_text(path, predictions) + "\n")
    out.flush()
    progress.update(len(batch_images))
    batch_paths.clear()
    batch_images.clear()

  for path in paths:
    try:
      image = image_files.read_image(path)
    except image_files.ImageReadError as e:
      print(f"Error: {e}", file=err, flush=True)
      failed.append(path)
      progress.update(1)
      continue
    batch_paths.append(path)
    batch_images.append(image)
    if len(batch_images) >= batch_size:
      flush()
  flush()
  if failed:
    print(f"{len(failed)} of {len(paths)} images could not be read.", file=err, flush=True)
  return failed


class _Progress:
  """``predicted 64/1000 images | 12.3 img/s | ETA 1m16s`` on stderr for long lists."""

  def __init__(self, total: int, stream: TextIO, every_seconds: float = 5.0):
    self.total, self.stream, self.every = total, stream, every_seconds
    self.done, self.start, self.last = 0, time.time(), time.time()

  def update(self, n: int):
    self.done += n
    now = time.time()
    if self.total < 50 or (now - self.last < self.every and self.done < self.total):
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    eta = (self.total - self.done) / max(rate, 1e-9)
    print(f"predicted {self.done}/{self.total} images | {rate:.1f} img/s | ETA {eta:.0f}s",
          file=self.stream, flush=True)

