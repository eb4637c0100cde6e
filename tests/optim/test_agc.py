"""Adaptive gradient clipping: unit norms, equality with optax, masks, statistics, jit/pmap."""
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets_jax import layers
from nfnets_jax.optim import agc

# One shape per supported rank, plus the degenerate "one non-singleton dim" cases.
SHAPES = {
    "scalar": (),
    "vector": (7,),
    "row": (1, 6),
    "col": (5, 1),
    "linear": (6, 5),
    "multihead": (4, 3, 5),
    "gain4d": (6, 1, 1, 1),
    "conv1x1": (1, 1, 4, 6),
    "conv3x3": (3, 3, 4, 6),
    "conv3d": (2, 3, 3, 2, 4),
}


def _random_tree(seed, zero=()):
  rng = np.random.default_rng(seed)
  params, grads = {}, {}
  for name, shape in SHAPES.items():
    p = rng.normal(size=shape).astype(np.float32)
    if name in zero:
      p = np.zeros(shape, np.float32)
    # Per-element scales spanning 4 decades so some units are clipped and others are not.
    g = (rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 0, size=shape)).astype(np.float32)
    params[f"model/~/{name}"] = {"w": jnp.asarray(p)}
    grads[f"model/~/{name}"] = {"w": jnp.asarray(g)}
  return params, grads


# ---------------------------------------------------------------------------------------------
# Unit norms and the transform against optax and hand computation.


def test_reduction_axes_per_rank():
  assert agc.reduction_axes(()) is None
  assert agc.reduction_axes((7,)) is None
  assert agc.reduction_axes((1, 6)) is None
  assert agc.reduction_axes((6, 1, 1, 1)) is None
  assert agc.reduction_axes((6, 5)) == (0,)
  assert agc.reduction_axes((4, 3, 5)) == (0,)
  assert agc.reduction_axes((1, 1, 4, 6)) == (0, 1, 2)
  assert agc.reduction_axes((2, 3, 3, 2, 4)) == (0, 1, 2, 3)
  with pytest.raises(ValueError, match="rank 6"):
    agc.reduction_axes((2, 2, 2, 2, 2, 2))


@pytest.mark.parametrize("zero", [(), ("scalar", "vector", "linear", "conv3x3", "conv3d")])
@pytest.mark.parametrize("clipping", [0.01, 0.1])
def test_equals_optax_adaptive_grad_clip(zero, clipping):
  params, grads = _random_tree(0, zero)
  ours = jax.jit(lambda g, p: agc.adaptive_grad_clip(clipping).update(g, None, p)[0])(
      grads, params)
  ref = jax.jit(lambda g, p: optax.adaptive_grad_clip(clipping).update(g, None, p)[0])(
      grads, params)
  n_changed = 0
  for k in params:
    np.testing.assert_allclose(ours[k]["w"], ref[k]["w"], rtol=1e-6, atol=0)
    assert ours[k]["w"].dtype == grads[k]["w"].dtype
    n_changed += int(np.sum(np.asarray(ours[k]["w"]) != np.asarray(grads[k]["w"])))
  assert n_changed > 0  # the comparison exercised the clipping branch


def _np_clip_units(g, p, units, clipping, eps=1e-3):
  """Clips g unit by unit; ``units`` yields index expressions, one per unit."""
  g = np.asarray(g, np.float64).copy()
  p = np.asarray(p, np.float64)
  for idx in units:
    gn = np.sqrt(np.sum(g[idx] ** 2))
    mx = clipping * max(np.sqrt(np.sum(p[idx] ** 2)), eps)
    if gn > mx:
      g[idx] = g[idx] * mx / max(gn, 1e-6)
  return g


def _units(shape):
  """Index expressions of the units of each rank, written out per rank."""
  rank = len(shape)
  if rank <= 1 or sum(d != 1 for d in shape) <= 1:
    return [Ellipsis]
  if rank == 2:
    return [(slice(None), j) for j in range(shape[1])]
  if rank == 3:
    return [(slice(None), j, k) for j in range(shape[1]) for k in range(shape[2])]
  if rank == 4:
    return [(slice(None),) * 3 + (o,) for o in range(shape[3])]
  if rank == 5:
    return [(slice(None),) * 4 + (o,) for o in range(shape[4])]
  raise AssertionError(shape)


