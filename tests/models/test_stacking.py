"""Stacked blocks (the default NFNet layout in memory) against the per-block model.

One tiny F0 (width 0.25, group width 16, 16x16 images) in both layouts: the same initial values,
logits, gradients, stochastic-depth and dropout masks, one optimizer step with AGC and weight
decay, EMA, signal metrics and ``remat``; and the boundaries: per-block names on disk (our
checkpoints, old ones included), freeze regexes and AGC masks over per-block paths.
"""
import functools
import re
import types

import haiku as hk
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax.engine import finetune
from nfnets_jax.models import nfnet
from nfnets_jax.models import nfnet_l
from nfnets_jax.models import stacking
from nfnets_jax.optim import agc
from nfnets_jax.weights import checkpoint

KW = dict(variant="F0", width=0.25, group_width=16, stochdepth_rate=0.5, drop_rate=0.3,
          grouped_conv_impl="native")
X = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))


def _model(scan, **kw):
  return hk.transform(
      lambda x, t: nfnet.NFNet(10, scan_blocks=scan, **dict(KW, **kw))(x, t)["logits"])


def _perturbed(params):
  """Initial values plus noise, so that skip gains (0 at init) let every block matter."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  return jax.tree.unflatten(treedef, [
      p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def _init():
  return _model(False).init(jax.random.PRNGKey(1), X, True)


@pytest.fixture(scope="module")
def pair():
  params = _perturbed(_init())
  return _model(False), _model(True), params, stacking.stack_blocks(params)


@pytest.fixture(scope="module")
def grads(pair):
  """((logits, grads) per-block, (logits, grads) stacked), each model compiled once."""
  plain, scanned, params, stacked = pair
  (_, a), grads_a = _loss_and_grads(plain)(params, jax.random.PRNGKey(2))
  (_, b), grads_b = _loss_and_grads(scanned)(stacked, jax.random.PRNGKey(2))
  return (a, grads_a), (b, grads_b)


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * float(np.abs(a).max()) + 1e-12)


def _tree_close(a, b, rtol=1e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: _close(x, y, rtol), a, b)


def _tree_norm_close(a, b, tol, floor=0.0):
  """Every leaf within ``tol`` relative L2 error (recomputation may reorder a few roundings),
  or within ``floor`` absolute (float32 sums of a small leaf, e.g. one scalar gain's gradient)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  def check(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert np.linalg.norm(x - y) <= tol * np.linalg.norm(x) + floor + 1e-30
  jax.tree.map(check, a, b)


def test_stacked_init_equals_per_block_init_and_round_trips():
  params = _init()
  stacked = _model(True).init(jax.random.PRNGKey(1), X, True)
  # F0 depths (1, 2, 6, 3): each stage's head alone, the blocks after it in one stack.
  assert sorted({m.split("/~/")[1] for m in stacked if "nf_blocks" in m}) == [
      "nf_blocks_10_to_11", "nf_blocks_4_to_8"]
  assert stacked["NFNet/~/nf_blocks_4_to_8/~/conv1"]["w"].shape == (5, 3, 3, 16, 192)
  assert stacked["NFNet/~/nf_blocks_4_to_8"]["skip_gain"].shape == (5,)
  assert len(jax.tree.leaves(stacked)) < len(jax.tree.leaves(params))
  jax.tree.map(np.testing.assert_array_equal, stacking.stack_blocks(params), stacked)
  jax.tree.map(np.testing.assert_array_equal, models.unstack_blocks(stacked), params)
  assert models.match_layout(params, stacked).keys() == stacked.keys()
  assert models.match_layout(stacked, params).keys() == params.keys()


def test_jitted_stacked_init_equals_per_block_init():
  # Under jit, the keys queued by one scan and the vmapped initializers of each run
  # (models/draw_ahead.py) give the per-block model's values bit for bit.
  # (Both jitted: XLA's fused truncated normal differs from the op-by-op one in the last bit.)
  def jitted(scan):
    return jax.jit(_model(scan).init, static_argnums=2)(jax.random.PRNGKey(1), X, True)
  jax.tree.map(np.testing.assert_array_equal, jitted(True), stacking.stack_blocks(jitted(False)))


def _random_ops(variant, scan):
  """Random draws (splits and bits) in the traced init of ``variant``, a scan's body once
  (``is_training=False``: no stochastic-depth draws in the forward, only the initializers')."""
  f = hk.transform(lambda x: nfnet.NFNet(10, variant=variant, width=0.25, group_width=16,
                                         scan_blocks=scan, grouped_conv_impl="native")(x, False))
  def count(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      n += eqn.primitive.name in ("random_split", "random_bits", "threefry2x32")
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        n += count(sub)
    return n
  return count(jax.make_jaxpr(f.init)(jax.random.PRNGKey(0), X[:1]).jaxpr)


def test_init_draws_per_run_not_per_block():
  # F7 (depths 8, 16, 48, 24) has 4x the blocks of F1 (2, 4, 12, 6) in the same four runs.
  # Block by block the random ops grow with the blocks (238 -> 1,102); stacked, each run's
  # parameters are drawn once (88 -> 106: a longer run queues its keys in one more scan), so
  # F7's jitted init compiles like F0's.
  stacked = {v: _random_ops(v, True) for v in ("F1", "F7")}
  per_block = {v: _random_ops(v, False) for v in ("F1", "F7")}
  assert per_block["F7"] > 4 * per_block["F1"]
  assert stacked["F7"] < 1.25 * stacked["F1"]
  assert stacked["F1"] < 0.5 * per_block["F1"]


@pytest.mark.parametrize("variant", ["F0", "F3", "F7"])
def test_model_runs_equal_the_runs_found_from_shapes(variant):
  f = hk.transform(lambda x: nfnet.NFNet(10, variant=variant, grouped_conv_impl="native")(
      x, False))
  shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  per_block = stacking.unstack_blocks(shapes)
  runs = [(first, last) for _, first, last in stacking.identical_block_runs(per_block)]
  expected = [(r[0], r[-1]) for r in nfnet.identical_runs(nfnet.block_config(variant))
              if len(r) > 1]
  assert runs == expected == [(first, last) for _, first, last in stacking.stacked_runs(shapes)]
  # F7: 1,661 arrays block by block, 165 stacked.
  if variant == "F7":
    assert len(jax.tree.leaves(per_block)) == 1661
    assert len(jax.tree.leaves(shapes)) == 165
  # AGC's per-block names are the models' (one naming, two rooms).
  path = f"NFNet/~/{stacking.stack_name(*expected[0])}/~/conv0/w"
  assert agc.block_paths(path)[0] == f"NFNet/~/{stacking.block_name(expected[0][0])}/~/conv0/w"


def _loss_and_grads(f):
  def loss(p, rng):
    logits = f.apply(p, rng, X, True)
    return jnp.sum(logits ** 2), logits
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def test_forward_gradients_and_masks_equal(pair, grads):
  plain, scanned, params, stacked = pair
  (a, grads_a), (b, grads_b) = grads
  _close(a, b)  # rate 0.5 stochastic depth and dropout 0.3: equal logits mean equal masks
  _tree_close(grads_a, stacking.unstack_blocks(grads_b))
  other = jax.jit(scanned.apply, static_argnums=3)(stacked, jax.random.PRNGKey(5), X, True)
  assert not np.allclose(other, b, atol=1e-4)  # other keys, other masks
  # Either model applies either layout.
  _close(a, plain.apply(stacked, jax.random.PRNGKey(2), X, True))
  _close(a, scanned.apply(params, jax.random.PRNGKey(2), X, True))


def test_signal_metrics_from_stacked_params(pair):
  _, _, params, stacked = pair
  f = hk.transform(lambda x: nfnet.NFNet(10, **KW)(x, False, return_metrics=True))
  a, b = f.apply(params, None, X), f.apply(stacked, None, X)
  assert a.keys() == b.keys() and "block_7_res_var" in a
  for k in a:
    _close(a[k], b[k])


@pytest.mark.parametrize("scan", [pytest.param(False, marks=pytest.mark.slow), True])
def test_remat_blocks_same_logits_and_gradients(pair, grads, scan):
  _, _, params, stacked = pair
  p = stacked if scan else params
  a, grads_a = grads[int(scan)]
  (_, b), grads_b = _loss_and_grads(_model(scan, remat="blocks"))(p, jax.random.PRNGKey(2))
  _tree_norm_close(a, b, 1e-6)
  # float32: a scalar gain's gradient moved by 2.5e-8 (2.5e-5 of itself): floor at 1e-7 of the
  # whole gradient's norm.
  scale = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                            for g in jax.tree.leaves(grads_a))))
  _tree_norm_close(grads_a, grads_b, 1e-5, floor=1e-7 * scale)
  with pytest.raises(ValueError, match="remat"):
    nfnet.check_remat("stages")


