"""The engine's step functions: gradient accumulation and the non-finite guard, one step at a time.

These are the only implementations of both rules (the optimizer has neither), so they are tested
here directly; ``test_train.py`` checks the same through whole training runs.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nfnets_jax import optim
from nfnets_jax.engine import parallel
from nfnets_jax.engine import steps

NUM_CLASSES = 10


def _config(**optimizer):
  return ml_collections.ConfigDict(dict(
      model="nf_demo_tiny", compute_dtype="float32", label_smoothing=0.1, ema_decay=0.9,
      optimizer=dict(dict(base_lr=0.5, lr_scale_batch=None, warmup_epochs=0.0), **optimizer)))


def _setup(config, batch_size):
  forward = steps.make_forward(config, NUM_CLASSES)
  tx = optim.build_optimizer(config.optimizer, batch_size=batch_size, steps_per_epoch=1,
                             total_steps=10)
  params, model_state = forward.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), True)
  state = steps.make_train_state(params, model_state, tx, jax.random.PRNGKey(1), with_ema=True)
  return forward, tx, state


def _batch(seed, n):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=n)
  return {"images": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
          "labels": np.eye(NUM_CLASSES, dtype=np.float32)[labels]}


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_accumulated_micro_batches_equal_one_step_on_the_whole_batch():
  k, micro = 4, 4
  config = _config(clipping=0.01)
  forward, tx, state = _setup(config, k * micro)
  devices = jax.local_devices()[:1]
  batches = [_batch(s, k * micro) for s in range(2)]  # two optimizer steps
  finals, metrics = {}, {}
  for accumulation in (1, k):
    train_step = parallel.make_train_step(
        steps.make_grad_fn(forward, config), steps.make_update_fn(tx, config),
        accumulation_steps=accumulation, donate=False, devices=devices)
    rstate = parallel.replicate(state, devices)
    for batch in batches:
      rstate, m = train_step(rstate, parallel.shard(jax.tree.map(lambda x: x[None], batch),
                                                    devices))
    finals[accumulation], metrics[accumulation] = parallel.unreplicate((rstate, m))
  one, acc = finals[1], finals[k]
  assert jax.tree.structure(one) == jax.tree.structure(acc)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(acc)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  for key in ("loss", "grad_norm", "learning_rate"):
    np.testing.assert_allclose(metrics[1][key], metrics[k][key], rtol=1e-6)
  # One optimizer step per batch (not per micro-batch), and AGC clipped the accumulated
  # gradient (clipping each micro-batch before averaging would be a different update).
  assert int(acc["step"]) == 2
  assert metrics[k]["agc/frac_clipped"] > 0
  assert not np.allclose(one["params"]["NFDemo/~/linear"]["w"],
                         state["params"]["NFDemo/~/linear"]["w"])


@pytest.mark.parametrize("poisoned", ["grads", "loss"])
def test_nonfinite_step_leaves_the_state_unchanged(poisoned):
  config = _config()
  forward, tx, state = _setup(config, 16)
  grad_fn = jax.jit(steps.make_grad_fn(forward, config))
  update_fn = jax.jit(steps.make_update_fn(tx, config))
  rng = jax.random.PRNGKey(2)
  # A good step first, so momentum and EMA are not at their initial values.
  grads, (model_state, metrics) = grad_fn(state["params"], state["model_state"], _batch(0, 16),
                                          rng)
  state, _ = update_fn(state, grads, model_state, metrics)
  grads, (model_state, metrics) = grad_fn(state["params"], state["model_state"], _batch(1, 16),
                                          rng)
  if poisoned == "grads":
    bad_grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    bad_metrics = metrics
  else:
    bad_grads, bad_metrics = grads, dict(metrics, loss=jnp.float32(jnp.inf))
  after, m = update_fn(state, bad_grads, model_state, bad_metrics)
  for key in ("params", "opt_state", "model_state", "ema_params"):
    _assert_trees_equal(after[key], state[key])
  assert (int(after["step"]), int(after["nonfinite_count"]), int(after["first_nonfinite_step"]),
          float(m["nonfinite"])) == (2, 1, 1, 1.0)
  # The skipped step advanced neither the schedule nor the momentum: a good step now applies
  # exactly as it would have without the bad one.
  resumed, m_resumed = update_fn(after, grads, model_state, metrics)
  direct, m_direct = update_fn(state, grads, model_state, metrics)
  _assert_trees_equal(resumed["params"], direct["params"])
  _assert_trees_equal(resumed["opt_state"], direct["opt_state"])
  assert float(m_resumed["learning_rate"]) == float(m_direct["learning_rate"])
  assert int(resumed["nonfinite_count"]) == 1