def test_hand_computed_small_cases():
  tx = agc.adaptive_grad_clip(0.1)
  # Scalar: max = 0.1 * 2 = 0.2 < 1 -> clipped to 0.2 (sign kept).
  out, _ = tx.update({"a": jnp.float32(-1.0)}, None, {"a": jnp.float32(2.0)})
  np.testing.assert_allclose(out["a"], -0.2, rtol=1e-6)
  # Vector: ||p|| = 5, max = 0.5, ||g|| = 1 -> g / 2.
  out, _ = tx.update({"a": jnp.array([0.6, 0.8])}, None, {"a": jnp.array([3.0, 4.0])})
  np.testing.assert_allclose(out["a"], [0.3, 0.4], rtol=1e-6)
  # Linear (in=2, out=2): column 0 has ||p||=5, ||g||=5 -> clipped to norm 0.5;
  # column 1 has ||p||=10, ||g||=0.5 <= 1 -> unchanged.
  p = jnp.array([[3.0, 6.0], [4.0, 8.0]])
  g = jnp.array([[3.0, 0.3], [4.0, 0.4]])
  out, _ = tx.update({"a": g}, None, {"a": p})
  np.testing.assert_allclose(out["a"], [[0.3, 0.3], [0.4, 0.4]], rtol=1e-6)
  # Zero parameter: eps floor, max = 0.1 * 1e-3.
  out, _ = tx.update({"a": jnp.array([0.0, 2.0])}, None, {"a": jnp.zeros(2)})
  np.testing.assert_allclose(out["a"], [0.0, 1e-4], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_hand_computed_per_rank(name):
  params, grads = _random_tree(1)
  key = f"model/~/{name}"
  p, g = params[key]["w"], grads[key]["w"]
  out, _ = agc.adaptive_grad_clip(0.02).update({"w": g}, None, {"w": p})
  expected = _np_clip_units(g, p, _units(g.shape), 0.02)
  np.testing.assert_allclose(out["w"], expected, rtol=2e-6, atol=1e-12)


def test_zero_init_scalar_gain_moves_at_most_clipping_times_eps():
  clipping, eps = 0.01, 1e-3
  params = {"NFNet/~/nf_block": {"skip_gain": jnp.zeros(())}}
  tx = optax.chain(agc.adaptive_grad_clip(clipping, eps), optax.sgd(1.0))
  for grad in (1e3, -3.0, 5e-6):
    grads = {"NFNet/~/nf_block": {"skip_gain": jnp.float32(grad)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)["NFNet/~/nf_block"]["skip_gain"]
    expected = -np.sign(grad) * min(abs(grad), clipping * eps)
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    assert abs(float(new)) <= clipping * eps * (1 + 1e-6)


def test_params_required_and_none_grads_left_alone():
  tx = agc.adaptive_grad_clip(0.01)
  params = {"m": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}}
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(params, tx.init(params), None)
  grads = {"m": {"w": None, "b": jnp.full((2,), 10.0)}}
  out, _ = tx.update(grads, tx.init(params), params)
  assert out["m"]["w"] is None
  np.testing.assert_allclose(out["m"]["b"], np.full(2, 0.01 * np.sqrt(2) / np.sqrt(2)), rtol=1e-6)
  with pytest.raises(ValueError, match="shape"):
    tx.update({"m": {"w": jnp.ones((2, 3)), "b": jnp.ones(2)}}, None, params)


def test_composes_with_adam():
  params, grads = _random_tree(2)
  tx = optax.chain(agc.adaptive_grad_clip(0.01), optax.adam(1e-3))
  ref = optax.chain(optax.adaptive_grad_clip(0.01), optax.adam(1e-3))
  ours, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  theirs, _ = jax.jit(ref.update)(grads, ref.init(params), params)
  for k in params:
    np.testing.assert_allclose(ours[k]["w"], theirs[k]["w"], rtol=1e-5, atol=1e-9)


def test_bfloat16_grads_have_float32_accurate_norms():
  rng = np.random.default_rng(3)
  # 8192 values of ~1: a bfloat16 accumulator would lose most of the sum's precision.
  g32 = rng.uniform(0.9, 1.1, size=(8192, 4)).astype(np.float32)
  g16 = jnp.asarray(g32, jnp.bfloat16)
  norms = agc.unitwise_norm(g16)
  assert norms.dtype == jnp.float32 and norms.shape == (1, 4)
  exact = np.sqrt(np.sum(np.asarray(g16, np.float64) ** 2, axis=0, keepdims=True))
  np.testing.assert_allclose(norms, exact, rtol=1e-5)
  # The clipped gradient keeps bfloat16 and equals the float32 computation on the same values.
  p = jnp.asarray(rng.normal(size=(8192, 4)) * 1e-3, jnp.float32)
  out16, _ = agc.adaptive_grad_clip(0.01).update({"w": g16}, None, {"w": p})
  out32, _ = agc.adaptive_grad_clip(0.01).update({"w": g16.astype(jnp.float32)}, None, {"w": p})
  assert out16["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out16["w"], np.float32),
                                np.asarray(out32["w"].astype(jnp.bfloat16), np.float32))


def test_jit_and_pmap():
  assert jax.device_count() == 8
  params, _ = _random_tree(4)
  tx = agc.adaptive_grad_clip(0.01)
  per_device = [_random_tree(10 + i)[1] for i in range(8)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_device)
  rep_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (8,) + x.shape), params)
  out = jax.pmap(lambda g, p: tx.update(g, optax.EmptyState(), p)[0])(stacked, rep_params)
  jitted = jax.jit(lambda g, p: tx.update(g, optax.EmptyState(), p)[0])
  for i in (0, 5):
    expected = jitted(per_device[i], params)
    for k in params:
      np.testing.assert_allclose(out[k]["w"][i], expected[k]["w"], rtol=1e-6, atol=1e-12)
  assert not np.allclose(out["model/~/linear"]["w"][0], out["model/~/linear"]["w"][5])


