"""SAM (``engine/sam.py``) against a float64 NumPy computation of the same step.

The model is a one-hidden-layer tanh MLP, small enough that its loss gradient is written out by
hand below; everything the engine does (``steps.make_grad_fn`` under ``parallel``'s pmap, with
and without micro-batches, then ``steps.make_update_fn``) runs unchanged.
"""
import importlib.util
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nfnets_jax import layers
from nfnets_jax import optim
from nfnets_jax.engine import parallel
from nfnets_jax.engine import sam
from nfnets_jax.engine import steps
from nfnets_jax.research import benchmark

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_CLASSES, HIDDEN, PIXELS = 5, 6, 4
SMOOTHING = 0.1
RHO = 0.5  # large, so that the perturbation changes the gradient well above float32 noise


def _mlp(images, is_training):
  del is_training
  x = images.reshape(images.shape[0], -1)
  h = jnp.tanh(hk.Linear(HIDDEN, name="hidden")(x))
  return {"logits": hk.Linear(NUM_CLASSES, name="linear")(h)}


FORWARD = hk.transform_with_state(_mlp)


def _config(rho=RHO, fraction=1.0, sync=False, freeze="", compute_dtype="float32", **opt):
  return ml_collections.ConfigDict(dict(
      compute_dtype=compute_dtype, label_smoothing=SMOOTHING, ema_decay=0.9,
      sam=dict(rho=rho, batch_fraction=fraction, sync=sync),
      optimizer=dict(dict(base_lr=0.5, lr_scale_batch=None, warmup_epochs=0.0, clipping=0.05,
                          freeze=freeze), **opt)))


def _params():
  params, _ = FORWARD.init(jax.random.PRNGKey(0), jnp.zeros((1, PIXELS, PIXELS, 1)), True)
  # Larger weights than Haiku's init, so the loss surface is curved enough for SAM to matter.
  return jax.tree.map(lambda p: p * 3.0 + 0.1, params)


def _batch(seed, n):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=n)
  return {"images": rng.normal(size=(n, PIXELS, PIXELS, 1)).astype(np.float32),
          "labels": np.eye(NUM_CLASSES, dtype=np.float32)[labels]}


# ---- float64 NumPy reference -------------------------------------------------------------

def _np(params):
  return {m: {k: np.asarray(v, np.float64) for k, v in d.items()} for m, d in params.items()}


def _np_grad(p, batch):
  """Gradient of the mean label-smoothed softmax cross-entropy of the MLP, by hand."""
  x = np.asarray(batch["images"], np.float64).reshape(len(batch["images"]), -1)
  y = np.asarray(batch["labels"], np.float64)
  y = y * (1 - SMOOTHING) + SMOOTHING / NUM_CLASSES
  h = np.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
  z = h @ p["linear"]["w"] + p["linear"]["b"]
  e = np.exp(z - z.max(-1, keepdims=True))
  dz = (e / e.sum(-1, keepdims=True) - y) / len(x)
  dpre = (dz @ p["linear"]["w"].T) * (1 - h ** 2)
  return {"linear": {"w": h.T @ dz, "b": dz.sum(0)},
          "hidden": {"w": x.T @ dpre, "b": dpre.sum(0)}}


def _tmap(f, *trees):
  return {m: {k: f(*(t[m][k] for t in trees)) for k in trees[0][m]} for m in trees[0]}


def _np_eps(g, rho, trained=("hidden", "linear")):
  g = {m: d if m in trained else _tmap(np.zeros_like, {m: d})[m] for m, d in g.items()}
  norm = np.sqrt(sum(np.sum(v ** 2) for d in g.values() for v in d.values()))
  return _tmap(lambda v: rho * v / norm, g)


def _np_sam(p, batch, rho, fraction=1.0, trained=("hidden", "linear")):
  """Descent gradient at p + rho g/|g|, g from the first ``fraction`` of ``batch``."""
  m = sam.ascent_size(len(batch["images"]), fraction)
  eps = _np_eps(_np_grad(p, {k: v[:m] for k, v in batch.items()}), rho, trained)
  return _np_grad(_tmap(np.add, p, eps), batch)


def _np_mean(trees):
  return _tmap(lambda *v: np.mean(v, axis=0), *trees)


def _assert_close(actual, expected, rtol=2e-5, atol=1e-6):
  for m in expected:
    for k in expected[m]:
      np.testing.assert_allclose(np.asarray(actual[m][k], np.float64), expected[m][k],
                                 rtol=rtol, atol=atol, err_msg=f"{m}/{k}")


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(a[m][k], np.float64) - b[m][k])))
             for m in b for k in b[m])


