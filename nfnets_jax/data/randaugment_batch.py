"""RandAugment on a whole batch: the same draws and ops as ``randaugment``, vectorised.

Why: applied one image at a time (``unbatch -> map -> batch``), every image pays tf.data's
per-element cost and a 16-way ``switch_case`` per layer. Here each layer splits the batch by
drawn op (``dynamic_partition``), runs each op once on its group with per-image arguments, and
stitches the batch back. Every image keeps its own key (the same one ``randaugment`` takes),
so the output equals ``randaugment`` image by image (tests: tests/data/test_randaugment_batch.py)
and the pipeline stays deterministic and resumable.

Images are float32 [B, H, W, C] in [0, 255]; per-image arguments have a leading B axis.
"""
from __future__ import annotations

import math

import tensorflow as tf

from nfnets_jax.data import randaugment as ra

NUM_OPS = len(ra.OP_NAMES)


def _b(x):
  """[n] -> [n, 1, 1, 1], to broadcast a per-image value over pixels."""
  return tf.reshape(x, [-1, 1, 1, 1])


def autocontrast(images):
  lo = tf.reduce_min(images, axis=[1, 2], keepdims=True)
  hi = tf.reduce_max(images, axis=[1, 2], keepdims=True)
  scale = 255.0 / tf.maximum(hi - lo, 1e-6)
  return tf.where(hi > lo, tf.clip_by_value((images - lo) * scale, 0.0, 255.0), images)


def equalize(images):
  """PIL's equalize per image and channel, all histograms from one bincount."""
  n, h, w, c = (tf.shape(images)[i] for i in range(4))
  values = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)  # [n, H, W, C]
  hist_id = (tf.range(n)[:, None, None, None] * c + tf.range(c)[None, None, None, :]) * 256
  hist = tf.math.bincount(tf.reshape(values + hist_id, [-1]), minlength=n * c * 256,
                          maxlength=n * c * 256)
  hist = tf.reshape(hist, [n, c, 256])
  # The last non-zero bin is the bin of the largest value.
  top = tf.transpose(tf.reduce_max(values, axis=[1, 2]))  # [C, n]
  last = tf.gather(tf.transpose(hist, [1, 0, 2]), top, batch_dims=2)  # [C, n]
  step = (h * w - tf.transpose(last)) // 255  # [n, C]
  lut = (tf.cumsum(hist, axis=-1) + (step // 2)[..., None]) // tf.maximum(step, 1)[..., None]
  lut = tf.clip_by_value(tf.concat([tf.zeros([n, c, 1], lut.dtype), lut[..., :-1]], -1), 0, 255)
  lut = tf.where((step > 0)[..., None], lut, tf.range(256)[None, None, :])
  # out[i, y, x, k] = lut[i, k, values[i, y, x, k]]
  flat = tf.reshape(tf.transpose(values, [0, 3, 1, 2]), [n, c, h * w])
  out = tf.gather(lut, flat, batch_dims=2)  # [n, C, H * W]
  return tf.cast(tf.transpose(tf.reshape(out, [n, c, h, w]), [0, 2, 3, 1]), tf.float32)


def grayscale(images):
  if images.shape[-1] == 1:
    return images
  gray = tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114], tf.float32), axis=-1,
                       keepdims=True)
  return tf.broadcast_to(gray, tf.shape(images))


def color(images, factor):
  return ra.blend(grayscale(images), images, _b(factor))


def contrast(images, factor):
  mean = tf.reduce_mean(grayscale(images)[..., :1], axis=[1, 2, 3], keepdims=True)
  return ra.blend(tf.broadcast_to(mean, tf.shape(images)), images, _b(factor))


def brightness(images, factor):
  return ra.blend(tf.zeros_like(images), images, _b(factor))


def sharpness(images, factor):
  # An empty group would reach depthwise_conv2d, which mis-shapes an empty batch.
  return tf.cond(tf.shape(images)[0] > 0, lambda: _sharpness(images, factor), lambda: images)


def _sharpness(images, factor):
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  c = images.shape[-1]
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, c, 1])
  inner = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "VALID")
  inner = tf.clip_by_value(tf.round(inner), 0.0, 255.0)
  smooth = tf.concat([
      images[:, :1],
      tf.concat([images[:, 1:-1, :1], inner, images[:, 1:-1, -1:]], axis=2),
      images[:, -1:],
  ], axis=1)
  return ra.blend(smooth, images, _b(factor))


def transform(images, matrices, fill=ra.FILL_VALUE):
  """Projective transform of each image by its own ``matrices`` row [n, 8] (nearest, fill)."""
  h, w = tf.shape(images)[1], tf.shape(images)[2]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=tf.cast(matrices, tf.float32), output_shape=tf.stack([h, w]),
      fill_value=tf.cast(fill, tf.float32), interpolation="NEAREST", fill_mode="CONSTANT")


def rotate(images, degrees):
  """Counter-clockwise by ``degrees`` [n] about each image's centre (as ``ra.rotate``)."""
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  h = tf.cast(tf.shape(images)[1], tf.float32)
  w = tf.cast(tf.shape(images)[2], tf.float32)
  cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
  cos, sin = tf.cos(theta), tf.sin(theta)
  zero = tf.zeros_like(theta)
  return transform(images, tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                                     sin, cos, cy - sin * cx - cos * cy, zero, zero], axis=1))


