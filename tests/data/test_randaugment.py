"""Each RandAugment op on synthetic images against its definition."""
import numpy as np
import pytest
import tensorflow as tf

from nfnets_jax.data import randaugment as ra

RNG = np.random.RandomState(0)
IMG = RNG.randint(0, 256, size=(9, 9, 3)).astype(np.float32)  # odd side: exact centre pixel


def run(fn, *args):
  return np.asarray(fn(tf.constant(IMG), *args))


def test_op_list_has_sixteen_distinct_ops():
  assert len(ra.OP_NAMES) == 16 and len(set(ra.OP_NAMES)) == 16


def test_invert_and_invert_twice_is_identity():
  np.testing.assert_array_equal(run(ra.invert), 255 - IMG)
  np.testing.assert_array_equal(np.asarray(ra.invert(ra.invert(tf.constant(IMG)))), IMG)


def test_solarize_flips_pixels_at_or_above_threshold():
  out = run(ra.solarize, 100.0)
  np.testing.assert_array_equal(out, np.where(IMG >= 100, 255 - IMG, IMG))
  np.testing.assert_array_equal(run(ra.solarize, 256.0), IMG)  # magnitude 0: identity


def test_solarize_add_adds_below_threshold_only():
  out = run(ra.solarize_add, 50.0)
  np.testing.assert_array_equal(out, np.where(IMG < 128, np.minimum(IMG + 50, 255), IMG))


def test_posterize_keeps_top_bits():
  out = run(ra.posterize, 3)
  np.testing.assert_array_equal(out, (IMG.astype(np.uint8) & 0b11100000).astype(np.float32))
  np.testing.assert_array_equal(run(ra.posterize, 8), IMG)


def test_autocontrast_stretches_each_channel_to_full_range():
  img = IMG * 0.5 + 20  # range [20, 147.5]
  out = np.asarray(ra.autocontrast(tf.constant(img)))
  lo, hi = img.min((0, 1)), img.max((0, 1))
  np.testing.assert_allclose(out, (img - lo) * 255 / (hi - lo), rtol=1e-5, atol=1e-3)
  const = np.full((4, 4, 3), 77.0, np.float32)
  np.testing.assert_array_equal(np.asarray(ra.autocontrast(tf.constant(const))), const)