def test_traced_clipping_value_for_sweeps():
  params, grads = _random_tree(5)
  f = jax.jit(lambda c: agc.adaptive_grad_clip(c).update(grads, None, params)[0])
  ref = jax.jit(lambda c: optax.adaptive_grad_clip(c).update(grads, None, params)[0])
  for c in (0.01, 0.16):
    ours, theirs = f(c), ref(c)
    for k in params:
      np.testing.assert_allclose(ours[k]["w"], theirs[k]["w"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Exclusion masks on a real Haiku model shaped like an NFNet.


class _TinyNFNet(hk.Module):
  """A stem conv, one block with a skip gain and squeeze-excite, and the classifier.

  Submodules are built in the constructors, as the reference does, so Haiku joins the paths
  with ``/~/``.
  """

  def __init__(self):
    super().__init__(name="NFNet")
    self.stem = layers.WSConv2D(8, 3, name="stem_conv0")
    self.block = _Block()
    self.linear = hk.Linear(3, name="linear")

  def __call__(self, x):
    x = self.block(self.stem(x))
    return self.linear(jnp.mean(x, axis=(1, 2)))


class _Block(hk.Module):

  def __init__(self):
    super().__init__(name="nf_block")
    self.se = layers.SqueezeExcite(8, 8, se_ratio=0.5)

  def __call__(self, x):
    skip_gain = hk.get_parameter("skip_gain", (), init=jnp.zeros)
    return x + skip_gain * self.se(x) * x


@functools.lru_cache(maxsize=None)
def _tiny_params():
  f = hk.transform(lambda x: _TinyNFNet()(x))
  return jax.jit(f.init)(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))


CLS = "NFNet/~/linear"
SE = "NFNet/~/nf_block/~/squeeze_excite/~/linear"


def test_tiny_model_paths_look_like_the_reference():
  paths = set(agc.param_paths(_tiny_params()))
  assert {f"{CLS}/w", f"{CLS}/b", f"{SE}/w", f"{SE}/b", f"{SE}_1/w",
          "NFNet/~/nf_block/skip_gain", "NFNet/~/stem_conv0/gain"} <= paths
  assert agc.find_classifier(_tiny_params()) == CLS


def _flat_mask(params, spec):
  mask = agc.exclusion_mask(params, spec)
  paths = agc.param_paths(params)
  return dict(zip(paths, jax.tree.leaves(mask)))


def test_reference_preset_clips_classifier_bias_not_weight():
  params = _tiny_params()
  mask = _flat_mask(params, "reference")
  assert [p for p, clip in mask.items() if not clip] == [f"{CLS}/w"]
  assert mask[f"{CLS}/b"] and mask[f"{SE}/w"] and mask[f"{SE}_1/w"] and mask[f"{SE}/b"]
  assert mask["NFNet/~/nf_block/skip_gain"]


def test_paper_preset_clips_neither_classifier_param_and_none_clips_all():
  params = _tiny_params()
  mask = _flat_mask(params, "paper")
  assert sorted(p for p, clip in mask.items() if not clip) == [f"{CLS}/b", f"{CLS}/w"]
  assert mask[f"{SE}/w"] and mask[f"{SE}/b"] and mask[f"{SE}_1/w"] and mask[f"{SE}_1/b"]
  assert all(_flat_mask(params, "none").values())


@pytest.mark.parametrize("preset,unclipped", [
    ("reference", {f"{CLS}/w"}), ("paper", {f"{CLS}/w", f"{CLS}/b"}), ("none", set())])
def test_masked_transform_leaves_excluded_grads_untouched(preset, unclipped):
  params = _tiny_params()
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 50.0), params)  # far above any threshold
  tx = agc.adaptive_grad_clip(0.01, mask=functools.partial(agc.exclusion_mask, spec=preset))
  out = jax.jit(tx.update)(grads, tx.init(params), params)[0]
  for path, g_in, g_out in zip(agc.param_paths(params), jax.tree.leaves(grads),
                               jax.tree.leaves(out)):
    if path in unclipped:
      np.testing.assert_array_equal(g_out, g_in)
    else:
      assert float(jnp.max(jnp.abs(g_out))) < 1.0, path


