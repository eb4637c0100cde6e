"""The quickstart's small NF model (``nf_demo``): parameter count by hand, names, AGC masks."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax.optim import agc
from nfnets_jax import models


def _init(name, image_shape=(28, 28, 1), num_classes=10, **kwargs):
  f = hk.transform_with_state(lambda x, t: models.create(name, num_classes, **kwargs)(x, t))
  x = jnp.zeros((2,) + image_shape)
  params, state = f.init(jax.random.PRNGKey(0), x, True)
  return f, params, state


def _hand_count(widths, depths, stem, in_ch=1, num_classes=10):
  ws = lambda k, i, o: k * k * i * o + 2 * o  # w + gain + bias
  total = ws(3, in_ch, stem)
  prev = stem
  for w, d in zip(widths, depths):
    total += ws(3, prev, w) + ws(3, w, w) + ws(1, prev, w) + 1  # conv0, conv1, shortcut, gain
    total += (d - 1) * (2 * ws(3, w, w) + 1)  # later blocks: no shortcut conv
    prev = w
  return total + prev * num_classes + num_classes


def test_parameter_count_and_names():
  f, params, state = _init("nf_demo")
  assert state == {}
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == _hand_count((32, 64, 128), (1, 2, 1), 16) == 377854
  assert params["NFDemo/~/nf_block_1"]["skip_gain"].shape == ()
  assert float(params["NFDemo/~/nf_block_1"]["skip_gain"]) == 0.0
  # Only the first block of a stage projects its shortcut.
  assert "NFDemo/~/nf_block_1/~/conv_shortcut" in params
  assert "NFDemo/~/nf_block_2/~/conv_shortcut" not in params
  assert params["NFDemo/~/nf_block_3/~/conv1"]["w"].shape == (3, 3, 128, 128)
  out, _ = f.apply(params, state, None, jnp.ones((3, 28, 28, 1)), False)
  assert out["logits"].shape == (3, 10) and out["pool"].shape == (3, 128)
  _, tiny, _ = _init("nf_demo_tiny")
  assert sum(x.size for x in jax.tree.leaves(tiny)) == _hand_count((8, 16), (1, 1), 8) == 5204


def test_agc_reference_preset_excludes_only_the_classifier_weight():
  _, params, _ = _init("nf_demo")
  assert agc.find_classifier(params) == "NFDemo/~/linear"
  mask = agc.exclusion_mask(params, "reference")
  excluded = [p for p, keep in zip(agc.param_paths(params), jax.tree.leaves(mask)) if not keep]
  assert excluded == ["NFDemo/~/linear/w"]


def test_skip_init_blocks_are_identity_at_init():
  # skip_gain = 0: every residual block returns its shortcut, so the net is stem -> projections.
  f, params, state = _init("nf_demo", stochdepth_rate=0.5, drop_rate=0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  train_a, _ = f.apply(params, state, jax.random.PRNGKey(2), x, True)
  train_b, _ = f.apply(params, state, jax.random.PRNGKey(3), x, True)
  evals, _ = f.apply(params, state, None, x, False)
  # Stochastic depth only scales the (zero) branch; only dropout differs between keys.
  np.testing.assert_allclose(train_a["pool"], evals["pool"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(train_b["pool"], evals["pool"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(train_a["logits"], train_b["logits"])
