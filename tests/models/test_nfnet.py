"""NFNet F-series: parameter trees and counts, block configuration, behaviour of a tiny model.

Big models are only traced with ``jax.eval_shape``. Behavioural tests use one tiny F0
(width 0.25, group width 32: stages of 64/128/384/384 channels) compiled a few times in all.
"""
import functools
import json
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax import layers
from nfnets_jax import models
from nfnets_jax.models import nfnet

# A copy of shared/reference/nfnet_f0_param_tree.json (DeepMind's released F0 names and shapes),
# kept beside the tests so that a clone on its own can run them.
REFERENCE_TREE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                              "nfnet_f0_param_tree.json")
TINY = dict(variant="F0", width=0.25, group_width=32)
ALPHA = 0.2

# Facts, section 2.
F0_BETAS = [1.0, 0.980581, 0.980581, 0.962250, 0.980581, 0.962250, 0.944911, 0.928477,
            0.912871, 0.898027, 0.980581, 0.962250]


@functools.lru_cache(maxsize=None)
def _param_shapes(variant, num_classes=1000):
  f = hk.transform(lambda x: nfnet.NFNet(num_classes, variant=variant, grouped_conv_impl="native")(
      x, is_training=False))
  return models.unstack_blocks(jax.eval_shape(  # the per-block names of every file
      f.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)))


# ------------------------------------------------------------------------------------------
# Structure (no compilation).
# ------------------------------------------------------------------------------------------
# Tracing the deep variants takes a few seconds each: F4 and deeper run with the slow tests.
_SLOW_VARIANTS = ("F4", "F5", "F6", "F7")


@pytest.mark.parametrize("variant", [
    pytest.param(v, marks=pytest.mark.slow) if v.rstrip("+") in _SLOW_VARIANTS else v
    for v in nfnet.NFNET_VARIANTS])
def test_exact_param_counts(variant):
  assert layers.count_params(_param_shapes(variant)) == nfnet.NFNET_PARAM_COUNTS[variant]


def test_param_count_table_matches_facts():
  assert nfnet.NFNET_PARAM_COUNTS["F0"] == 71_489_284
  assert nfnet.NFNET_PARAM_COUNTS["F7"] == 499_504_088
  assert nfnet.NFNET_PARAM_COUNTS["F0+"] == 118_824_516
  assert nfnet.NFNET_PARAM_COUNTS["F7+"] == 829_551_960


def test_f0_tree_equals_reference_json():
  with open(REFERENCE_TREE) as f:
    reference = json.load(f)
  got = {m: {n: list(a.shape) for n, a in d.items()} for m, d in _param_shapes("F0").items()}
  assert sorted(got) == sorted(reference)
  for module in reference:
    assert got[module] == reference[module], module
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(_param_shapes("F0")))