# ---- one device ----------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_sam_gradient_matches_float64_numpy(fraction):
  params, batch = _params(), _batch(0, 16)
  grad_fn = jax.jit(steps.make_grad_fn(FORWARD, _config(fraction=fraction)))
  grads, (_, metrics) = grad_fn(params, {}, batch, jax.random.PRNGKey(0))
  expected = _np_sam(_np(params), batch, RHO, fraction)
  _assert_close(grads, expected)
  # Not the plain gradient, and the fraction matters (the ascent uses 4 of 16 examples).
  assert _max_diff(grads, _np_grad(_np(params), batch)) > 1e-3
  if fraction < 1:
    assert _max_diff(grads, _np_sam(_np(params), batch, RHO)) > 1e-3
  # The metrics are the descent pass's, at the perturbed parameters.
  assert np.isfinite(float(metrics["loss"]))


def test_frozen_parameters_are_not_perturbed():
  params, batch = _params(), _batch(1, 16)
  grad_fn = jax.jit(steps.make_grad_fn(FORWARD, _config(freeze="^hidden/")))
  grads, _ = grad_fn(params, {}, batch, jax.random.PRNGKey(0))
  _assert_close(grads, _np_sam(_np(params), batch, RHO, trained=("linear",)))
  assert _max_diff(grads, _np_sam(_np(params), batch, RHO)) > 1e-4


def test_bfloat16_compute_keeps_float32_gradients_near_the_float64_step():
  params, batch = _params(), _batch(2, 16)
  grad_fn = jax.jit(steps.make_grad_fn(FORWARD, _config(fraction=0.5,
                                                         compute_dtype="bfloat16")))
  grads, _ = grad_fn(params, {}, batch, jax.random.PRNGKey(0))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  expected = _np_sam(_np(params), batch, RHO, 0.5)
  scale = max(float(np.max(np.abs(v))) for d in expected.values() for v in d.values())
  _assert_close(grads, expected, rtol=0, atol=0.03 * scale)


def test_rho_zero_is_bit_identical_to_plain_training():
  batch = _batch(3, 16)
  base = _config(rho=0.0)
  del base["sam"]  # a config from before SAM existed
  finals = []
  for config in (base, _config(rho=0.0, fraction=0.25, sync=True)):
    tx = optim.build_optimizer(config.optimizer, batch_size=16, steps_per_epoch=1,
                               total_steps=10)
    state = steps.make_train_state(_params(), {}, tx, jax.random.PRNGKey(1), with_ema=True)
    devices = jax.local_devices()[:2]
    step = parallel.make_train_step(steps.make_grad_fn(FORWARD, config, parallel.AXIS),
                                    steps.make_update_fn(tx, config), donate=False,
                                    devices=devices)
    rstate = parallel.replicate(state, devices)
    for _ in range(2):
      rstate, metrics = step(rstate, parallel.shard(
          jax.tree.map(lambda x: x.reshape((2, 8) + x.shape[1:]), batch), devices))
    finals.append(parallel.unreplicate((rstate, metrics)))
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
    np.testing.assert_array_equal(a, b)


def test_bad_sam_config_fails_clearly():
  with pytest.raises(ValueError, match="batch_fraction"):
    steps.make_grad_fn(FORWARD, _config(fraction=0.0))
  with pytest.raises(ValueError, match="rho"):
    steps.make_grad_fn(FORWARD, _config(rho=-0.1))
  with pytest.raises(ValueError, match="axis name"):
    steps.make_grad_fn(FORWARD, _config(sync=True))
  bad = _config()
  bad.sam.radius = 0.1
  with pytest.raises(ValueError, match="radius"):
    steps.make_grad_fn(FORWARD, bad)


# ---- eight devices -----------------------------------------------------------------------

def _grads_step(config, devices, accumulation=1):
  """The pmapped engine step with an update that returns the synchronised gradient."""
  grad_fn = steps.make_grad_fn(FORWARD, config, parallel.AXIS)
  return parallel.make_train_step(grad_fn, lambda state, grads, ms, metrics: (state, grads),
                                  accumulation_steps=accumulation, donate=False,
                                  devices=devices)


