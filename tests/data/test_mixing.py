"""MixUp / CutMix: labels sum to 1 and follow the mixed pixel share."""
import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax.data import mixing

B, H, W, K = 8, 12, 10, 5


def constant_batch():
  """Example i is the constant image i + 1; label i % K (one-hot)."""
  images = np.broadcast_to(np.arange(1, B + 1, dtype=np.float32)[:, None, None, None],
                           (B, H, W, 3)).copy()
  labels = np.eye(K, dtype=np.float32)[np.arange(B) % K]
  return images, labels


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_ratio_equals_pixel_fraction(seed):
  images, labels = constant_batch()
  out, mixed, lam = mixing.cutmix(tf.constant(images), tf.constant(labels),
                                  tf.constant([seed, 7], tf.int64))
  out, mixed, lam = np.asarray(out), np.asarray(mixed), np.asarray(lam)
  for i in range(B):
    partner = B - 1 - i
    own_share = np.mean(out[i, :, :, 0] == i + 1) if partner != i else 1.0
    np.testing.assert_allclose(lam[i], own_share, atol=1e-6)
    np.testing.assert_allclose(mixed[i], lam[i] * labels[i] + (1 - lam[i]) * labels[partner],
                               atol=1e-6)
    assert set(np.unique(out[i])) <= {i + 1, partner + 1}
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)


def test_mixup_blends_images_and_labels_with_one_ratio():
  images, labels = constant_batch()
  out, mixed, lam = mixing.mixup(tf.constant(images), tf.constant(labels),
                                 tf.constant([1, 2], tf.int64), 0.2)
  out, mixed, lam = np.asarray(out), np.asarray(mixed), np.asarray(lam)
  assert np.all(lam == lam[0]) and 0 <= lam[0] <= 1
  for i in range(B):
    p = B - 1 - i
    np.testing.assert_allclose(out[i], lam[i] * (i + 1) + (1 - lam[i]) * (p + 1), rtol=1e-5)
    np.testing.assert_allclose(mixed[i], lam[i] * labels[i] + (1 - lam[i]) * labels[p],
                               atol=1e-6)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)


def test_beta_samples_have_beta_mean_and_variance():
  x = np.asarray(mixing.sample_beta(tf.constant([0, 1], tf.int64), 0.2, shape=(20000,)))
  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 1/5.6 for a = 0.2.
  assert abs(x.mean() - 0.5) < 0.02
  assert abs(x.var() - 1 / 5.6) < 0.01


def test_mix_batch_halves_mixup_then_cutmix():
  images, labels = constant_batch()
  out, mixed = mixing.mix_batch(tf.constant(images), tf.constant(labels),
                                tf.constant([3, 3], tf.int64), 0.2, True)
  out, mixed = np.asarray(out), np.asarray(mixed)
  np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
  # First half: constant images (MixUp of constants within the half: partners 3-i).
  for i in range(B // 2):
    assert np.ptp(out[i]) < 1e-5
    assert out[i, 0, 0, 0] >= 1 - 1e-5 and out[i, 0, 0, 0] <= B // 2 + 1e-5
  # Second half: only values from the second half (CutMix partners stay in their half).
  assert set(np.unique(out[B // 2:])) <= set(range(B // 2 + 1, B + 1))
  out, mixed = mixing.mix_batch(tf.constant(images), tf.constant(labels),
                                tf.constant([3, 3], tf.int64), 0.0, False)
  np.testing.assert_array_equal(np.asarray(out), images)
  np.testing.assert_array_equal(np.asarray(mixed), labels)


def test_cutmix_boxes_are_not_degenerate():
  images, labels = constant_batch()
  lams = [float(np.asarray(mixing.cutmix(tf.constant(images), tf.constant(labels),
                                         tf.constant([s, 7], tf.int64))[2])[0])
          for s in range(6)]
  assert any(0.05 < lam < 0.95 for lam in lams), lams