def test_custom_rules_and_bad_specs():
  params = _tiny_params()
  mask = _flat_mask(params, [r"/gain$", r"skip_gain"])
  excluded = sorted(p for p, clip in mask.items() if not clip)
  assert excluded == ["NFNet/~/nf_block/skip_gain", "NFNet/~/stem_conv0/gain"]
  with pytest.raises(ValueError, match="matches no parameter"):
    agc.exclusion_mask(params, [r"^NFNet/~/fc/w$"])
  with pytest.raises(ValueError, match="Unknown AGC exclusion preset"):
    agc.exclusion_mask(params, "referenc")
  with pytest.raises(ValueError, match="Bad AGC exclusion regex"):
    agc.exclusion_mask(params, ["("])
  with pytest.raises(ValueError, match="No classifier head"):
    agc.exclusion_mask({"NFNet/~/conv": {"w": jnp.ones((3, 3, 2, 2))}}, "reference")
  # A bad preset fails at init, not in the middle of training.
  tx = agc.adaptive_grad_clip(0.01, mask=functools.partial(agc.exclusion_mask, spec="paper"))
  with pytest.raises(ValueError, match="No classifier head"):
    tx.init({"m": {"w": jnp.ones((3, 3, 2, 2))}})


def test_classifier_is_the_last_top_level_linear():
  params = {"Net/~/linear": {"w": jnp.ones((4, 4)), "b": jnp.ones(4)},
            "Net/~/linear_1": {"w": jnp.ones((4, 2)), "b": jnp.ones(2)},
            "Net/~/block/~/linear_7": {"w": jnp.ones((4, 4))}}
  assert agc.find_classifier(params) == "Net/~/linear_1"
  # Modules built inside __call__ are joined with "/" by Haiku; deeper linears never qualify.
  params = {"Net/block/squeeze_excite/~/linear": {"w": jnp.ones((4, 4))},
            "Net/linear": {"w": jnp.ones((4, 2)), "b": jnp.ones(2)}}
  assert agc.find_classifier(params) == "Net/linear"
  assert agc.default_group("Net/block/squeeze_excite/~/linear/w") == "block"
  assert agc.default_group("NFNet/~/nf_block_3/~/conv1/w") == "nf_block_3"
  assert agc.default_group("NFNet/~/nf_block_3/skip_gain") == "nf_block_3"
  assert agc.default_group("linear_1/w") == "linear_1"


# ---------------------------------------------------------------------------------------------
# Statistics.