@pytest.mark.slow
def test_remat_nfnet_l():
  def make(remat):
    return hk.transform(lambda x: nfnet_l.NFNetL(
        10, variant="ECA-L0", width=0.25, remat=remat, stochdepth_rate=0.5)(x, True)["logits"])
  params = _perturbed(make("none").init(jax.random.PRNGKey(1), X))
  def grads(f):
    return jax.jit(jax.value_and_grad(
        lambda p: jnp.sum(f.apply(p, jax.random.PRNGKey(2), X) ** 2)))(params)
  (la, ga), (lb, gb) = grads(make("none")), grads(make("blocks"))
  _tree_norm_close(la, lb, 1e-6)
  _tree_norm_close(ga, gb, 1e-5)


def _optimizer(freeze=""):
  cfg = optim.default_optimizer_config()
  cfg.clipping = 1e-3  # small enough that AGC clips many units
  cfg.weight_decay = 1e-2
  cfg.warmup_epochs = 0.0
  cfg.freeze = freeze
  return optim.build_optimizer(cfg, batch_size=256, steps_per_epoch=10, total_steps=100)


def _one_step(tx, params, grads):
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  ema = optim.ema_update(params, new, 0, 0.999)
  return new, ema


def test_one_optimizer_step_with_agc_and_ema_equal(pair, grads):
  _, _, params, stacked = pair
  (_, grads), (_, grads_s) = grads
  stats = agc.clip_stats(grads, params, 1e-3, mask=agc.exclusion_mask(params))
  stats_s = agc.clip_stats(grads_s, stacked, 1e-3, mask=agc.exclusion_mask(stacked))
  assert stats.keys() == stats_s.keys()  # per-block groups: nf_block_5, ...
  assert 0.05 < float(stats["agc/frac_clipped"]) < 0.95  # clipping is active, not total
  for k in stats:
    _close(stats[k], stats_s[k])
  tx = _optimizer()
  new, ema = _one_step(tx, params, grads)
  new_s, ema_s = _one_step(tx, stacked, grads_s)
  _tree_close(new, stacking.unstack_blocks(new_s))
  _tree_close(ema, stacking.unstack_blocks(ema_s))


