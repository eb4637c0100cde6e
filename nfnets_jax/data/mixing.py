"""MixUp and CutMix on a batch, with labels mixed by the same ratio (facts section 6).

Each example is mixed with its partner in the reversed batch (or half-batch). The recipe
(``mix_batch`` with both enabled) uses MixUp on the first half and CutMix on the second half.
A mixed label is ``lam * y + (1 - lam) * y_partner``, so it sums to 1 when ``y`` does.
"""
from __future__ import annotations

import tensorflow as tf


def sample_beta(seed: tf.Tensor, alpha: float, shape=()) -> tf.Tensor:
  """Beta(alpha, alpha) from two stateless gammas."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  g1 = tf.random.stateless_gamma(shape, seed=seeds[0], alpha=alpha)
  g2 = tf.random.stateless_gamma(shape, seed=seeds[1], alpha=alpha)
  return g1 / tf.maximum(g1 + g2, 1e-12)


def mixup(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float):
  """MixUp with one ratio ~ Beta(alpha, alpha) for the batch; partner = reversed batch.

  Returns (images, labels, lam) with lam of shape [B] (weight of each example's own content).
  """
  lam = sample_beta(seed, alpha)
  images = tf.cast(images, tf.float32)
  mixed = lam * images + (1.0 - lam) * tf.reverse(images, axis=[0])
  mixed_labels = lam * labels + (1.0 - lam) * tf.reverse(labels, axis=[0])
  return mixed, mixed_labels, tf.fill([tf.shape(images)[0]], lam)


def cutmix_box(seed: tf.Tensor, height: int, width: int):
  """A box whose nominal area fraction is 1 - lam, lam ~ U(0, 1), centre uniform, clipped.

  Returns (y0, y1, x0, x1) int32 and the actual kept fraction 1 - box_area / (H * W).
  """
  seeds = tf.random.experimental.stateless_split(seed, 2)
  lam = tf.random.stateless_uniform([], seed=seeds[0])
  centre = tf.random.stateless_uniform([2], seed=seeds[1])
  cut = tf.sqrt(1.0 - lam)
  cut_h = tf.cast(height * cut, tf.int32)
  cut_w = tf.cast(width * cut, tf.int32)
  cy = tf.cast(centre[0] * height, tf.int32)
  cx = tf.cast(centre[1] * width, tf.int32)
  y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
  y1 = tf.clip_by_value(cy + cut_h - cut_h // 2, 0, height)
  x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
  x1 = tf.clip_by_value(cx + cut_w - cut_w // 2, 0, width)
  area = tf.cast((y1 - y0) * (x1 - x0), tf.float32)
  return (y0, y1, x0, x1), 1.0 - area / float(height * width)


def cutmix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor):
  """CutMix: one box per batch is pasted from the reversed batch; labels mixed by pixel share."""
  height, width = images.shape[1], images.shape[2]
  (y0, y1, x0, x1), lam = cutmix_box(seed, height, width)
  ys = tf.range(height)[:, None]
  xs = tf.range(width)[None, :]
  inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)  # [H, W]
  images = tf.cast(images, tf.float32)
  mixed = tf.where(inside[None, :, :, None], tf.reverse(images, axis=[0]), images)
  mixed_labels = lam * labels + (1.0 - lam) * tf.reverse(labels, axis=[0])
  return mixed, mixed_labels, tf.fill([tf.shape(images)[0]], lam)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, mixup_alpha: float,
              use_cutmix: bool):
  """The recipe's arrangement. Both on: first half MixUp, second half CutMix; one on: all of it.

  ``labels`` are float one-hot [B, K]. Returns (images float32, mixed labels).
  """
  images = tf.cast(images, tf.float32)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  if mixup_alpha and use_cutmix:
    half = images.shape[0] // 2
    if half is None:
      raise ValueError("mix_batch needs a static batch size.")
    mi, ml, _ = mixup(images[:half], labels[:half], seeds[0], mixup_alpha)
    ci, cl, _ = cutmix(images[half:], labels[half:], seeds[1])
    return tf.concat([mi, ci], 0), tf.concat([ml, cl], 0)
  if mixup_alpha:
    mi, ml, _ = mixup(images, labels, seeds[0], mixup_alpha)
    return mi, ml
  if use_cutmix:
    ci, cl, _ = cutmix(images, labels, seeds[1])
    return ci, cl
  return images, labels
