"""Tests for nfnets_jax.layers against section 1 of the facts."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import layers

FACT_GAMMAS = {
    "gelu": 1.7015043497085571, "relu": 1.7139588594436646, "silu": 1.7881293296813965,
    "elu": 1.2716004848480225, "celu": 1.270926833152771, "selu": 1.0008515119552612,
    "leaky_relu": 1.70590341091156, "relu6": 1.7131484746932983, "tanh": 1.5939117670059204,
    "sigmoid": 4.803835391998291, "softplus": 1.9203323125839233,
    "soft_sign": 2.338853120803833, "log_sigmoid": 1.9193484783172607,
    "glu": 1.8484294414520264, "identity": 1.0,
}


def test_gamma_table_matches_facts():
  assert layers.ACTIVATION_GAMMAS == FACT_GAMMAS


@pytest.mark.parametrize("name", sorted(FACT_GAMMAS))
def test_scaled_activation_has_unit_variance(name):
  # 2M samples: the std error of the sample variance is ~0.1%; tolerance 1%.
  z = jax.random.normal(jax.random.PRNGKey(0), (2_000_000, 2), jnp.float32)
  y = layers.scaled_activation(name)(z)
  np.testing.assert_allclose(float(jnp.var(y)), 1.0, atol=0.01)


def test_gelu_is_tanh_approximation():
  x = jnp.linspace(-4, 4, 101)
  y = layers.raw_activation("gelu")(x)
  np.testing.assert_allclose(y, jax.nn.gelu(x, approximate=True), rtol=0, atol=0)
  assert float(jnp.max(jnp.abs(y - jax.nn.gelu(x, approximate=False)))) > 1e-4


def test_unknown_activation_lists_known():
  with pytest.raises(ValueError, match="known"):
    layers.scaled_activation("mish2")


def _conv(x, **kw):
  return layers.WSConv2D(**kw)(x)


def test_wsconv_params_and_standardization():
  f = hk.transform(lambda x: _conv(x, output_channels=8, kernel_shape=3, name="c"))
  x = jnp.ones((2, 9, 9, 4))
  params = f.init(jax.random.PRNGKey(1), x)
  assert list(params["c"]) == ["w", "gain", "bias"]
  assert params["c"]["w"].shape == (3, 3, 4, 8)
  np.testing.assert_array_equal(params["c"]["gain"], np.ones(8))
  np.testing.assert_array_equal(params["c"]["bias"], np.zeros(8))
  w_hat = layers.standardize_weight(params["c"]["w"], params["c"]["gain"])
  fan_in = 3 * 3 * 4
  np.testing.assert_allclose(np.mean(w_hat, axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.var(w_hat, axis=(0, 1, 2)), 1.0 / fan_in, rtol=1e-4)


def test_wsconv_init_is_untruncated_fan_in_normal():
  f = hk.transform(lambda x: _conv(x, output_channels=256, kernel_shape=3, name="c"))
  w = f.init(jax.random.PRNGKey(2), jnp.ones((1, 5, 5, 64)))["c"]["w"]
  fan_in = 3 * 3 * 64
  np.testing.assert_allclose(np.std(w), 1 / np.sqrt(fan_in), rtol=0.02)
  # A truncated normal at 2 std would have no samples beyond 2/sqrt(fan_in).
  assert np.max(np.abs(w)) > 3 / np.sqrt(fan_in)


def test_standardize_eps_is_a_floor():
  w = jnp.zeros((1, 1, 2, 3)).at[0, 0, 0, :].set(1e-5)
  gain = jnp.ones(3)
  w_hat = layers.standardize_weight(w, gain, eps=1e-4)
  mean = 0.5e-5
  expected = (np.asarray(w) - mean) / np.sqrt(1e-4)
  np.testing.assert_allclose(w_hat, expected, rtol=1e-5)


def test_wsconv_same_padding_stride2_even_input():
  f = hk.transform(lambda x: _conv(x, output_channels=2, kernel_shape=3, stride=2, name="c"))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 3))
  p = f.init(jax.random.PRNGKey(0), x)
  y = f.apply(p, None, x)
  assert y.shape == (1, 4, 4, 2)
  w_hat = layers.standardize_weight(p["c"]["w"], p["c"]["gain"])
  # XLA SAME for k=3, s=2 on 8: total pad 1, all of it bottom/right.
  ref = jax.lax.conv_general_dilated(x, w_hat, (2, 2), ((0, 1), (0, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_split_grouped_conv_matches_native(stride):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 12))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 6))
  a = layers.conv2d(x, w, stride, "SAME", groups=3, impl="native")
  b = layers.conv2d(x, w, stride, "SAME", groups=3, impl="split")
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  ga = jax.grad(lambda w: jnp.sum(layers.conv2d(x, w, stride, "SAME", 3, "native") ** 2))(w)
  gb = jax.grad(lambda w: jnp.sum(layers.conv2d(x, w, stride, "SAME", 3, "split") ** 2))(w)
  np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-4)


def test_squeeze_excite_shapes_and_names():
  f = hk.transform(lambda x: layers.SqueezeExcite(16, 16, se_ratio=0.5, name="se")(x))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 16))
  p = f.init(jax.random.PRNGKey(0), x)
  assert p["se/~/linear"]["w"].shape == (16, 8)
  assert p["se/~/linear_1"]["w"].shape == (8, 16)
  g = f.apply(p, None, x)
  assert g.shape == (2, 1, 1, 16)
  assert float(g.min()) > 0 and float(g.max()) < 1


def test_stochastic_depth_drops_whole_examples_without_rescale():
  x = jnp.ones((4096, 3, 3, 2))
  y = layers.stochastic_depth(x, 0.25, True, rng=jax.random.PRNGKey(0))
  per_example = np.asarray(y).reshape(4096, -1)
  # Every example is entirely 0 or entirely 1 (no 1/keep rescale).
  assert set(np.unique(per_example)) <= {0.0, 1.0}
  assert np.all(per_example.min(1) == per_example.max(1))
  np.testing.assert_allclose(per_example[:, 0].mean(), 0.75, atol=0.03)
  # Eval is the identity.
  np.testing.assert_array_equal(layers.stochastic_depth(x, 0.25, False), x)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 3), (3, 1, 1, 5), (1, 5, 4, 2)])
def test_avg_pool_2x2_same_matches_haiku(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  want = hk.avg_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
  np.testing.assert_allclose(layers.avg_pool_2x2_same(x), want, rtol=1e-6, atol=1e-6)


def test_avg_pool_2x2_same_large_1x1_input():
  # XLA:CPU's SAME reduce_window is wrong here (batch x channels >= 4096); ours is exact.
  x = jax.random.normal(jax.random.PRNGKey(0), (24, 1, 1, 192))
  np.testing.assert_allclose(layers.avg_pool_2x2_same(x), x, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# CPU fast paths (issue 15): each must equal the faithful path.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((0, 0), (0, 0))])
def test_pointwise_conv_as_matmul_matches_native(padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 16, 24)) * 0.2
  f = lambda impl: (lambda x, w: jnp.sum(jnp.sin(layers.conv2d(x, w, 1, padding, 1, impl))))
  np.testing.assert_allclose(layers.conv2d(x, w, 1, padding, 1, "split"),
                             layers.conv2d(x, w, 1, padding, 1, "native"), rtol=1e-5, atol=1e-5)
  gs = jax.grad(f("split"), argnums=(0, 1))(x, w)
  gn = jax.grad(f("native"), argnums=(0, 1))(x, w)
  for a, b in zip(gs, gn):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The matmul path is taken exactly for 1x1 stride-1 unpadded convs.
  jaxpr = str(jax.make_jaxpr(lambda x, w: layers.conv2d(x, w, 1, padding, 1, "split"))(x, w))
  assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda x, w: layers.conv2d(x, w, 2, padding, 1, "split"))(x, w))
  assert "conv_general_dilated" in jaxpr


@pytest.mark.parametrize("eps_mode,eps", [("floor", 1e-4), ("add", 1e-5)])
@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (1, 1, 32, 8)])
def test_standardize_weight_fast_matches_autodiff(eps_mode, eps, shape):
  w = jax.random.normal(jax.random.PRNGKey(0), shape) * 0.3
  gain = 1.0 + 0.2 * jax.random.normal(jax.random.PRNGKey(1), shape[-1:])
  ct = jax.random.normal(jax.random.PRNGKey(2), shape)
  np.testing.assert_allclose(layers.standardize_weight_fast(w, gain, eps, eps_mode),
                             layers.standardize_weight(w, gain, eps, eps_mode), rtol=1e-5,
                             atol=1e-6)
  loss = lambda f: (lambda w, g: jnp.sum(f(w, g, eps, eps_mode) * ct))
  fast = jax.grad(loss(layers.standardize_weight_fast), argnums=(0, 1))(w, gain)
  ref = jax.grad(loss(layers.standardize_weight), argnums=(0, 1))(w, gain)
  for a, b in zip(fast, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_standardize_weight_fast_eps_floor_active():
  # A (near-)constant filter has var * fan_in under the floor: scale is constant, no grad via var.
  w = jnp.concatenate([jnp.full((1, 1, 4, 1), 0.5) + 1e-4 * jnp.arange(4.).reshape(1, 1, 4, 1),
                       jax.random.normal(jax.random.PRNGKey(0), (1, 1, 4, 1))], axis=-1)
  gain = jnp.array([1.5, 0.7])
  ct = jax.random.normal(jax.random.PRNGKey(3), w.shape)
  loss = lambda f: (lambda w, g: jnp.sum(f(w, g) * ct))
  fast = jax.grad(loss(layers.standardize_weight_fast), argnums=(0, 1))(w, gain)
  ref = jax.grad(loss(layers.standardize_weight), argnums=(0, 1))(w, gain)
  # Floored channel: the faithful `w * scale - mean * scale` cancels (w ~ 0.5, scale = 100), so
  # compare at 1e-5 of each gradient's largest entry.
  for a, b in zip(fast, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
