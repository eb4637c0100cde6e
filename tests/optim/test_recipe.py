"""The optimizer recipe: schedule, full update rule vs float64 NumPy, EMA.

Gradient accumulation and skipping non-finite steps are the engine's: tests/engine/test_steps.py.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nfnets_jax import optim
from nfnets_jax.optim import agc

CLS = "NFNet/~/linear"
SE = "NFNet/~/nf_block/~/squeeze_excite/~/linear"


def _config(**overrides):
  cfg = optim.default_optimizer_config()
  with cfg.ignore_type():
    for k, v in overrides.items():
      cfg[k] = v
  return cfg


def _tree(seed, grad=False):
  """An NFNet-shaped parameter (or gradient) tree with zero-initialized gains and biases."""
  rng = np.random.default_rng(seed)
  shapes = {
      "NFNet/~/stem_conv0": {"w": (3, 3, 2, 4), "gain": (4,), "bias": (4,)},
      "NFNet/~/nf_block": {"skip_gain": ()},
      SE: {"w": (4, 2), "b": (2,)},
      CLS: {"w": (4, 3), "b": (3,)},
  }
  out = {}
  for module, params in shapes.items():
    out[module] = {}
    for name, shape in params.items():
      if grad:  # magnitudes over 4 decades: some units clipped, others not
        x = rng.normal(size=shape) * 10.0 ** rng.uniform(-4, 0, size=shape)
      elif name in ("bias", "b", "skip_gain"):
        x = np.zeros(shape)
      elif name == "gain":
        x = np.ones(shape)
      else:
        x = rng.normal(size=shape) * 0.5
      out[module][name] = jnp.asarray(x, jnp.float32)
  return out


# ---------------------------------------------------------------------------------------------
# Config, schedule, masks.


def test_unknown_names_and_fields_are_clear_errors():
  with pytest.raises(ValueError, match="known names.*sgd_agc.*adamw"):
    optim.build_optimizer(_config(name="lamb"), batch_size=256, steps_per_epoch=1,
                          total_steps=10)
  with pytest.raises(ValueError, match="weight_dacay"):
    optim.build_optimizer({"weight_dacay": 1e-4}, batch_size=256, steps_per_epoch=1,
                          total_steps=10)
  with pytest.raises(ValueError, match="known schedules"):
    optim.learning_rate_schedule(_config(schedule="step"), batch_size=256, steps_per_epoch=1,
                                 total_steps=10)


def test_default_config_is_the_recipe():
  cfg = optim.default_optimizer_config()
  assert isinstance(cfg, ml_collections.ConfigDict)
  assert (cfg.name, cfg.base_lr, cfg.lr_scale_batch, cfg.warmup_epochs, cfg.schedule) == (
      "sgd_agc", 0.1, 256, 5.0, "cosine")
  assert (cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.clipping, cfg.agc_eps) == (
      0.9, True, 2e-5, 0.01, 1e-3)
  assert cfg.agc_exclude == "reference" and cfg.end_lr == 0.0
  assert optim.peak_learning_rate(cfg, 4096) == pytest.approx(1.6)


def test_uses_agc_and_resolved_defaults():
  assert optim.uses_agc({}) and optim.uses_agc({"name": "sgd_agc"})
  assert not optim.uses_agc({"name": "sgd"}) and not optim.uses_agc({"name": "sgd_global_clip"})
  assert not optim.uses_agc({"name": "adamw", "clipping": 0.0})
  assert optim.uses_agc({"name": "adamw", "clipping": 0.01})
  # A partial config reads every other field from the one set of defaults.
  cfg = optim.resolve_config({"name": "adamw"})
  assert (cfg.clipping, cfg.agc_eps, cfg.agc_exclude) == (0.01, 1e-3, "reference")


def test_learning_rate_schedule_values():
  sched = optim.learning_rate_schedule(_config(), batch_size=4096, steps_per_epoch=10,
                                       total_steps=150)  # warm-up = 50 steps, peak 1.6
  expected = {0: 0.0, 25: 0.8, 49: 1.6 * 49 / 50, 50: 1.6, 100: 0.8,
              75: 0.8 * (1 + math.cos(math.pi / 4)), 150: 0.0, 200: 0.0}
  for step, value in expected.items():
    np.testing.assert_allclose(sched(step), value, rtol=1e-6, atol=1e-7, err_msg=str(step))
  np.testing.assert_allclose(jax.jit(sched)(jnp.int32(100)), 0.8, rtol=1e-6)
  const = optim.learning_rate_schedule(
      _config(schedule="constant", lr_scale_batch=None, base_lr=0.4, warmup_epochs=0.0),
      batch_size=1024, steps_per_epoch=10, total_steps=100)
  for step in (0, 50, 100):
    np.testing.assert_allclose(const(step), 0.4, rtol=1e-6)
  to_end = optim.learning_rate_schedule(_config(end_lr=0.1, warmup_epochs=0.0), batch_size=256,
                                        steps_per_epoch=10, total_steps=100)
  np.testing.assert_allclose([to_end(0), to_end(50), to_end(100)], [0.1, 0.1, 0.1], rtol=1e-6)


def test_learning_rate_schedule_cosine_to_end_lr():
  sched = optim.learning_rate_schedule(_config(end_lr=0.02, warmup_epochs=0.0), batch_size=512,
                                       steps_per_epoch=10, total_steps=100)  # peak 0.2
  np.testing.assert_allclose([sched(0), sched(50), sched(100)], [0.2, 0.11, 0.02], rtol=1e-6)


def test_weight_decay_mask_by_name_and_shape():
  params = _tree(0)
  params["NFNet/~/bn"] = {"scale": jnp.ones((1, 1, 1, 4)), "offset": jnp.zeros((1, 1, 1, 4))}
  params["NFNet/~/odd"] = {"g4d": jnp.ones((4, 1, 1, 1)), "w": jnp.ones((2, 2))}
  mask = optim.weight_decay_mask(params)
  decayed = sorted(p for p, m in zip(agc.param_paths(params), jax.tree.leaves(mask)) if m)
  assert decayed == sorted([f"{SE}/w", f"{CLS}/w", "NFNet/~/odd/w", "NFNet/~/stem_conv0/w"])


# ---------------------------------------------------------------------------------------------
# The full recipe against an independent float64 NumPy implementation.

_NP_AXES = {2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}


def _np_unit_norm(x):
  if np.count_nonzero(np.array(x.shape) != 1) <= 1:
    return np.sqrt(np.sum(x * x))
  return np.sqrt(np.sum(x * x, axis=_NP_AXES[x.ndim], keepdims=True))


def _np_recipe(params, grads_seq, *, peak, warmup, total, clipping=0.01, eps=1e-3, wd=2e-5,
               mu=0.9, nesterov=True, no_clip=(f"{CLS}/w",)):
  p = {f"{m}/{n}": np.asarray(v, np.float64) for m, d in params.items() for n, v in d.items()}
  mom = {k: np.zeros_like(v) for k, v in p.items()}
  for t, grads in enumerate(grads_seq):
    lr = peak * t / warmup if t < warmup else (
        0.5 * peak * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (total - warmup)))))
    for key in p:
      module, name = key.rsplit("/", 1)
      g = np.asarray(grads[module][name], np.float64)
      if key not in no_clip:
        g_norm = _np_unit_norm(g)
        max_norm = clipping * np.maximum(_np_unit_norm(p[key]), eps)
        g = np.where(g_norm > max_norm, g * max_norm / np.maximum(g_norm, 1e-6), g)
      if name == "w":  # every 'w' here has >= 2 non-singleton dims
        g = g + wd * p[key]
      mom[key] = mu * mom[key] + g
      update = g + mu * mom[key] if nesterov else mom[key]
      p[key] = p[key] - lr * update
  return p


def _run(tx, params, grads_seq):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("nesterov", [True, False])
def test_three_steps_of_the_recipe_match_numpy_float64(nesterov):
  params = _tree(0)
  grads_seq = [_tree(10 + i, grad=True) for i in range(3)]
  # batch 512 -> peak 0.2; warm-up 1 epoch of 2 steps; lr = 0, 0.1, 0.2 for the three steps.
  cfg = _config(warmup_epochs=1.0, nesterov=nesterov)
  tx = optim.build_optimizer(cfg, batch_size=512, steps_per_epoch=2, total_steps=8)
  new, state = _run(tx, params, grads_seq)
  expected = _np_recipe(params, grads_seq, peak=0.2, warmup=2, total=8, nesterov=nesterov)
  got = {p: np.asarray(v) for p, v in zip(agc.param_paths(new), jax.tree.leaves(new))}
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=1e-9, err_msg=key)
  np.testing.assert_allclose(optim.get_learning_rate(state), 0.2, rtol=1e-6)
  # The zero-initialized skip gain moved, but only by the AGC-throttled amount: each clipped
  # gradient is at most clipping * eps = 1e-5, so with Nesterov the two non-zero-lr steps move
  # it at most (0.1 * (1.9 + 0.81) + 0.2 * (1.9 + 0.81 + 0.729)) * 1e-5.
  moved = abs(float(got["NFNet/~/nf_block/skip_gain"]))
  assert 0 < moved <= (0.1 * 2.71 + 0.2 * 3.439) * 1e-5 * (1 + 1e-5)


def test_nesterov_false_and_momentum_zero_mean_it():
  params = {"m": {"w": jnp.ones((2, 2))}}
  g1 = {"m": {"w": jnp.full((2, 2), 1.0)}}
  g2 = {"m": {"w": jnp.full((2, 2), -2.0)}}
  base = dict(name="sgd", weight_decay=0.0, warmup_epochs=0.0, schedule="constant",
              base_lr=0.5, lr_scale_batch=None)

  def updates(**kw):
    tx = optim.build_optimizer(_config(**base, **kw), batch_size=1, steps_per_epoch=1,
                               total_steps=10)
    state = tx.init(params)
    u1, state = tx.update(g1, state, params)
    u2, state = tx.update(g2, state, params)
    return float(u1["m"]["w"][0, 0]), float(u2["m"]["w"][0, 0]), state

  n1, n2, _ = updates(nesterov=True)
  h1, h2, _ = updates(nesterov=False)
  z1, z2, zstate = updates(momentum=0.0)
  # Nesterov: m1 = 1, u1 = 1 + 0.9; m2 = 0.9 - 2 = -1.1, u2 = -2 + 0.9 * -1.1.
  np.testing.assert_allclose([n1, n2], [-0.5 * 1.9, -0.5 * (-2 - 0.99)], rtol=1e-6)
  # Heavy ball: u = m.
  np.testing.assert_allclose([h1, h2], [-0.5, -0.5 * -1.1], rtol=1e-6)
  np.testing.assert_allclose([z1, z2], [-0.5, 1.0], rtol=1e-6)
  # No momentum buffer at all when momentum is 0.
  assert all(np.size(x) == 1 for x in jax.tree.leaves(zstate))


def test_global_clip_and_plain_sgd_alternatives():
  params = {"m": {"w": jnp.ones((3, 4))}}
  grads = {"m": {"w": jnp.full((3, 4), 2.0)}}  # global norm = 2 * sqrt(12)
  base = dict(weight_decay=0.0, momentum=0.0, warmup_epochs=0.0, schedule="constant",
              base_lr=1.0, lr_scale_batch=None)
  for name, expected in (("sgd_global_clip", -2.0 / (2 * math.sqrt(12))), ("sgd", -2.0)):
    tx = optim.build_optimizer(_config(name=name, **base), batch_size=1, steps_per_epoch=1,
                               total_steps=10)
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(u["m"]["w"], np.full((3, 4), expected), rtol=1e-6)


def test_adamw_matches_optax_adamw():
  params = _tree(1)
  grads_seq = [_tree(20 + i, grad=True) for i in range(2)]
  cfg = _config(name="adamw", clipping=0.0, weight_decay=0.05, warmup_epochs=0.0,
                schedule="constant", base_lr=1e-3, lr_scale_batch=None)
  ours, _ = _run(optim.build_optimizer(cfg, batch_size=1, steps_per_epoch=1, total_steps=10),
                 params, grads_seq)
  ref, _ = _run(optax.adamw(1e-3, weight_decay=0.05, mask=optim.weight_decay_mask),
                params, grads_seq)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  # With clipping set, adamw clips first (the result differs from plain adamw).
  clipped, _ = _run(optim.build_optimizer(_config(**{**cfg.to_dict(), "clipping": 0.001}),
                                          batch_size=1, steps_per_epoch=1, total_steps=10),
                    params, grads_seq)
  assert not np.allclose(clipped["NFNet/~/stem_conv0"]["w"], ours["NFNet/~/stem_conv0"]["w"])


def test_get_learning_rate_follows_the_schedule():
  params = _tree(3)
  cfg = _config(warmup_epochs=1.0)
  tx = optim.build_optimizer(cfg, batch_size=512, steps_per_epoch=4, total_steps=20)
  state = tx.init(params)
  grads = _tree(40, grad=True)
  lrs = []
  step = jax.jit(tx.update)
  for _ in range(3):
    _, state = step(grads, state, params)
    lrs.append(float(optim.get_learning_rate(state)))
  # Update t uses 0.2 * t / 4 during warm-up.
  np.testing.assert_allclose(lrs, [0.0, 0.05, 0.1], rtol=1e-6)
  with pytest.raises(ValueError, match="learning_rate"):
    optim.get_learning_rate(optax.sgd(0.1).init(params))


# ---------------------------------------------------------------------------------------------
# EMA.


def test_ema_warmup_decay_values():
  np.testing.assert_allclose([optim.ema_decay_at(t, 0.99999) for t in range(4)],
                             [1 / 10, 2 / 11, 3 / 12, 4 / 13], rtol=1e-6)
  np.testing.assert_allclose(optim.ema_decay_at(10**6, 0.99999), 0.99999, rtol=1e-7)
  np.testing.assert_allclose(optim.ema_decay_at(100, 0.9), 0.9, rtol=1e-7)


def test_ema_update_first_steps():
  ema = {"m": {"w": jnp.zeros((2,)), "b": jnp.ones(())}}
  seq = [{"m": {"w": jnp.full((2,), float(i + 1)), "b": jnp.float32(0.0)}} for i in range(3)]
  update = jax.jit(optim.ema_update, static_argnums=3)
  w, b = 0.0, 1.0
  for t, params in enumerate(seq):
    ema = update(ema, params, t, 0.99999)
    d = (1 + t) / (10 + t)
    w, b = d * w + (1 - d) * (t + 1), d * b
    np.testing.assert_allclose(ema["m"]["w"], [w, w], rtol=1e-6)
    np.testing.assert_allclose(ema["m"]["b"], b, rtol=1e-6)
  # 0.1*0 + 0.9*1 = 0.9; 2/11*0.9 + 9/11*2; ...
  np.testing.assert_allclose(w, (3 / 12) * ((2 / 11) * 0.9 + (9 / 11) * 2) + (9 / 12) * 3)
