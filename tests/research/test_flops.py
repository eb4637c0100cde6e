"""The MAC counter: hand-computed small models and the published NFNet figures."""
import haiku as hk
import jax
import pytest

from nfnets_jax import layers
from nfnets_jax.research import flops
from nfnets_jax.models import nfnet


def test_hand_computed_model():
  def fn(x):
    x = layers.WSConv2D(8, 3, stride=2)(x)                        # 16x16 -> 8x8
    x = hk.Conv2D(16, 3, feature_group_count=4, with_bias=False)(x)  # 8x8, grouped
    x = hk.DepthwiseConv2D(1, 3)(x)                               # 8x8, depthwise
    x = jax.numpy.mean(x, axis=(1, 2))
    return hk.Linear(10)(x)
  expected = (8 * 8 * 8 * 3 * 3 * 3          # WSConv2D: out elements * kh*kw*cin
              + 8 * 8 * 16 * 3 * 3 * 8 // 4  # grouped: cin / groups
              + 8 * 8 * 16 * 3 * 3           # depthwise
              + 16 * 10)                     # linear
  assert flops.count_macs(fn, 16) == expected
  assert flops.count_flops(fn, 16) == 2 * expected
  assert flops.count_macs(fn, (16, 16)) == expected


@pytest.mark.parametrize("image_size,gmacs", [(192, 6.98), (256, 12.38)])
def test_published_f0_macs(image_size, gmacs):
  macs = flops.count_macs("nfnet_f0", image_size)
  assert round(macs / 1e9, 2) == gmacs
  # The published figure counts every conv and linear, squeeze-excite included.
  without_se = flops.count_macs(
      "nfnet_f0", image_size, include=lambda m: "squeeze_excite" not in m.module_name)
  assert round(without_se / 1e9, 2) != gmacs


@pytest.mark.slow
@pytest.mark.parametrize("variant,gmacs", [
    ("F1", 35.54), ("F2", 62.59), ("F3", 114.76), ("F4", 215.24), ("F5", 289.76),
    ("F6", 377.28), ("F7", 478.78)])
def test_published_macs_at_test_size(variant, gmacs):
  size = nfnet.NFNET_VARIANTS[variant]["test_image_size"]
  assert round(flops.count_macs("nfnet_" + variant.lower(), size) / 1e9, 2) == gmacs


def test_overrides_reach_the_model():
  # Half the width: roughly a quarter of the MACs (stem and stem-fed layers aside).
  full = flops.count_macs("nfnet_f0", 64)
  half = flops.count_macs("nfnet_f0", 64, width=0.5, group_width=64)
  assert 0.2 < half / full < 0.35
  with pytest.raises(ValueError, match="overrides only apply"):
    flops.count_macs(lambda x: x, 32, width=0.5)