def test_f0_block_config_matches_facts():
  specs = nfnet.block_config("F0", stochdepth_rate=0.1)
  assert len(specs) == 12
  np.testing.assert_allclose([s.beta for s in specs], F0_BETAS, atol=1e-6)
  np.testing.assert_allclose([s.stochdepth_rate for s in specs],
                             [0.1 * i / 12 for i in range(12)], atol=1e-12)
  assert [s.stride for s in specs] == [1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
  assert [s.out_ch for s in specs] == [256] + [512] * 2 + [1536] * 9
  assert [s.bottleneck_ch for s in specs] == [128] + [256] * 2 + [768] * 9
  assert [s.groups for s in specs] == [1] + [2] * 2 + [6] * 9
  assert nfnet.stem_channels("F0") == 128 and nfnet.stem_channels("F0+") == 192
  # The recipe's rate 0.25 scales every block's rate.
  assert nfnet.block_config("F0", stochdepth_rate=0.25)[6].stochdepth_rate == 0.25 * 6 / 12


def test_model_exposes_its_block_config():
  seen = {}

  def fwd(x):
    model = nfnet.NFNet(10, variant="F1", stochdepth_rate=0.25)
    seen["betas"], seen["rates"] = model.betas, model.stochdepth_rates
    return model(x, is_training=False)
  jax.eval_shape(hk.transform(fwd).init, jax.random.PRNGKey(0),
                 jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  specs = nfnet.block_config("F1", stochdepth_rate=0.25)
  assert seen["betas"] == [s.beta for s in specs]
  assert seen["rates"] == [0.25 * i / 24 for i in range(24)]


def test_width_scales_stages_but_not_the_stem():
  shapes = jax.eval_shape(
      hk.transform(lambda x: nfnet.NFNet(10, **TINY)(x, is_training=False)).init,
      jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  assert shapes["NFNet/~/stem_conv3"]["w"].shape == (3, 3, 64, 128)
  assert shapes["NFNet/~/nf_block"]["skip_gain"].shape == ()
  assert shapes["NFNet/~/nf_block_3/~/conv1"]["w"].shape == (3, 3, 32, 192)  # 6 groups of 32
  assert shapes["NFNet/~/final_conv"]["w"].shape == (1, 1, 384, 768)
  assert shapes["NFNet/~/linear"]["w"].shape == (768, 10)


def test_zero_group_width_raises_clear_error():
  with pytest.raises(ValueError, match=r"stage 0 .* zero groups of group_width=128"):
    nfnet.block_config("F0", width=0.125)
  f = hk.transform(lambda x: nfnet.NFNet(10, width=0.125)(x, is_training=False))
  with pytest.raises(ValueError, match="group_width <= 16"):
    jax.eval_shape(f.init, jax.random.PRNGKey(0),
                   jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  with pytest.raises(ValueError, match="Unknown NFNet variant"):
    nfnet.block_config("F9")


def test_registry_names_and_metadata():
  for i in range(8):
    assert f"nfnet_f{i}" in models.list_models()
    assert f"nfnet_f{i}_plus" in models.list_models()
  f0, f3p = models.get_info("nfnet_f0"), models.get_info("nfnet_f3_plus")
  assert (f0.train_image_size, f0.test_image_size, f0.drop_rate) == (192, 256, 0.2)
  assert (f0.randaugment_layers, f0.randaugment_magnitude) == (4, 5)
  assert (f3p.train_image_size, f3p.test_image_size, f3p.drop_rate) == (320, 416, 0.4)
  assert f3p.kwargs["variant"] == "F3+"
  assert models.get_info("nfnet_f7").randaugment_magnitude == 15
  assert models.get_info("nfnet_f1").randaugment_magnitude == 10


# ------------------------------------------------------------------------------------------
# Behaviour of the tiny model (forward passes only; params drawn in numpy).
# ------------------------------------------------------------------------------------------
def _tiny_forward(x, is_training, return_metrics=False, impl="native", **kw):
  model = nfnet.NFNet(10, grouped_conv_impl=impl, stochdepth_rate=0.0, drop_rate=0.5,
                      **TINY, **kw)
  return model(x, is_training, return_metrics=return_metrics)


def _random_params(transformed, *args, seed=0):
  """Params with the model's names/shapes, drawn in numpy (saves compiling ``init``).

  Conv weights are standardized in every forward pass, so any N(0, s) draw acts like the
  VarianceScaling init; linears follow Haiku's default scale, the classifier N(0, 0.01);
  gains 1, biases 0 and skip_gain 1 (its init, 0, would switch every branch off).
  """
  shapes = jax.eval_shape(lambda rng: transformed.init(rng, *args), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  params = {}
  for module, leaves in shapes.items():
    params[module] = {}
    for name, leaf in leaves.items():
      shape = leaf.shape
      if name in ("gain", "skip_gain"):
        value = np.ones(shape)
      elif name in ("bias", "b"):
        value = np.zeros(shape)
      elif module.endswith("NFNet/~/linear"):
        value = 0.01 * rng.standard_normal(shape)
      elif len(shape) == 2:  # Squeeze-excite linears: fan-in scaling.
        value = rng.standard_normal(shape) / np.sqrt(shape[0])
      else:
        value = rng.standard_normal(shape)
      params[module][name] = jnp.asarray(value, jnp.float32)
  return params


@pytest.fixture(scope="module")
def tiny():
  """Eval (twice, different rngs) and train (twice) of the tiny model on 33x33 input."""
  f = hk.transform(_tiny_forward)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 33, 33, 3))
  params = _random_params(f, x, False)
  apply = jax.jit(f.apply, static_argnums=(3, 4))
  k1, k2 = jax.random.PRNGKey(11), jax.random.PRNGKey(12)
  return dict(x=x, params=params, f=f,
              eval1=apply(params, k1, x, False, True),
              eval2=apply(params, k2, x, False, True),
              train1=apply(params, k1, x, True, False),
              train2=apply(params, k2, x, True, False))


def test_odd_input_size_and_metric_keys(tiny):
  out = tiny["eval1"]
  assert out["logits"].shape == (4, 10) and out["pool"].shape == (4, 768)
  assert np.all(np.isfinite(out["logits"]))
  for i in range(12):
    for key in ("avg_sq_mean", "avg_var", "res_var"):
      value = float(out[f"block_{i}_{key}"])
      assert np.isfinite(value) and value > 0
  assert "stem_avg_var" in out


def test_eval_is_deterministic_and_dropout_only_in_training(tiny):
  params, eval1, eval2 = tiny["params"], tiny["eval1"], tiny["eval2"]
  np.testing.assert_array_equal(eval1["logits"], eval2["logits"])
  # Eval logits are the plain linear of the pooled features: no dropout.
  fc = params["NFNet/~/linear"]
  np.testing.assert_allclose(eval1["logits"], eval1["pool"] @ fc["w"] + fc["b"],
                             rtol=1e-5, atol=1e-6)
  train1, train2 = tiny["train1"], tiny["train2"]
  # stochdepth_rate=0: training changes nothing before the head...
  np.testing.assert_allclose(train1["pool"], eval1["pool"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(train2["pool"], eval1["pool"], rtol=1e-5, atol=1e-6)
  # ... and dropout (rate 0.5) changes the logits, differently per rng.
  assert not np.allclose(train1["logits"], eval1["logits"], atol=1e-4)
  assert not np.allclose(train1["logits"], train2["logits"], atol=1e-4)


def test_split_native_and_bfloat16_agree(tiny):
  f, params, x = tiny["f"], tiny["params"], tiny["x"]
  split = jax.jit(functools.partial(f.apply, impl="split"), static_argnums=(3,))(
      params, None, x, False)["logits"]
  native = tiny["eval1"]["logits"]
  np.testing.assert_allclose(split, native, rtol=1e-5, atol=1e-6)
  params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  bf16 = jax.jit(f.apply, static_argnums=(3,))(
      params16, None, x.astype(jnp.bfloat16), False)["logits"]
  assert bf16.dtype == jnp.bfloat16
  scale = float(np.abs(native).max())
  np.testing.assert_allclose(np.asarray(bf16, np.float32), native, atol=0.1 * scale)


def test_signal_propagation_and_stochastic_depth():
  """Block-output variance resets near 1 per stage and grows by ~alpha^2 per block.

  Input: N(0, 1) features at the stem's output (128 channels). Every block gets the previous
  block's output; before a stride-2 block the features are nearest-upsampled by 2 so the
  2x2 average-pool shortcut sees identical values (on white noise it would quarter the
  variance, which real, spatially smooth images do not). skip_gain is set to 1 (at init it is
  0, which switches every residual branch off).
  """
  def chain(x):
    model = nfnet.NFNet(10, grouped_conv_impl="native", **TINY)
    stats, out = [], x
    for block in model.blocks:
      if block.spec.stride == 2:
        out = jnp.repeat(jnp.repeat(out, 2, axis=1), 2, axis=2)
      in_var = jnp.mean(jnp.var(out, axis=(0, 1, 2)))
      out, res_var = block(out, is_training=False)
      stats.append(jnp.stack([in_var, jnp.mean(jnp.var(out, axis=(0, 1, 2))), res_var]))
    return jnp.stack(stats)

  spec = nfnet.BlockSpec(index=5, stage=0, in_ch=16, out_ch=16, stride=1, bottleneck_ch=8,
                         groups=1, beta=1.0, stochdepth_rate=0.5)

  def one_block(x, is_training):
    return nfnet.NFBlock(spec, alpha=ALPHA)(x, is_training)[0]

  f_chain, f_block = hk.transform(chain), hk.transform(one_block)
  x_chain = jax.random.normal(jax.random.PRNGKey(2), (4, 32, 32, 128))
  x_block = jax.random.normal(jax.random.PRNGKey(3), (64, 4, 4, 16))

  p_chain = _random_params(f_chain, x_chain)
  p_block = _random_params(f_block, x_block, False)
  stats = np.asarray(jax.jit(f_chain.apply)(p_chain, None, x_chain))
  block_apply = jax.jit(f_block.apply, static_argnums=(3,))
  block_eval = np.asarray(block_apply(p_block, None, x_block, False))
  block_train = np.asarray(block_apply(p_block, jax.random.PRNGKey(5), x_block, True))

  # --- signal propagation (tolerances: +-0.15 on the reset, +-0.015 on the growth) ---
  specs = nfnet.block_config("F0", width=0.25, group_width=32)
  in_var, out_var, res_var = stats.T
  assert abs(in_var[0] - 1.0) < 0.02
  np.testing.assert_allclose(res_var, 1.0, atol=0.2)   # Branches see unit-variance inputs.
  for spec_i, v_in, v_out in zip(specs, in_var, out_var):
    first = spec_i.index == 0 or spec_i.stride == 2
    if first:     # Reset: the shortcut is a fresh projection of act(x) * beta.
      assert abs(v_out - (1.0 + ALPHA ** 2)) < 0.15, (spec_i.index, v_out)
    else:         # Identity shortcut: variance grows by alpha^2 * Var(branch) ~ alpha^2.
      assert abs((v_out - v_in) - ALPHA ** 2) < 0.015, (spec_i.index, v_out - v_in)
  # betas follow the measured growth: beta_i ~ 1 / std(input of block i) within a stage.
  for spec_i, v_in in zip(specs, in_var):
    if spec_i.stride == 1 and spec_i.index > 1:
      assert abs(spec_i.beta - 1 / np.sqrt(v_in)) < 0.05

  # --- stochastic depth: whole examples, no rescaling ---
  kept = np.all(np.isclose(block_train, block_eval, atol=1e-6), axis=(1, 2, 3))
  dropped = np.all(np.isclose(block_train, x_block, atol=1e-6), axis=(1, 2, 3))
  assert np.all(kept ^ dropped)           # Every example entirely kept or entirely dropped.
  assert 16 <= dropped.sum() <= 48        # Binomial(64, 0.5) (P(outside) < 1e-4).
  assert not np.allclose(block_eval, x_block, atol=1e-3)  # The branch is not trivially 0.