def _run(step, devices, batch):
  n = len(devices)
  state = {"params": _params(), "model_state": {}, "rng": jax.random.PRNGKey(1),
           "step": jnp.zeros([], jnp.int32)}
  sharded = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
  _, grads = step(parallel.replicate(state, devices), parallel.shard(sharded, devices))
  return parallel.unreplicate(grads)


def _split(batch, parts):
  return [{k: v.reshape((parts, -1) + v.shape[1:])[i] for k, v in batch.items()}
          for i in range(parts)]


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_per_replica_ascent_on_8_devices_is_the_per_device_hand_computation(fraction):
  devices = jax.local_devices()[:8]
  batch, p = _batch(4, 64), _np(_params())
  per_replica = _run(_grads_step(_config(fraction=fraction), devices), devices, batch)
  synced = _run(_grads_step(_config(fraction=fraction, sync=True), devices), devices, batch)
  # Per replica (the paper's form): each device perturbs with its own 8 examples' gradient.
  expected = _np_mean([_np_sam(p, b, RHO, fraction) for b in _split(batch, 8)])
  _assert_close(per_replica, expected)
  # Synchronised: one perturbation from the mean of the devices' ascent gradients.
  m = sam.ascent_size(8, fraction)
  ascent = _np_mean([_np_grad(p, {k: v[:m] for k, v in b.items()}) for b in _split(batch, 8)])
  shifted = _tmap(np.add, p, _np_eps(ascent, RHO))
  expected_sync = _np_mean([_np_grad(shifted, b) for b in _split(batch, 8)])
  _assert_close(synced, expected_sync)
  assert _max_diff(per_replica, expected_sync) > 1e-3


def test_micro_batches_are_replicas_4_devices_x_2_equal_8_devices():
  """k micro-batches per device: each micro-batch perturbs on its own (sam.py's docstring), so
  4 devices x 2 micro-batches of 8 compute the step of 8 devices x 8 examples."""
  batch, p = _batch(5, 64), _np(_params())
  config = _config(fraction=0.5)
  eight = jax.local_devices()[:8]
  four = jax.local_devices()[:4]
  g8 = _run(_grads_step(config, eight), eight, batch)
  g4x2 = _run(_grads_step(config, four, accumulation=2), four, batch)
  expected = _np_mean([_np_sam(p, b, RHO, 0.5) for b in _split(batch, 8)])
  _assert_close(g8, expected)
  _assert_close(g4x2, expected)
  # Not the same as one perturbation per device from its whole 16-example batch.
  per_device = _np_mean([_np_sam(p, b, RHO, 0.5) for b in _split(batch, 4)])
  assert _max_diff(g4x2, per_device) > 1e-3


