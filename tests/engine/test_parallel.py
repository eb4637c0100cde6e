"""The two engines (``engine/parallel.py``) on 8 simulated devices, through the real train loop.

Same global batch, same config, with dropout and stochastic depth on: pmap on 1 and 8 devices,
the mesh engine replicated (fsdp=1), fully sharded (fsdp=8) and 2 x 4, and gradient accumulation
give the same parameters (float32 reduction order only). A run saved under pmap resumes under
the mesh engine (fsdp=8) to the uninterrupted run's result. Multi-process: test_train_processes.
"""
import pathlib
import shutil
import sys

import jax
import ml_collections
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from configs import synthetic  # noqa: E402
from nfnets_jax import layers
from nfnets_jax.engine import parallel
from nfnets_jax.engine import train
from nfnets_jax.engine import validation
from nfnets_jax.weights import checkpoint

STEPS = 3


def stochastic_config(**overrides):
  c = synthetic.get_config("tiny")
  c.model_kwargs = ml_collections.ConfigDict(dict(stochdepth_rate=0.5, drop_rate=0.3))
  c.num_train_steps = STEPS
  c.update_from_flattened_dict(overrides)
  return c


def train_steps(config, workdir):
  """Runs the real train loop (no final evaluation); returns the host state."""
  setup = validation.validate_config(config)
  run = train.build_run(config, str(workdir), setup)
  try:
    state = train.restore_or_init(run)
    rstate, result = train.train_loop(run, run.engine.put_state(state), int(state["step"]))
    assert result.step == setup.total_steps
    return run.engine.get_state(rstate)
  finally:
    run.ckpt.close()
    run.writer.close()


