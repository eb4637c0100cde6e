"""Keys drawn ahead (``models/draw_ahead.py``): exactly Haiku's stream, from one scan."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnets_jax.models import draw_ahead


def test_key_chain_is_haikus_split_rule():
  key = jax.random.PRNGKey(7)
  last, subs = draw_ahead.key_chain(key, 4)
  k, expected = key, []
  for _ in range(4):
    k, sub = jax.random.split(k)
    expected.append(sub)
  np.testing.assert_array_equal(subs, np.stack(expected))
  np.testing.assert_array_equal(last, k)


@pytest.mark.parametrize("queued", [2, 6, 9])
def test_queued_keys_are_the_keys_haiku_would_draw(queued):
  def draws(queue):
    def f():
      if queue:
        assert draw_ahead.queue_keys(queue)
        assert draw_ahead.pending_keys() == queue
      return jnp.stack([hk.next_rng_key() for _ in range(7)])
    return hk.transform(f).apply({}, jax.random.PRNGKey(3))
  plain = draws(0)
  assert len({tuple(k) for k in np.asarray(plain)}) == 7
  np.testing.assert_array_equal(draws(queued), plain)
  np.testing.assert_array_equal(jax.jit(lambda: draws(queued))(), plain)


def test_without_a_key_sequence_nothing_is_queued():
  assert hk.transform(lambda: draw_ahead.queue_keys(4)).apply({}, None) is False


def test_init_with_keys_takes_the_given_keys_also_vmapped():
  init = hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
  keys = jax.random.split(jax.random.PRNGKey(5), 3)

  def f():
    one_by_one = jnp.stack([draw_ahead.init_with_keys(init, (4, 6), jnp.float32, k[None], 1)
                            for k in keys])
    before = hk.maybe_get_rng_sequence_state()
    vmapped = jax.vmap(lambda k: draw_ahead.init_with_keys(init, (4, 6), jnp.float32,
                                                           k[None], 1))(keys)
    assert hk.maybe_get_rng_sequence_state() is not None
    assert len(before[1]) == len(hk.maybe_get_rng_sequence_state()[1])  # outer stream untouched
    return one_by_one, vmapped

  one_by_one, vmapped = hk.transform(f).apply({}, jax.random.PRNGKey(0))
  # Haiku's rule: fan-in 4, truncated at 2 standard deviations and rescaled to unit variance.
  expected = np.stack([np.asarray(jax.random.truncated_normal(k, -2.0, 2.0, (4, 6)))
                       / np.sqrt(4) / 0.87962566103423978 for k in keys])
  np.testing.assert_allclose(one_by_one, expected, rtol=1e-6)
  np.testing.assert_array_equal(vmapped, one_by_one)
