"""Issue 15: the CPU fast paths and the inference fold give the faithful model's numbers."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import layers, models


def _forward(impl, **kw):
  def fwd(x, is_training):
    return models.create("nfnet_f0", 10, width=0.25, group_width=16, grouped_conv_impl=impl,
                         **kw)(x, is_training=is_training)
  return hk.transform_with_state(fwd)


def _params(f, x):
  params, state = f.init(jax.random.PRNGKey(0), x, True)
  # Move gains, biases and skip gains off their init so every term is exercised.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  return jax.tree.unflatten(tree, leaves), state


@pytest.mark.parametrize("weight_std", ["deepmind", "timm"])
def test_folded_eval_logits_equal_faithful(weight_std):
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 64, 3))
  native = _forward("native", weight_std=weight_std)
  params, state = _params(native, x)
  ref = native.apply(params, state, None, x, False)[0]["logits"]
  for impl in ("native", "split"):
    f = _forward(impl, weight_std=weight_std)
    per_block = models.unstack_blocks(params)  # the fold names each block's kernels
    folded = layers.fold_weight_standardization(f, per_block, state, x[:1, :32, :32])
    assert jax.tree.structure(folded) == jax.tree.structure(per_block)
    with layers.folded_weights():
      got = jax.jit(lambda p, s, x, f=f: f.apply(p, s, None, x, False)[0]["logits"])(
          folded, state, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref))))
  # Outside the context the model standardizes again (the fold is explicit, never implicit).
  plain = native.apply(params, state, None, x, False)[0]["logits"]
  np.testing.assert_allclose(plain, ref, rtol=0, atol=0)


def test_fast_train_gradients_equal_faithful():
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 64, 3))
  native, split = _forward("native"), _forward("split")
  params, state = _params(native, x)
  rng = jax.random.PRNGKey(5)

  def loss(f):
    return lambda p: jnp.sum(jnp.sin(f.apply(p, state, rng, x, True)[0]["logits"]))

  (ln, gn), (ls, gs) = (jax.value_and_grad(loss(f))(params) for f in (native, split))
  np.testing.assert_allclose(ls, ln, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gs), jax.tree.leaves(gn)):
    scale = float(jnp.max(jnp.abs(b))) or 1.0
    # Each tensor divided by its largest |entry|, then 1e-5. The scalar skip-gain gradients are
    # single sums of ~1e5 products with cancellation: a different (equally valid) summation
    # order moves them by up to ~3e-5 relative in float32, so they get 1e-4.
    tol = 1e-4 if b.ndim == 0 else 1e-5
    np.testing.assert_allclose(a / scale, b / scale, rtol=tol, atol=tol, err_msg=str(path))