def test_equalize_matches_hand_computed_lut():
  # One channel with 10 pixels of 10, 10 of 20, 20 of 30 (PIL's algorithm):
  # step = (40 - 20) // 255 = 0 -> identity. Use 600 pixels to get a non-zero step.
  values = np.array([10] * 300 + [20] * 300 + [30] * 600, np.float32).reshape(30, 40, 1)
  out = np.asarray(ra.equalize(tf.constant(values)))
  # step = (1200 - 600) // 255 = 2; lut[v] = (cumsum before v + 1) // 2.
  expected = {10: 0, 20: (300 + 1) // 2, 30: (600 + 1) // 2}
  expected = {k: min(v, 255) for k, v in expected.items()}
  for v, e in expected.items():
    assert np.all(out[values == v] == e), (v, np.unique(out[values == v]), e)
  # A uniform histogram (each value once) is left unchanged.
  ramp = np.arange(256, dtype=np.float32).reshape(16, 16, 1)
  np.testing.assert_array_equal(np.asarray(ra.equalize(tf.constant(ramp))), ramp)


def gray(img):
  return (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def test_color_factor_zero_is_grayscale_one_is_identity():
  np.testing.assert_allclose(run(ra.color, 0.0), np.repeat(gray(IMG), 3, -1), atol=1e-3)
  np.testing.assert_allclose(run(ra.color, 1.0), IMG, atol=1e-4)
  np.testing.assert_allclose(run(ra.color, 1.5),
                             np.clip(gray(IMG) + 1.5 * (IMG - gray(IMG)), 0, 255), atol=1e-3)


def test_contrast_blends_with_mean_luma():
  mean = gray(IMG).mean()
  np.testing.assert_allclose(run(ra.contrast, 0.0), np.full_like(IMG, mean), atol=1e-3)
  np.testing.assert_allclose(run(ra.contrast, 0.5), np.clip(mean + 0.5 * (IMG - mean), 0, 255),
                             atol=1e-3)


def test_brightness_scales_and_clips():
  np.testing.assert_allclose(run(ra.brightness, 1.7), np.clip(IMG * 1.7, 0, 255), atol=1e-3)


def test_sharpness_degenerate_is_smoothed_interior_with_original_border():
  out = run(ra.sharpness, 0.0)
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float64) / 13
  for y in range(1, 8):
    for x in range(1, 8):
      expected = np.round((IMG[y - 1:y + 2, x - 1:x + 2] * kernel[..., None]).sum((0, 1)))
      np.testing.assert_allclose(out[y, x], expected, atol=1e-3)
  np.testing.assert_array_equal(out[0], IMG[0])
  np.testing.assert_array_equal(out[:, -1], IMG[:, -1])
  np.testing.assert_allclose(run(ra.sharpness, 1.0), IMG, atol=1e-4)


def test_rotate_zero_is_identity_and_ninety_is_rot90():
  np.testing.assert_array_equal(run(ra.rotate, 0.0), IMG)
  np.testing.assert_array_equal(run(ra.rotate, 90.0), np.rot90(IMG, k=1, axes=(0, 1)))
  np.testing.assert_array_equal(run(ra.rotate, 180.0), IMG[::-1, ::-1])


def test_shear_x_definition():
  np.testing.assert_array_equal(run(ra.shear_x, 0.0), IMG)
  out = run(ra.shear_x, 0.5)
  for y in range(9):
    for x in range(9):
      src = int(np.floor(x + 0.5 * y + 0.5))  # nearest, halves rounded up
      exp = IMG[y, src] if src < 9 else np.full(3, ra.FILL_VALUE)
      np.testing.assert_array_equal(out[y, x], exp, err_msg=f"{y},{x}")


def test_shear_y_definition():
  out = run(ra.shear_y, -1.0)
  for y in range(9):
    for x in range(9):
      sy = y - x
      exp = IMG[sy, x] if sy >= 0 else np.full(3, ra.FILL_VALUE)
      np.testing.assert_array_equal(out[y, x], exp)


def test_translate_x_and_y_shift_content_and_fill():
  out = run(ra.translate_x, 3.0)
  np.testing.assert_array_equal(out[:, 3:], IMG[:, :-3])
  assert np.all(out[:, :3] == ra.FILL_VALUE)
  out = run(ra.translate_y, -2.0)
  np.testing.assert_array_equal(out[:-2], IMG[2:])
  assert np.all(out[-2:] == ra.FILL_VALUE)
  np.testing.assert_array_equal(run(ra.translate_x, 0.0), IMG)


def test_cutout_fills_exactly_the_square():
  out = run(ra.cutout, 4, 3, 2)
  mask = np.zeros((9, 9), bool)
  mask[2:6, 1:5] = True
  assert np.all(out[mask] == ra.FILL_VALUE)
  np.testing.assert_array_equal(out[~mask], IMG[~mask])
  out = run(ra.cutout, 0, 0, 2)  # clipped at the corner: 2 x 2 pixels
  assert np.sum(np.all(out == ra.FILL_VALUE, -1) & np.any(IMG != ra.FILL_VALUE, -1)) == 4


@pytest.mark.parametrize("op", range(16))
def test_every_op_through_apply_op_keeps_shape_and_range(op):
  out = np.asarray(ra.apply_op(tf.constant(IMG), op, 5.0, tf.constant([1, 2], tf.int64)))
  assert out.shape == IMG.shape and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 255


def test_apply_op_magnitude_zero_is_identity_for_magnitude_ops():
  seed = tf.constant([3, 4], tf.int64)
  identity_ops = [i for i, n in enumerate(ra.OP_NAMES)
                  if n not in ("AutoContrast", "Equalize", "Invert")]
  for op in identity_ops:
    out = np.asarray(ra.apply_op(tf.constant(IMG), op, 0.0, seed))
    np.testing.assert_allclose(out, IMG, atol=1e-3, err_msg=ra.OP_NAMES[op])


def test_randaugment_deterministic_per_seed_and_grayscale_ok():
  seed = tf.constant([5, 6], tf.int64)
  a = np.asarray(ra.randaugment(tf.constant(IMG), seed, 3, 9.0))
  b = np.asarray(ra.randaugment(tf.constant(IMG), seed, 3, 9.0))
  np.testing.assert_array_equal(a, b)
  g = np.asarray(ra.randaugment(tf.constant(IMG[..., :1]), seed, 4, 9.0))
  assert g.shape == (9, 9, 1) and 0 <= g.min() and g.max() <= 255
  with pytest.raises(ValueError, match="magnitude"):
    ra.randaugment(tf.constant(IMG), seed, 1, 11.0)


def test_fast_forms_equal_the_definitions_on_fractional_images():
  # After MixUp pixels are fractional; thresholds, 0 and 255 themselves included.
  x = np.concatenate([[0.0, 255.0, 128.0, 127.99, 128.01, 25.6, 230.4], RNG.uniform(0, 255, 500)])
  x = x.astype(np.float32).reshape(13, 13, 3)
  t = tf.constant(x)
  for thr in (0.0, 25.6, 128.0, 230.4, 256.0):
    np.testing.assert_array_equal(ra.solarize(t, thr), np.where(x >= thr, 255 - x, x))
  for add in (0.0, 55.0, 110.0):
    np.testing.assert_array_equal(ra.solarize_add(t, add),
                                  np.where(x < 128, np.clip(x + add, 0, 255), x))
  for bits in (4, 6, 8):
    keep = (0xFF << (8 - bits)) & 0xFF
    np.testing.assert_array_equal(ra.posterize(t, bits),
                                  (np.clip(np.round(x), 0, 255).astype(np.uint8) & keep))
  lo, hi = x.min((0, 1)), x.max((0, 1))
  np.testing.assert_allclose(ra.autocontrast(t), np.clip((x - lo) * (255 / (hi - lo)), 0, 255),
                             rtol=1e-6, atol=1e-4)
  mean = gray(x).mean()
  np.testing.assert_allclose(ra.contrast(t, 1.45), np.clip(mean + 1.45 * (x - mean), 0, 255),
                             rtol=1e-5, atol=1e-3)