def test_agc_clips_each_stacked_block_as_its_own_array():
  rng = np.random.default_rng(0)
  params = {f"M/~/nf_block_{i}/~/conv": {"w": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
                                         "gain": rng.normal(size=(8,)).astype(np.float32)}
            for i in (1, 2, 3)}
  for i in (1, 2, 3):
    params[f"M/~/nf_block_{i}"] = {"skip_gain": np.float32(0.1 * i)}
  grads = jax.tree.map(lambda p: np.float32(5.0) * rng.normal(size=np.shape(p)).astype(
      np.float32), params)
  stacked, grads_s = stacking.stack_blocks(params), stacking.stack_blocks(grads)
  assert set(stacked) == {"M/~/nf_blocks_1_to_3/~/conv", "M/~/nf_blocks_1_to_3"}
  tx = agc.adaptive_grad_clip(0.05)
  a, _ = tx.update(grads, tx.init(params), params)
  b, _ = tx.update(grads_s, tx.init(stacked), stacked)
  _tree_close(a, stacking.unstack_blocks(b), 1e-6)
  # An exclusion rule naming one block masks that slice only.
  mask = agc.exclusion_mask(stacked, [r"nf_block_2/"])
  assert mask["M/~/nf_blocks_1_to_3/~/conv"]["w"].reshape(-1).tolist() == [True, False, True]
  a, _ = agc.adaptive_grad_clip(0.05, mask=agc.exclusion_mask(params, [r"nf_block_2/"])).update(
      grads, None, params)
  b, _ = agc.adaptive_grad_clip(0.05, mask=mask).update(grads_s, None, stacked)
  _tree_close(a, stacking.unstack_blocks(b), 1e-6)
  with pytest.raises(ValueError, match="matches no parameter"):
    agc.exclusion_mask(stacked, [r"nf_block_7/"])


