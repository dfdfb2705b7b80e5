"""Decode-state layout, prefill contents and KV-cache byte accounting."""

from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

import plt
from tests.plt import helpers

BATCH = 2
MAX_LEN = 16


def _baseline_bytes(dtype="float32", max_len=MAX_LEN):
  config = helpers.make_config(variant="baseline", num_loops=1, dtype=dtype)
  return plt.kv_cache_bytes(config, BATCH, max_len)


def test_baseline_bytes_from_shapes():
  # keys and values: N layers x B x S x G heads x K dims x 4 bytes.
  assert _baseline_bytes() == 2 * 2 * BATCH * MAX_LEN * 2 * 8 * 4


@pytest.mark.parametrize("overrides", [dict(num_loops=2), dict(num_loops=3),
                                       dict(num_loops=3, gswa="none")])
def test_shared_cache_shape_equals_baseline(overrides):
  baseline = plt.init_decode_state(helpers.make_config(variant="baseline", num_loops=1), BATCH,
                                   MAX_LEN)
  state = plt.init_decode_state(helpers.make_config(**overrides), BATCH, MAX_LEN)
  assert state.keys.shape == baseline.keys.shape
  assert state.values.shape == baseline.values.shape


@pytest.mark.parametrize("num_loops", [2, 3])
@pytest.mark.parametrize("window", [1, 4, 5, MAX_LEN])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_plt_bytes_formula(num_loops, window, dtype):
  config = helpers.make_config(num_loops=num_loops, window=window, dtype=dtype)
  expected = _baseline_bytes(dtype) * (1 + Fraction((num_loops - 1) * window, MAX_LEN))
  assert plt.kv_cache_bytes(config, BATCH, MAX_LEN) == expected


def test_plt_ring_capped_at_max_len():
  config = helpers.make_config(num_loops=3, window=64)
  assert plt.kv_cache_bytes(config, BATCH, MAX_LEN) == 3 * _baseline_bytes()


@pytest.mark.parametrize("num_loops", [1, 2, 3])
def test_loop_bytes_scale_with_loops(num_loops):
  config = helpers.make_config(variant="loop", num_loops=num_loops)
  assert plt.kv_cache_bytes(config, BATCH, MAX_LEN) == num_loops * _baseline_bytes()


@pytest.mark.parametrize("num_loops", [2, 3])
def test_unshared_plt_bytes_scale_with_loops(num_loops):
  config = helpers.make_config(num_loops=num_loops, kv_share=False, gswa="none")
  assert plt.kv_cache_bytes(config, BATCH, MAX_LEN) == num_loops * _baseline_bytes()


def test_plt_without_local_branch_bytes_equal_baseline():
  config = helpers.make_config(num_loops=3, gswa="none")
  assert plt.kv_cache_bytes(config, BATCH, MAX_LEN) == _baseline_bytes()


def test_init_decode_state_plt_layout():
  config = helpers.make_config(num_loops=3, window=4)
  state = plt.init_decode_state(config, BATCH, MAX_LEN)

  assert state.keys.shape == (1, 2, BATCH, MAX_LEN, 2, 8)
  assert state.local_keys.shape == (2, 2, BATCH, 4, 2, 8)
  assert state.local_values.shape == (2, 2, BATCH, 4, 2, 8)
  assert state.carry.shape == (2, BATCH, 32)
  np.testing.assert_array_equal(state.local_pos, np.full((BATCH, 4), -1))
  np.testing.assert_array_equal(state.pos, np.zeros(BATCH))
  assert not np.any(state.carry)


@pytest.mark.parametrize("overrides", [dict(variant="loop", num_loops=3),
                                       dict(variant="baseline", num_loops=1)])
def test_init_decode_state_without_rings(overrides):
  state = plt.init_decode_state(helpers.make_config(**overrides), BATCH, MAX_LEN)
  assert state.local_keys is None
  assert state.local_values is None
  assert state.local_pos is None
  assert state.carry is None


def test_init_decode_state_loop_layout():
  state = plt.init_decode_state(helpers.make_config(variant="loop", num_loops=3), BATCH, MAX_LEN)
  assert state.keys.shape == (3, 2, BATCH, MAX_LEN, 2, 8)


def test_init_decode_state_bfloat16_caches():
  state = plt.init_decode_state(helpers.make_config(dtype="bfloat16"), BATCH, MAX_LEN)
  assert state.keys.dtype == np.dtype("bfloat16")
  assert state.local_keys.dtype == np.dtype("bfloat16")


def test_init_decode_state_rejects_zero_max_len():
  with pytest.raises(ValueError, match="max_len"):
    plt.init_decode_state(helpers.make_config(), BATCH, 0)


def test_prefill_rejects_long_prompt():
  config = helpers.make_config()
  with pytest.raises(ValueError, match="max_len"):
    plt.prefill(helpers.make_params(config), helpers.random_tokens(0, 1, 9), config, 8)


@pytest.fixture(scope="module")
def prefilled():
  """Prefill 6 tokens into plt with 3 loops and window 4, and return state and loop outputs."""
  config = helpers.make_config(num_loops=3, window=4)
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(20, BATCH, 6)
  _, state = helpers.prefill(params, tokens, config, MAX_LEN)
  _, outputs = helpers.forward_with_outputs(params, tokens, config)
  return state, outputs


def test_prefill_ring_positions(prefilled):
  state, _ = prefilled
  # Slot p mod 4 contains the latest prompt position p: 4, 5, 2, 3.
  np.testing.assert_array_equal(state.local_pos, [[4, 5, 2, 3]] * BATCH)


def test_prefill_ring_keys(prefilled):
  state, outputs = prefilled
  for slot, position in enumerate([4, 5, 2, 3]):
    helpers.assert_decode_close(state.local_keys[:, :, :, slot], outputs.keys[1:, :, :, position],
                                err_msg=f"slot {slot}")
    helpers.assert_decode_close(state.local_values[:, :, :, slot],
                                outputs.values[1:, :, :, position], err_msg=f"slot {slot}")


def test_prefill_global_cache(prefilled):
  state, outputs = prefilled
  helpers.assert_decode_close(state.keys[0, :, :, :6], outputs.keys[0])
  helpers.assert_decode_close(state.values[0, :, :, :6], outputs.values[0])
  assert not np.any(state.keys[:, :, :, 6:])


def test_prefill_carry(prefilled):
  state, outputs = prefilled
  # carry[l - 2] is h^(l-1) at the last prompt position.
  helpers.assert_decode_close(state.carry, outputs.hidden[:-1, :, -1])
  np.testing.assert_array_equal(state.pos, [6] * BATCH)


def test_prefill_short_row_ring():
  config = helpers.make_config(num_loops=3, window=4)
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(20, BATCH, 6)
  _, state = helpers.prefill(params, tokens, config, MAX_LEN, jnp.array([2, 6]))
  # Row 0 contains only positions 0 and 1, so the other slots stay empty.
  np.testing.assert_array_equal(state.local_pos, [[0, 1, -1, -1], [4, 5, 2, 3]])
  np.testing.assert_array_equal(state.pos, [2, 6])
