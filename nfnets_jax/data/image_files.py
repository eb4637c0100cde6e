"""Reading single image files (PNG, JPEG, BMP, GIF: first frame) as uint8 arrays.

For prediction and tools that take image paths; datasets of images go through TFDS instead.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from nfnets_jax.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class ImageReadError(UserError, ValueError):
  """An image file cannot be read or decoded."""


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, C] (C = 1, 3 or 4 as stored) of the image file at ``path``."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageReadError(f"{path}: cannot be read ({e.strerror or e}).") from None
  if not data:
    raise ImageReadError(f"{path}: the file is empty.")
  try:
    image = tf.io.decode_image(data, expand_animations=False, dtype=tf.uint8).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError) as e:
    reason = str(getattr(e, "message", e)).splitlines()[0].split("}}")[-1].strip()
    reason = reason.split(" [Op:")[0]
    raise ImageReadError(f"{path}: not a decodable PNG/JPEG/BMP/GIF image ({reason}).") from None
  return image
