"""Crops, resizes, flips and normalization on synthetic images with known content."""
import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax.data import preprocessing as pp


def ramp(h, w, a=1.0, b=100.0):
  """I(y, x) = a * y + b * x: bicubic (Keys) resampling reproduces it exactly inside."""
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.repeat((a * y + b * x)[..., None], 3, -1).astype(np.float32)


def test_resize_crop_32_identity_resize_then_offset_16():
  s = 24
  img = ramp(s + 32, s + 32)
  out = np.asarray(pp.resize_crop_32(tf.constant(img), s, 3))
  assert out.shape == (s, s, 3)
  np.testing.assert_allclose(out, img[16:16 + s, 16:16 + s], atol=1e-2)


def test_resize_crop_32_ignores_aspect_and_crops_centre():
  s, h, w = 16, 120, 60  # resized to 48 x 48: scale 2.5 in y, 1.25 in x
  img = ramp(h, w, a=1.0, b=3.0)
  out = np.asarray(pp.resize_crop_32(tf.constant(img), s, 3))
  assert out.shape == (s, s, 3)
  i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
  y = (i + 16 + 0.5) * h / (s + 32) - 0.5  # half-pixel centres of the (s+32)^2 grid
  x = (j + 16 + 0.5) * w / (s + 32) - 0.5
  np.testing.assert_allclose(out[..., 0], 1.0 * y + 3.0 * x, atol=1e-2)


def test_resize_crop_32_on_encoded_jpeg_has_right_shape():
  img = np.zeros((50, 70, 3), np.uint8)
  enc = tf.io.encode_jpeg(img)
  out = pp.resize_crop_32(enc, 20, 3)
  assert out.shape == (20, 20, 3) and out.dtype == tf.float32


def test_crop_resize_takes_centre_crop_pct_of_short_side():
  img = ramp(40, 80)
  out = np.asarray(pp.crop_resize(tf.constant(img), 20, 3, crop_pct=0.5))
  # crop 20 x 20 at (10, 30), resized 20 -> 20 (identity).
  np.testing.assert_allclose(out, img[10:30, 30:50], atol=1e-2)
  with pytest.raises(ValueError, match="eval_crop_pct"):
    pp.crop_resize(tf.constant(img), 20, 3, crop_pct=1.5)


def test_inception_crop_shape_range_determinism_and_area():
  img = tf.constant(np.random.RandomState(0).randint(0, 256, (64, 96, 3)).astype(np.uint8))
  seed = tf.constant([4, 2], tf.int64)
  a = np.asarray(pp.inception_crop(img, seed, 32, 3))
  b = np.asarray(pp.inception_crop(tf.io.encode_jpeg(img), seed, 32, 3))
  assert a.shape == b.shape == (32, 32, 3)
  assert a.min() >= 0 and a.max() <= 255
  np.testing.assert_array_equal(a, np.asarray(pp.inception_crop(img, seed, 32, 3)))


def test_inception_crop_falls_back_to_centre_crop():
  # 4 x 200: no window of aspect 3/4..4/3 covers >= 8% (64 px), so all 10 tries fail and the
  # centre crop of int(8 / 40 * 4) -> 1 px at (2, 100) is used: a constant image of I(2, 100).
  img = np.repeat(np.broadcast_to(np.arange(200, dtype=np.float32), (4, 200))[..., None], 3, -1)
  assert [int(v) for v in pp.center_crop_window(4, 200, 8)] == [2, 100, 1, 1]
  for s in range(3):
    out = np.asarray(pp.inception_crop(tf.constant(img), tf.constant([s, 0], tf.int64), 8, 3))
    np.testing.assert_allclose(out, 100.0, atol=1e-3)


def test_pad_crop_batch_windows_are_shifted_copies():
  imgs = np.stack([ramp(6, 6, 1, 10) + 1 + 1000 * k for k in range(5)])
  out = np.asarray(pp.pad_crop_batch(tf.constant(imgs), tf.constant([1, 1], tf.int64), 2,
                                     "constant"))
  padded = np.pad(imgs, [(0, 0), (2, 2), (2, 2), (0, 0)])
  for k in range(5):
    matches = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(out[k], padded[k, dy:dy + 6, dx:dx + 6])]
    assert len(matches) == 1
  out = np.asarray(pp.pad_crop_batch(tf.constant(imgs), tf.constant([1, 1], tf.int64), 2))
  assert out.min() >= 1  # reflect padding never introduces zeros


def test_flip_batch_flips_about_half():
  imgs = np.stack([ramp(4, 5)] * 200)
  out = np.asarray(pp.flip_batch(tf.constant(imgs), tf.constant([0, 9], tf.int64)))
  flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, imgs)])
  same = np.array([np.array_equal(o, i) for o, i in zip(out, imgs)])
  assert np.all(flipped ^ same) and 70 < flipped.sum() < 130


def test_normalization_constants_and_errors():
  mean, std = pp.normalization_constants("imagenet", "imagenet2012", 3)
  np.testing.assert_allclose(mean, [123.675, 116.28, 103.53])
  np.testing.assert_allclose(std, [58.395, 57.12, 57.375])
  mean, std = pp.normalization_constants("dataset", "fashion_mnist", 1)
  np.testing.assert_allclose([mean[0] / 255, std[0] / 255], [0.2860, 0.3530], atol=1e-4)
  for name in ("cifar10", "cifar100", "imagenette", "mnist"):
    assert name in pp.NORMALIZATION
  assert pp.normalization_constants("none", "x", 3) is None
  with pytest.raises(ValueError, match="channel"):
    pp.normalization_constants("imagenet", "fashion_mnist", 1)
  with pytest.raises(ValueError, match="no mean/std"):
    pp.normalization_constants("dataset", "svhn_cropped", 3)
  out = np.asarray(pp.normalize(tf.constant(np.full((2, 2, 1), 72.94035223214286)), mean, std))
  np.testing.assert_allclose(out, 0.0, atol=1e-5)