def test_freeze_regex_names_per_block_paths(pair):
  _, _, params, stacked = pair
  freeze = r"^NFNet/~/nf_block_5/"
  mults = optim.update_multipliers(stacked, freeze=freeze)
  w = mults["NFNet/~/nf_blocks_4_to_8/~/conv1"]["w"]
  assert w.shape == (5, 1, 1, 1, 1) and w.reshape(-1).tolist() == [1, 0, 1, 1, 1]
  assert mults["NFNet/~/nf_block_3/~/conv1"]["w"] == 1.0
  grads = jax.tree.map(jnp.ones_like, params)
  tx = _optimizer(freeze)
  a, _ = tx.update(grads, tx.init(params), params)
  b, _ = tx.update(stacking.stack_blocks(grads), tx.init(stacked), stacked)
  _tree_close(a, stacking.unstack_blocks(b), 1e-6)
  assert not np.any(np.asarray(a["NFNet/~/nf_block_5/~/conv1"]["w"]))


def test_checkpoints_keep_per_block_names_and_old_ones_resume(tmp_path, pair):
  _, _, params, stacked = pair
  tx = _optimizer()
  np_tree = lambda t: jax.tree.map(np.asarray, t)
  old_state = np_tree({"params": params, "opt_state": tx.init(params), "ema_params": params,
                       "step": np.int32(7)})
  new_target = np_tree({"params": stacked, "opt_state": tx.init(stacked),
                        "ema_params": stacked, "step": np.int32(0)})
  # A checkpoint of the per-block layout (every checkpoint written before stacking existed)...
  old = checkpoint.Checkpointer(str(tmp_path / "old"))
  old.save(7, old_state)
  old.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path / "old"))
  restored = ckpt.restore(new_target)
  ckpt.close()
  # ...restores into the stacked state, optimizer state included.
  assert jax.tree.structure(restored) == jax.tree.structure(new_target)
  jax.tree.map(np.testing.assert_array_equal, restored["params"], np_tree(stacked))
  assert int(restored["step"]) == 7
  # A stacked state is written with per-block names and reads back raw as the old layout.
  ckpt = checkpoint.Checkpointer(str(tmp_path / "new"))
  ckpt.save(3, restored)
  raw = ckpt.restore_raw(3)
  again = ckpt.restore(new_target, 3)
  ckpt.close()
  assert set(raw["params"]) == set(params)
  assert not any(re.search("nf_blocks_", m) for m in raw["ema_params"])
  jax.tree.map(np.testing.assert_array_equal, again, restored)


def test_finetune_copies_per_block_weights_into_a_stacked_state():
  shapes = jax.eval_shape(lambda r: _model(True).init(r, X, True), jax.random.PRNGKey(1))
  stacked = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  rng = np.random.default_rng(0)
  source_params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype),
                               stacking.unstack_blocks(stacked))  # as read from any file
  source = types.SimpleNamespace(params=source_params, num_classes=10, state={}, source="src",
                                 name="nfnet_f0", kind="npz", step=None, ema=False)
  config = ml_collections.ConfigDict(dict(reinit_head=False, model="nfnet_f0"))
  tx = optax.sgd(0.1, momentum=0.9)
  state = {"params": stacked, "model_state": {}, "opt_state": tx.init(stacked),
           "ema_params": stacked}
  out = finetune.init_state(state, source, config, tx, log=lambda _: None)
  assert jax.tree.structure(out["params"]) == jax.tree.structure(stacked)
  jax.tree.map(np.testing.assert_array_equal, stacking.unstack_blocks(out["params"]),
               source_params)
  jax.tree.map(np.testing.assert_array_equal, out["ema_params"], out["params"])
  # Counted in per-block tensors, as users name them: block 5's 17 of the F0's 233.
  assert finetune.frozen_summary(out["params"], r"^NFNet/~/nf_block_5/").startswith("17 of 233")