def _affine(images, a1=None, a2=None, b0=None, b2=None):
  """Matrix rows [1, a1, a2, b0, 1, b2, 0, 0] with per-image entries (None = 0)."""
  n = tf.shape(images)[0]
  zero = tf.zeros([n], tf.float32)
  one = tf.ones([n], tf.float32)
  pick = lambda v: zero if v is None else tf.cast(v, tf.float32)  # pylint: disable=unnecessary-lambda-assignment
  return transform(images, tf.stack([one, pick(a1), pick(a2), pick(b0), one, pick(b2), zero,
                                     zero], axis=1))


def cutout(images, centre, half_size, fill=ra.FILL_VALUE):
  """Per image, fills the square of half side ``half_size`` at ``centre`` [n, 2] (fractions)."""
  h, w = tf.shape(images)[1], tf.shape(images)[2]
  cy = tf.cast(centre[:, 0] * tf.cast(h, tf.float32), tf.int32)[:, None, None]
  cx = tf.cast(centre[:, 1] * tf.cast(w, tf.float32), tf.int32)[:, None, None]
  ys = tf.range(h)[None, :, None]
  xs = tf.range(w)[None, None, :]
  inside = ((ys >= cy - half_size) & (ys < cy + half_size)
            & (xs >= cx - half_size) & (xs < cx + half_size))
  return tf.where(inside[..., None], tf.cast(fill, images.dtype), images)


def apply_op(images, op_index: int, magnitude: float, sign, centre):
  """Op number ``op_index`` (static) on every image, with per-image ``sign`` [n] and Cutout
  ``centre`` [n, 2]: image i equals ``ra.apply_op`` with the same draws."""
  m = float(magnitude) / ra.MAX_LEVEL
  side = tf.cast(tf.minimum(tf.shape(images)[1], tf.shape(images)[2]), tf.float32)
  factor = 1.0 + sign * 0.9 * m
  name = ra.OP_NAMES[op_index]
  if name == "AutoContrast":
    return autocontrast(images)
  if name == "Equalize":
    return equalize(images)
  if name == "Invert":
    return ra.invert(images)
  if name == "Rotate":
    return rotate(images, sign * 30.0 * m)
  if name == "Posterize":
    return ra.posterize(images, 8 - int(m * 4))
  if name == "Solarize":
    return ra.solarize(images, 256.0 - 256.0 * m)
  if name == "Color":
    return color(images, factor)
  if name == "Contrast":
    return contrast(images, factor)
  if name == "Brightness":
    return brightness(images, factor)
  if name == "Sharpness":
    return sharpness(images, factor)
  if name == "ShearX":
    return _affine(images, a1=sign * 0.3 * m)
  if name == "ShearY":
    return _affine(images, b0=sign * 0.3 * m)
  if name == "TranslateX":
    return _affine(images, a2=-tf.round(sign * 0.45 * m * side))
  if name == "TranslateY":
    return _affine(images, b2=-tf.round(sign * 0.45 * m * side))
  if name == "Cutout":
    return cutout(images, centre, tf.cast(tf.round(m * 0.18 * side), tf.int32))
  if name == "SolarizeAdd":
    return ra.solarize_add(images, float(int(110 * m)))
  raise ValueError(f"Unknown op index {op_index}.")


def draws(keys, num_layers: int):
  """Per image (row of ``keys`` [B, 2] int64) and layer: (ops [B, L] int32, signs [B, L],
  centres [B, L, 2]), the draws ``ra.randaugment`` makes from the same key."""
  def one(key):
    per_layer = [ra.layer_draws(key, layer) for layer in range(num_layers)]
    return tuple(tf.stack(v) for v in zip(*per_layer))

  return tf.map_fn(one, keys, fn_output_signature=(
      tf.TensorSpec([num_layers], tf.int32), tf.TensorSpec([num_layers], tf.float32),
      tf.TensorSpec([num_layers, 2], tf.float32)))


def randaugment_batch(images, keys, num_layers: int, magnitude: float):
  """``ra.randaugment(images[i], keys[i], ...)`` for every i, one batched op per drawn op."""
  ra.check_magnitude(magnitude)
  images = tf.cast(images, tf.float32)
  if num_layers <= 0:
    return images
  static_shape = images.shape
  ops, signs, centres = draws(keys, num_layers)
  positions = tf.range(tf.shape(images)[0])
  for layer in range(num_layers):
    op = ops[:, layer]
    groups = tf.dynamic_partition(images, op, NUM_OPS)
    group_signs = tf.dynamic_partition(signs[:, layer], op, NUM_OPS)
    group_centres = tf.dynamic_partition(centres[:, layer], op, NUM_OPS)
    outs = [apply_op(groups[k], k, magnitude, group_signs[k], group_centres[k])
            for k in range(NUM_OPS)]
    images = tf.dynamic_stitch(tf.dynamic_partition(positions, op, NUM_OPS), outs)
    images.set_shape(static_shape)
  return images