def assert_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def max_relative_difference(a, b):
  return max(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """pmap on one device: the state every other layout must reproduce."""
  return train_steps(stochastic_config(num_devices=1), tmp_path_factory.mktemp("one"))


# ~20 s each on 2 cores: two in the fast suite, every one in `make test-all`.
SLOW = pytest.mark.slow
LAYOUTS = [
    pytest.param(dict(parallel="mesh", fsdp=8), id="mesh_fsdp8"),
    pytest.param(dict(parallel="mesh", fsdp=4, per_device_batch_size=1),
                 id="mesh_2x4_accumulate_2"),
    pytest.param(dict(num_devices=8), id="pmap_8", marks=SLOW),
    pytest.param(dict(num_devices=1, per_device_batch_size=4), id="pmap_1_accumulate_4",
                 marks=SLOW),
    pytest.param(dict(parallel="mesh", fsdp=1), id="mesh_fsdp1", marks=SLOW),
    pytest.param(dict(parallel="mesh", fsdp=4), id="mesh_2x4", marks=SLOW),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_same_parameters(layout, reference, tmp_path, monkeypatch):
  monkeypatch.setattr(parallel, "MIN_SHARDED_SIZE", 16)  # shard the tiny model's arrays too
  state = train_steps(stochastic_config(**layout), tmp_path)
  for key in ("params", "ema_params", "opt_state"):
    assert_close(state[key], reference[key])
  assert int(state["step"]) == STEPS


@pytest.mark.slow
def test_the_masks_matter(reference, tmp_path):
  # Without dropout and stochastic depth the parameters differ: equality above is not trivial.
  plain = stochastic_config(num_devices=1)
  plain.model_kwargs = ml_collections.ConfigDict(dict(stochdepth_rate=0.0, drop_rate=0.0))
  state = train_steps(plain, tmp_path)
  assert max_relative_difference(state["params"], reference["params"]) > 1e-3


def test_pmap_run_resumes_under_the_mesh_engine(reference, tmp_path, monkeypatch):
  # Two steps under pmap (8 devices), checkpoint 2 kept; step 3 under mesh fsdp=8.
  monkeypatch.setattr(parallel, "MIN_SHARDED_SIZE", 16)
  workdir = tmp_path / "run"
  first = stochastic_config(num_devices=8, checkpoint_every_steps=1)
  train_steps(first, workdir)
  ckpt = checkpoint.Checkpointer(str(workdir / train.CHECKPOINT_DIR), keep=3, async_save=False)
  assert ckpt.latest_step() == STEPS
  ckpt.close()
  # Drop the final checkpoint as a preemption after step 2 would have.
  shutil.rmtree(workdir / train.CHECKPOINT_DIR / str(STEPS))
  resumed = train_steps(stochastic_config(parallel="mesh", fsdp=8, checkpoint_every_steps=1),
                        workdir)
  for key in ("params", "ema_params", "opt_state"):
    assert_close(resumed[key], reference[key])


def test_fsdp_shards_the_state_and_the_memory_falls(monkeypatch):
  config = stochastic_config(parallel="mesh", fsdp=8)
  engine = parallel.make_engine(config)
  state = {"w": np.arange(64 * 32, dtype=np.float32).reshape(64, 32),
           "b": np.ones((32,), np.float32), "step": np.int32(3)}
  placed = engine.put_state(state)
  assert placed["w"].addressable_shards[0].data.shape == (8, 32)  # largest divisible dim
  assert placed["b"].addressable_shards[0].data.shape == (32,)  # small: replicated
  assert placed["step"].addressable_shards[0].data.shape == ()
  back = engine.get_state(placed)
  np.testing.assert_array_equal(back["w"], state["w"])
  # Specs: the largest dimension the axis divides (the last of equals), else replicated.
  P = jax.sharding.PartitionSpec
  assert parallel.fsdp_spec((3, 3, 64, 128), 8) == P(None, None, None, "fsdp")
  assert parallel.fsdp_spec((256, 256), 8) == P(None, "fsdp")
  assert parallel.fsdp_spec((3, 3, 3, 7), 8) == P()
  assert parallel.fsdp_spec((4096, 3), 1) == P()


def test_example_ids_make_masks_independent_of_the_split():
  # Drawing for 8 examples at once equals drawing for two halves with their global ids.
  rng = jax.random.PRNGKey(7)
  x = np.ones((8, 4, 4, 3), np.float32)
  whole = layers.drop_examples(x, 0.5, rng)
  with layers.example_ids(np.arange(4, 8, dtype=np.int32)):
    second = layers.drop_examples(x[4:], 0.5, rng)
  np.testing.assert_array_equal(whole[4:], second)
  kept = np.asarray(whole[:, 0, 0, 0])
  assert 0 < kept.sum() < 8  # some dropped, some kept
  with layers.example_ids(np.arange(3, dtype=np.int32)):
    with pytest.raises(ValueError, match="example_ids has shape"):
      layers.drop_examples(x, 0.5, rng)


@pytest.mark.parametrize("overrides", [dict(num_devices=1), dict(num_devices=8),
                                       dict(parallel="mesh", fsdp=8)],
                         ids=["pmap_1", "pmap_8", "mesh_fsdp8"])
def test_the_placed_state_can_be_donated(overrides, monkeypatch):
  # On the CPU, device_put of a numpy array shares its memory and XLA cannot donate it: the
  # first step would allocate a second state. put_state hands XLA's own buffers; the donated
  # input is consumed (deleted), and the host arrays are untouched.
  monkeypatch.setattr(parallel, "MIN_SHARDED_SIZE", 16)
  engine = parallel.make_engine(stochastic_config(**overrides))
  host = {"w": np.arange(64 * 32, dtype=np.float32).reshape(64, 32), "step": np.int32(3)}
  placed = engine.put_state(host)
  assert not any(x.is_deleted() for x in jax.tree.leaves(placed))
  step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  out = step(placed)
  assert all(x.is_deleted() for x in jax.tree.leaves(placed))
  np.testing.assert_array_equal(engine.get_state(out)["w"], host["w"] + 1)
  np.testing.assert_array_equal(host["w"], np.arange(64 * 32).reshape(64, 32))


@pytest.mark.parametrize("overrides", [dict(num_devices=1), dict(num_devices=8),
                                       dict(parallel="mesh", fsdp=8)],
                         ids=["pmap_1", "pmap_8", "mesh_fsdp8"])
def test_a_fresh_state_is_created_on_the_devices(overrides, monkeypatch, tmp_path):
  # A fresh start computes the state where the engine keeps it (train.start_state): the same
  # values and placement as the host state put there, in buffers the first step can donate.
  monkeypatch.setattr(parallel, "MIN_SHARDED_SIZE", 16)
  config = stochastic_config(**overrides)
  setup = validation.validate_config(config)
  run = train.build_run(config, str(tmp_path), setup)
  try:
    host = train.initial_state(run.forward, run.tx, config, setup.image_shape)
    placed, step = train.start_state(run)
    assert step == 0
    jax.tree.map(np.testing.assert_array_equal, run.engine.get_state(placed), host)
    put = run.engine.put_state(host)
    shards = lambda t: jax.tree.map(  # noqa: E731
        lambda a: [(s.device.id, s.data.shape) for s in a.addressable_shards], t)
    assert shards(placed) == shards(put)
    jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(placed)
    assert all(x.is_deleted() for x in jax.tree.leaves(placed))
  finally:
    run.ckpt.close()
    run.writer.close()
