"""Image preprocessing: crops, resizes, flips and normalization (section 6 of the facts).

Per-example ops take a ``[H, W, C]`` image (uint8 or float in [0, 255]) and return float32.
Batch ops (``pad_crop_batch``, ``flip_batch``) work on ``[B, H, W, C]`` and draw one random
value per example from a stateless seed, so the pipeline is deterministic and resumable.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import math

import tensorflow as tf

from nfnets_jax.constants import IMAGENET_MEAN, IMAGENET_STD

# Mean and std of the pixel values in [0, 255], per channel, computed on each train set.
# Fashion-MNIST: computed from Debian's train-images-idx3-ubyte (60,000 x 28 x 28).
NORMALIZATION = {
    "imagenet": (tuple(m * 255 for m in IMAGENET_MEAN), tuple(s * 255 for s in IMAGENET_STD)),
    "fashion_mnist": ((72.94035223214286,), (90.02118235130526,)),
    "mnist": ((0.1307 * 255,), (0.3081 * 255,)),
    "cifar10": ((0.4914 * 255, 0.4822 * 255, 0.4465 * 255), (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)),
    "cifar100": ((0.5071 * 255, 0.4865 * 255, 0.4409 * 255), (0.2673 * 255, 0.2564 * 255, 0.2762 * 255)),
}
# Datasets drawn from ImageNet use its statistics.
for _name in ("imagenet2012", "imagenet2012_subset", "imagenette", "imagewang", "imagenet_v2",
              "imagenet_resized", "imagenet_a", "imagenet_r"):
  NORMALIZATION[_name] = NORMALIZATION["imagenet"]

# The Inception-style random crop (facts section 6).
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
CROP_PADDING = 32  # center-crop fallback keeps size / (size + 32) of the shorter side.

TRAIN_PREPROCS = ("inception_crop", "pad_crop", "none")
EVAL_PREPROCS = ("resize_crop_32", "squash", "crop_resize", "none")
NORMALIZATIONS = ("imagenet", "dataset", "custom", "none")


def normalization_constants(normalization: str, dataset: str,
                            channels: int) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
  """(mean, std) in [0, 255] units for ``config.normalization``, or None for 'none'."""
  if normalization == "none":
    return None
  if normalization == "imagenet":
    key = "imagenet"
  elif normalization == "dataset":
    key = dataset.split(":")[0].split("/")[0]
    if key not in NORMALIZATION:
      raise ValueError(
          f"normalization='dataset' has no mean/std for dataset {dataset!r}; known: "
          f"{sorted(NORMALIZATION)}. Add it to nfnets_jax/data/preprocessing.py:NORMALIZATION "
          "or use normalization='imagenet' or 'none'.")
  else:
    raise ValueError(f"Unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}.")
  mean, std = NORMALIZATION[key]
  if len(mean) != channels:
    raise ValueError(
        f"normalization={normalization!r} gives {len(mean)} channel(s) ({key}) but {dataset!r} "
        f"images have {channels}; use normalization='dataset' or 'none'.")
  return mean, std


def config_normalization(config, channels: int):
  """(mean, std) in [0, 255] units for a config: ``normalization_constants`` of its
  ``normalization``, or with ``'custom'`` its ``normalization_mean`` / ``normalization_std``
  (in [0, 1] pixel units, as timm states them; fine-tuning copies them from the source)."""
  name = config.get("normalization", "imagenet")
  if name != "custom":
    return normalization_constants(name, config.dataset, channels)
  mean, std = config.get("normalization_mean", None), config.get("normalization_std", None)
  if not mean or not std or len(mean) != channels or len(std) != channels:
    raise ValueError(
        f"normalization='custom' needs normalization_mean and normalization_std with one value "
        f"per channel ({channels}); got {mean} and {std}.")
  return tuple(float(m) * 255.0 for m in mean), tuple(float(v) * 255.0 for v in std)


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """(x - mean) / std over the trailing channel axis, float32."""
  images = tf.cast(images, tf.float32)
  return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def resize(image: tf.Tensor, height, width) -> tf.Tensor:
  """Bicubic resize (TF's Keys cubic, half-pixel centers) to float32, without clipping."""
  return tf.image.resize(tf.cast(image, tf.float32), [height, width], method="bicubic")


def decode(image: tf.Tensor, channels: int) -> tf.Tensor:
  """Decodes encoded bytes (JPEG/PNG/BMP/GIF) to uint8 [H, W, C]; passes decoded images through.

  Any stored mode becomes ``channels`` (1 or 3): TF converts PNG and JPEG itself, but decodes
  GIF and BMP only to RGB(A), so those are decoded as RGB and then turned to grayscale.
  """
  if image.dtype == tf.string:
    if channels == 1:
      rgb_only = tf.logical_or(tf.equal(tf.strings.substr(image, 0, 2), b"BM"),
                               tf.equal(tf.strings.substr(image, 0, 3), b"GIF"))
      image = tf.cond(
          rgb_only,
          lambda: tf.image.rgb_to_grayscale(
              tf.io.decode_image(image, channels=3, expand_animations=False)),
          lambda: tf.io.decode_image(image, channels=1, expand_animations=False))
    else:
      image = tf.io.decode_image(image, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
  return image


def _decode_crop(image: tf.Tensor, channels: int, offset_y, offset_x, crop_h, crop_w):
  """Crops window from ``image`` (decoded or encoded); decodes only the window for JPEGs."""
  window = tf.stack([offset_y, offset_x, crop_h, crop_w])
  if image.dtype == tf.string:
    def jpeg():
      return tf.io.decode_and_crop_jpeg(image, window, channels=channels)

    def other():
      full = decode(image, channels)
      return tf.image.crop_to_bounding_box(full, offset_y, offset_x, crop_h, crop_w)

    out = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    out.set_shape([None, None, channels])
    return out
  return tf.image.crop_to_bounding_box(image, offset_y, offset_x, crop_h, crop_w)


def image_shape(image: tf.Tensor, channels: int) -> tf.Tensor:
  """[H, W, C] of a decoded image or of encoded bytes (header only for JPEG)."""
  if image.dtype == tf.string:
    return tf.cond(tf.io.is_jpeg(image),
                   lambda: tf.io.extract_jpeg_shape(image),
                   lambda: tf.shape(decode(image, channels), out_type=tf.int32))
  return tf.shape(image, out_type=tf.int32)


def center_crop_window(height, width, size: int, crop_padding: int = CROP_PADDING):
  """Window (y, x, h, w) of the padded center crop: size / (size + pad) of the shorter side."""
  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  crop = tf.cast(size / (size + crop_padding) * tf.minimum(height, width), tf.int32)
  crop = tf.maximum(crop, 1)
  off_y = (tf.cast(height, tf.int32) - crop + 1) // 2
  off_x = (tf.cast(width, tf.int32) - crop + 1) // 2
  return off_y, off_x, crop, crop


def inception_crop(image: tf.Tensor, seed: tf.Tensor, size: int, channels: int) -> tf.Tensor:
  """Random-area crop (area 0.08-1, aspect 3/4-4/3, 10 tries), center-crop fallback, bicubic.

  ``image`` may be encoded bytes (then only the crop window of a JPEG is decoded).
  Returns float32 [size, size, C] clipped to [0, 255].
  """
  shape = image_shape(image, channels)
  bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=bbox, seed=seed, min_object_covered=0.1,
      aspect_ratio_range=CROP_ASPECT_RANGE, area_range=CROP_AREA_RANGE,
      max_attempts=CROP_ATTEMPTS, use_image_if_no_bounding_boxes=True)
  # The sampler returns the whole image when all attempts fail: fall back to a center crop.
  failed = tf.reduce_all(tf.equal(crop_size[:2], shape[:2]))
  cy, cx, ch, cw = center_crop_window(shape[0], shape[1], size)
  off_y = tf.where(failed, cy, begin[0])
  off_x = tf.where(failed, cx, begin[1])
  crop_h = tf.where(failed, ch, crop_size[0])
  crop_w = tf.where(failed, cw, crop_size[1])
  crop = _decode_crop(image, channels, off_y, off_x, crop_h, crop_w)
  out = tf.clip_by_value(resize(crop, size, size), 0.0, 255.0)
  out.set_shape([size, size, channels])
  return out


def resize_crop_32(image: tf.Tensor, size: int, channels: int) -> tf.Tensor:
  """Reference eval: bicubic resize to (S+32, S+32) ignoring aspect, center crop S (offset 16)."""
  image = decode(image, channels)
  image = resize(image, size + 32, size + 32)
  out = image[16:16 + size, 16:16 + size, :]
  out.set_shape([size, size, channels])
  return out


def squash(image: tf.Tensor, size: int, channels: int, crop_pct: float) -> tf.Tensor:
  """timm's crop_mode='squash' eval: bicubic resize ignoring aspect to floor(S / crop_pct)
  square, centre crop S (torchvision's CenterCrop offset). resize_crop_32 is this with S + 32."""
  if not 0.0 < crop_pct <= 1.0:
    raise ValueError(f"eval_crop_pct must be in (0, 1], got {crop_pct}.")
  scale = max(size, math.floor(size / crop_pct))
  offset = int(round((scale - size) / 2.0))
  image = resize(decode(image, channels), scale, scale)
  out = image[offset:offset + size, offset:offset + size, :]
  out.set_shape([size, size, channels])
  return out


def crop_resize(image: tf.Tensor, size: int, channels: int, crop_pct: float) -> tf.Tensor:
  """Aspect-preserving eval: center crop of crop_pct * shorter side, bicubic resize to S x S."""
  if not 0.0 < crop_pct <= 1.0:
    raise ValueError(f"eval_crop_pct must be in (0, 1], got {crop_pct}.")
  shape = image_shape(image, channels)
  # crop_pct = size / (size + pad)  <=>  pad = size / crop_pct - size.
  off_y, off_x, ch, cw = center_crop_window(shape[0], shape[1], size,
                                            crop_padding=size / crop_pct - size)
  crop = _decode_crop(image, channels, off_y, off_x, ch, cw)
  out = resize(crop, size, size)
  out.set_shape([size, size, channels])
  return out


def resize_if_needed(image: tf.Tensor, size: int, channels: int) -> tf.Tensor:
  """Decoded float32 image of size x size: unchanged when it already is, else bicubic resize."""
  image = decode(image, channels)
  static = image.shape
  if static[0] == size and static[1] == size:
    return tf.cast(image, tf.float32)
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  out = tf.cond(same, lambda: tf.cast(image, tf.float32),
                lambda: tf.clip_by_value(resize(image, size, size), 0.0, 255.0))
  out.set_shape([size, size, channels])
  return out


def eval_preprocess(image: tf.Tensor, preproc: str, size: int, channels: int,
                    crop_pct: float = 0.875) -> tf.Tensor:
  """One eval image, float32 [size, size, C] in [0, 255] (before normalization)."""
  if preproc == "resize_crop_32":
    return resize_crop_32(image, size, channels)
  if preproc == "squash":
    return squash(image, size, channels, crop_pct)
  if preproc == "crop_resize":
    return crop_resize(image, size, channels, crop_pct)
  if preproc == "none":
    return resize_if_needed(image, size, channels)
  raise ValueError(f"Unknown eval_preproc {preproc!r}; expected one of {EVAL_PREPROCS}.")


def pad_crop_batch(images: tf.Tensor, seed: tf.Tensor, pad: int, mode: str = "reflect") -> tf.Tensor:
  """Pads each image by ``pad`` px (reflect or zero) and crops back a random H x W window."""
  if pad <= 0:
    return images
  mode = mode.upper()
  if mode not in ("REFLECT", "CONSTANT", "SYMMETRIC"):
    raise ValueError(f"pad mode {mode!r} must be 'reflect', 'constant' or 'symmetric'.")
  b = tf.shape(images)[0]
  h, w = images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)
  offsets = tf.random.stateless_uniform([b, 2], seed=seed, minval=0, maxval=2 * pad + 1,
                                        dtype=tf.int32)
  rows = offsets[:, :1] + tf.range(h)[None, :]  # [B, H]
  cols = offsets[:, 1:] + tf.range(w)[None, :]  # [B, W]
  out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2p, C]
  out = tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]
  return out


def flip_draws(seed: tf.Tensor, batch) -> tf.Tensor:
  """bool [batch]: which images of a batch ``flip_batch`` flips (so one image can be flipped
  on its own, with the same draw)."""
  return tf.random.stateless_uniform([batch], seed=seed) < 0.5


def flip_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Horizontal flip of each image with probability 1/2."""
  flip = flip_draws(seed, tf.shape(images)[0])
  return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
