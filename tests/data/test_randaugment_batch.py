"""Batched RandAugment (data/randaugment_batch.py) equals the per-image one, op by op.

Images are float in [0, 255] with fractional values (as after MixUp), so every rounding and
threshold of the ops is exercised; per-image arguments alternate in sign.
"""
import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax.data import randaugment as ra
from nfnets_jax.data import randaugment_batch as rb

RNG = np.random.RandomState(0)
B = 6
IMGS = RNG.uniform(0, 255, size=(B, 13, 11, 3)).astype(np.float32)
IMGS[0] = np.round(IMGS[0])  # an integer image (JPEG-like)
IMGS[1, :, :, 2] = 77.0  # a constant channel (autocontrast leaves it, equalize too)
SIGNS = np.array([1, -1, 1, -1, -1, 1], np.float32)
CENTRES = RNG.uniform(size=(B, 2)).astype(np.float32)


@pytest.mark.parametrize("op", range(16), ids=ra.OP_NAMES)
def test_each_batched_op_equals_per_image_op(op):
  got = rb.apply_op(tf.constant(IMGS), op, 7.0, tf.constant(SIGNS), tf.constant(CENTRES))
  for i in range(B):
    want = ra.apply_op_with_draws(tf.constant(IMGS[i]), op, 7.0, SIGNS[i], CENTRES[i])
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5, err_msg=ra.OP_NAMES[op])
  empty = rb.apply_op(tf.zeros([0, 13, 11, 3]), op, 7.0, tf.zeros([0]), tf.zeros([0, 2]))
  assert empty.shape == (0, 13, 11, 3)


def test_randaugment_batch_equals_per_image_randaugment():
  n = 40  # 4 layers x 40 images: every op is drawn (checked below)
  imgs = RNG.uniform(0, 255, size=(n, 12, 12, 3)).astype(np.float32)
  keys = tf.constant(np.stack([np.full(n, 123), np.arange(n)], 1), tf.int64)
  ops = rb.draws(keys, 4)[0].numpy()
  assert set(ops.ravel()) == set(range(16))
  got = rb.randaugment_batch(tf.constant(imgs), keys, 4, 5.0).numpy()
  for i in range(n):
    want = ra.randaugment(tf.constant(imgs[i]), keys[i], 4, 5.0).numpy()
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(rb.randaugment_batch(tf.constant(imgs), keys, 0, 5.0), imgs)
  with pytest.raises(ValueError, match="magnitude"):
    rb.randaugment_batch(tf.constant(imgs), keys, 1, 10.5)