def test_clip_stats_hand_computed_and_jittable():
  params = {
      "NFNet/~/nf_block_3/~/conv1": {"w": jnp.ones((1, 1, 4, 2))},     # unit norms 2, 2
      "NFNet/~/nf_block_3": {"skip_gain": jnp.zeros(())},              # norm 0 -> eps
      "NFNet/~/linear": {"w": jnp.ones((4, 3)), "b": jnp.ones(3)},     # norms 2,2,2 / sqrt(3)
  }
  grads = {
      "NFNet/~/nf_block_3/~/conv1": {"w": jnp.concatenate(
          [jnp.full((1, 1, 4, 1), 0.01), jnp.full((1, 1, 4, 1), 1.0)], axis=-1)},  # 0.02, 2
      "NFNet/~/nf_block_3": {"skip_gain": jnp.float32(0.5e-5)},        # ratio 0.005
      "NFNet/~/linear": {"w": jnp.full((4, 3), 100.0), "b": jnp.zeros(3)},
  }
  mask = functools.partial(agc.exclusion_mask, spec="reference")
  stats = jax.jit(lambda g, p: agc.clip_stats(g, p, 0.01, mask=mask, per_param=True))(
      grads, params)
  # Clipped units: conv1 output 1 (ratio 1 > 0.01) and nothing else; classifier w excluded.
  # Units: conv1 2 + skip_gain 1 + linear/b 1 = 4.
  np.testing.assert_allclose(stats["agc/frac_clipped"], 1 / 4, rtol=1e-6)
  np.testing.assert_allclose(stats["agc/max_ratio"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(stats["agc/frac_clipped/nf_block_3"], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(stats["agc/max_ratio/nf_block_3"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(stats["agc/frac_clipped/linear"], 0.0)
  np.testing.assert_allclose(stats["agc/max_ratio/linear"], 0.0)
  np.testing.assert_allclose(stats["agc/param_max_ratio/NFNet/~/nf_block_3/skip_gain"], 0.005,
                             rtol=1e-5)
  assert "agc/param_max_ratio/NFNet/~/linear/w" not in stats
  assert all(v.shape == () and v.dtype == jnp.float32 for v in stats.values())
  small = agc.clip_stats(grads, params, 0.01, mask=mask)
  assert sorted(small) == ["agc/frac_clipped", "agc/frac_clipped/linear",
                           "agc/frac_clipped/nf_block_3", "agc/max_ratio", "agc/max_ratio/linear",
                           "agc/max_ratio/nf_block_3"]


def test_clip_stats_agree_with_transform():
  params, grads = _random_tree(6, zero=("vector",))
  stats = agc.clip_stats(grads, params, 0.02)
  out, _ = agc.adaptive_grad_clip(0.02).update(grads, None, params)
  changed = total = 0
  for k in params:
    g, o = np.asarray(grads[k]["w"]), np.asarray(out[k]["w"])
    axes = agc.reduction_axes(g.shape)
    diff = np.any(g != o, axis=axes, keepdims=True) if axes is not None else np.any(g != o)
    changed += int(np.sum(diff))
    total += int(np.size(diff))
  np.testing.assert_allclose(stats["agc/frac_clipped"], changed / total, rtol=1e-6)
  assert 0 < changed < total


def test_presets_on_the_real_nfnet_f0_tree():
  """The registry's F0 (abstract, no arrays): one excluded weight, SE linears always clipped."""
  from nfnets_jax import models  # pylint: disable=import-outside-toplevel
  f = hk.transform_with_state(lambda x: models.create(  # per-block: 12 blocks x 4 SE arrays
      "nfnet_f0", 1000, scan_blocks=False)(x, is_training=True))
  params, _ = jax.eval_shape(f.init, jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 3)))
  ref, paper = _flat_mask(params, "reference"), _flat_mask(params, "paper")
  assert [p for p, clip in ref.items() if not clip] == ["NFNet/~/linear/w"]
  assert sorted(p for p, clip in paper.items() if not clip) == ["NFNet/~/linear/b",
                                                                "NFNet/~/linear/w"]
  se = [p for p in ref if "/squeeze_excite/~/linear" in p]
  assert len(se) == 12 * 4 and all(ref[p] and paper[p] for p in se)