def test_engine_step_applies_agc_and_ema_to_the_averaged_descent_gradient():
  """The whole step (SAM, fraction 0.5, freeze, AGC, weight decay, momentum, EMA) on 8 devices
  equals ``update_fn`` applied on one device to the float64 average of the devices' SAM
  gradients: AGC clips the averaged descent gradient against the unperturbed parameters."""
  devices = jax.local_devices()[:8]
  batch, params = _batch(6, 64), _params()
  config = _config(fraction=0.5, freeze="^hidden/b", weight_decay=1e-3)
  tx = optim.build_optimizer(config.optimizer, batch_size=64, steps_per_epoch=1, total_steps=10)
  state = steps.make_train_state(params, {}, tx, jax.random.PRNGKey(1), with_ema=True)
  update_fn = steps.make_update_fn(tx, config)
  step = parallel.make_train_step(steps.make_grad_fn(FORWARD, config, parallel.AXIS), update_fn,
                                  donate=False, devices=devices)
  sharded = jax.tree.map(lambda x: x.reshape((8, 8) + x.shape[1:]), batch)
  after, metrics = parallel.unreplicate(step(parallel.replicate(state, devices),
                                             parallel.shard(sharded, devices)))
  p = _np(params)

  def sam_grad(b):  # hidden/b is frozen: not perturbed, not in the norm
    g = _np_grad(p, {k: v[:4] for k, v in b.items()})
    g["hidden"]["b"] = np.zeros_like(g["hidden"]["b"])
    return _np_grad(_tmap(np.add, p, _np_eps(g, RHO)), b)

  grads = _np_mean([sam_grad(b) for b in _split(batch, 8)])
  grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
  expected, _ = jax.jit(update_fn)(state, grads, {}, {"loss": metrics["loss"]})
  assert metrics["agc/frac_clipped"] > 0
  for key in ("params", "ema_params"):
    _assert_close(after[key], _np(expected[key]), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(after["params"]["hidden"]["b"], params["hidden"]["b"])


@pytest.mark.parametrize("sync", [False, True])
def test_mesh_engine_gives_the_numbers_of_the_pmap_engine(sync):
  """Both engines run the same per-device code (``axis_name``: pmap's axis, the mesh's axes)."""
  if "mesh" not in getattr(parallel, "PARALLEL_MODES", ()):
    pytest.skip("the mesh engine (config.parallel='mesh') is not in this tree")
  batch, p = _batch(7, 64), _np(_params())
  config = _config(fraction=0.5, sync=sync)
  host = {"params": _params(), "model_state": {}, "rng": jax.random.PRNGKey(1),
          "step": np.zeros([], np.int32)}
  sharded = jax.tree.map(lambda x: x.reshape((8, 8) + x.shape[1:]), batch)
  out = {}
  for mode, fsdp in (("pmap", 1), ("mesh", 2)):
    engine = parallel.make_engine(ml_collections.ConfigDict(
        dict(parallel=mode, fsdp=fsdp, num_devices=8)))
    step = engine.make_train_step(steps.make_grad_fn(FORWARD, config, engine.axis_name),
                                  lambda state, grads, ms, metrics: (state, grads),
                                  accumulation_steps=2, donate=False)
    put_batch = getattr(engine, "put_batch", lambda b: parallel.shard(b, engine.devices))
    _, grads = step(engine.put_state(host), put_batch(sharded))
    out[mode] = engine.get(grads)
  for a, b in zip(jax.tree.leaves(out["pmap"]), jax.tree.leaves(out["mesh"])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  if not sync:  # 8 devices x 2 micro-batches of 4: sixteen replicas
    _assert_close(out["mesh"], _np_mean([_np_sam(p, b, RHO, 0.5) for b in _split(batch, 16)]))


def test_benchmark_and_nfnet_configs_carry_sam():
  spec = importlib.util.spec_from_file_location("cfg_nfnet_sam", ROOT / "configs" / "nfnet.py")
  nfnet = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(nfnet)
  config = nfnet.get_config("F6_sam")
  assert (config.model, config.sam.rho, config.sam.batch_fraction, config.sam.sync) == (
      "nfnet_f6", nfnet.SAM_RHO, nfnet.SAM_BATCH_FRACTION, False)
  assert nfnet.get_config("F6").sam.rho == 0.0
  cfg = benchmark.BenchConfig(sam_rho=0.05, sam_batch_fraction=0.2)
  assert dict(benchmark.engine_config(cfg).sam) == {"rho": 0.05, "batch_fraction": 0.2}
  assert "sam(rho=0.05, fraction=0.2)" in cfg.name
  with pytest.raises(ValueError, match="train step only"):
    benchmark.BenchConfig(mode="eval", sam_rho=0.05).validate()


def _mlp_with_dropout(images, is_training):
  x = images.reshape(images.shape[0], -1)
  h = jnp.tanh(hk.Linear(HIDDEN, name="hidden")(x))
  if is_training:
    h = layers.dropout(h, 0.5, hk.next_rng_key())
  return {"logits": hk.Linear(NUM_CLASSES, name="linear")(h)}


def test_dropout_masks_follow_the_examples_in_the_partial_ascent():
  """With dropout, the ascent pass on the first half of each micro-batch draws each example's
  mask from its global id (``layers.example_ids``), so 2 devices x 1 micro-batch and 1 device x
  2 micro-batches give the same SAM step."""
  batch = _batch(8, 16)

  def run(forward, n, k):
    devices = jax.local_devices()[:n]
    step = parallel.make_train_step(
        steps.make_grad_fn(forward, _config(fraction=0.5), parallel.AXIS),
        lambda state, grads, ms, metrics: (state, grads), accumulation_steps=k, donate=False,
        devices=devices)
    state = {"params": _params(), "model_state": {}, "rng": jax.random.PRNGKey(1),
             "step": jnp.zeros([], jnp.int32)}
    sharded = jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
    return jax.tree.leaves(parallel.unreplicate(
        step(parallel.replicate(state, devices), parallel.shard(sharded, devices))[1]))

  with_dropout = hk.transform_with_state(_mlp_with_dropout)
  two, one = run(with_dropout, 2, 1), run(with_dropout, 1, 2)
  for a, b in zip(two, one):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The masks are on: the same step without dropout differs.
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(two, run(FORWARD, 2, 1))) > 1e-3
