"""Masks, masked grouped-query attention and the G-SWA blend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plt import attention


def _keys_per_query(mask):
  return [list(np.flatnonzero(row)) for row in np.asarray(mask)]


def test_window_mask_keys():
  positions = jnp.arange(6)
  mask = attention.window_mask(positions, positions, 2)
  assert _keys_per_query(mask) == [[0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]


def test_window_mask_counts():
  positions = jnp.arange(6)
  mask = attention.window_mask(positions, positions, 2)
  np.testing.assert_array_equal(np.sum(mask, axis=-1), [1, 2, 2, 2, 2, 2])


@pytest.mark.parametrize("window", [1, 2, 3, 6, 10])
def test_window_mask_never_sees_future(window):
  positions = jnp.arange(6)
  mask = np.asarray(attention.window_mask(positions, positions, window))
  assert not np.any(np.triu(mask, k=1))


@pytest.mark.parametrize("window", [1, 2, 3, 6, 10])
def test_window_mask_sees_last_w_keys(window):
  positions = jnp.arange(6)
  mask = attention.window_mask(positions, positions, window)
  expected = [list(range(max(0, i - window + 1), i + 1)) for i in range(6)]
  assert _keys_per_query(mask) == expected


def test_causal_mask_keys():
  positions = jnp.arange(5)
  mask = attention.causal_mask(positions, positions)
  assert _keys_per_query(mask) == [list(range(i + 1)) for i in range(5)]


def test_exclusive_causal_mask_keys():
  positions = jnp.arange(5)
  mask = attention.causal_mask(positions, positions, inclusive=False)
  assert _keys_per_query(mask) == [list(range(i)) for i in range(5)]


def test_causal_mask_batched_decode_shape():
  # A decode step has [B, 1] query positions and [1, S] cache positions.
  mask = attention.causal_mask(jnp.array([[2], [4]]), jnp.arange(6)[None])
  assert mask.shape == (2, 1, 6)
  assert _keys_per_query(mask[:, 0]) == [[0, 1, 2], [0, 1, 2, 3, 4]]


def test_segment_mask_blocks_other_documents():
  mask = attention.segment_mask(jnp.array([[0, 0, 1, 1, 1]]))
  expected = np.array([[1, 1, 0, 0, 0]] * 2 + [[0, 0, 1, 1, 1]] * 3, bool)
  np.testing.assert_array_equal(mask[0], expected)


def _reference_attention(q, k, v, mask):
  """Compute float64 softmax attention with the key/value heads repeated per query group."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  group = q.shape[-2] // k.shape[-2]
  k = np.repeat(k, group, axis=-2)
  v = np.repeat(v, group, axis=-2)
  scores = np.einsum("...thk,...shk->...hts", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(np.asarray(mask)[..., None, :, :], scores, -np.inf)
  weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
  weights /= weights.sum(axis=-1, keepdims=True)
  return np.einsum("...hts,...shk->...thk", weights, v)


def test_attend_matches_reference():
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, 5, 4, 8))
  k = jax.random.normal(keys[1], (2, 5, 2, 8))
  v = jax.random.normal(keys[2], (2, 5, 2, 8))
  positions = jnp.arange(5)
  mask = attention.window_mask(positions, positions, 3)

  out = attention.attend(q, k, v, mask)
  np.testing.assert_allclose(out, _reference_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_attend_without_keys_returns_zeros():
  keys = jax.random.split(jax.random.key(1), 3)
  q = jax.random.normal(keys[0], (1, 4, 4, 8))
  k = jax.random.normal(keys[1], (1, 4, 2, 8))
  v = jax.random.normal(keys[2], (1, 4, 2, 8))
  positions = jnp.arange(4)
  # Query 0 has no earlier key under the exclusive mask.
  mask = attention.causal_mask(positions, positions, inclusive=False)

  out = np.asarray(attention.attend(q, k, v, mask))
  np.testing.assert_array_equal(out[:, 0], np.zeros((1, 4, 8)))
  expected = _reference_attention(q[:, 1:], k, v, mask[1:])
  np.testing.assert_allclose(out[:, 1:], expected, rtol=1e-5, atol=1e-6)


def test_attend_without_keys_has_finite_grad():
  keys = jax.random.split(jax.random.key(2), 3)
  q = jax.random.normal(keys[0], (1, 3, 4, 8))
  k = jax.random.normal(keys[1], (1, 3, 2, 8))
  v = jax.random.normal(keys[2], (1, 3, 2, 8))
  positions = jnp.arange(3)
  mask = attention.causal_mask(positions, positions, inclusive=False)

  grads = jax.grad(lambda q, k, v: jnp.sum(attention.attend(q, k, v, mask)),
                   argnums=(0, 1, 2))(q, k, v)
  for name, grad in zip("qkv", grads):
    assert np.all(np.isfinite(grad)), name


def test_gswa_blend_zero_logits_is_exact_mean():
  keys = jax.random.split(jax.random.key(3), 2)
  y_global = jax.random.normal(keys[0], (2, 5, 4, 8))
  y_local = jax.random.normal(keys[1], (2, 5, 4, 8))

  out = attention.gswa_blend(jnp.zeros((2, 5, 4)), y_global, y_local)
  np.testing.assert_array_equal(out, 0.5 * (y_global + y_local))


def test_gswa_blend_fixed_half_is_exact_mean():
  keys = jax.random.split(jax.random.key(3), 2)
  y_global = jax.random.normal(keys[0], (2, 5, 4, 8))
  y_local = jax.random.normal(keys[1], (2, 5, 4, 8))

  out = attention.gswa_blend(None, y_global, y_local)
  np.testing.assert_array_equal(out, 0.5 * (y_global + y_local))


def test_gswa_blend_gate_weights_global_per_head():
  keys = jax.random.split(jax.random.key(4), 3)
  logits = jax.random.normal(keys[0], (2, 5, 4))
  y_global = jax.random.normal(keys[1], (2, 5, 4, 8))
  y_local = jax.random.normal(keys[2], (2, 5, 4, 8))

  gate = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))[..., None]
  expected = gate * np.asarray(y_global) + (1.0 - gate) * np.asarray(y_local)
  out = attention.gswa_blend(logits, y_global, y_local)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
