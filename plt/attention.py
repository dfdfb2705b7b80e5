"""Masked grouped-query attention and the masks of causal, windowed and G-SWA attention.

Axis letters: B batch, T query positions, S key positions, H query heads,
G key/value heads, K head dim. Positions are 0-based here.
"""

import jax
import jax.numpy as jnp


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention of queries over keys where `mask` is True.

  Args:
    q: [..., T, H, K] queries.
    k: [..., S, G, K] keys; H is a multiple of G (grouped-query attention).
    v: [..., S, G, K] values.
    mask: [..., T, S] bool, broadcastable against the leading axes.

  Returns:
    [..., T, H, K] in q's dtype. A query with no visible key gets zeros, not
    the NaN of a softmax over an empty set.
  """
  *lead, t, h, d = q.shape
  g = k.shape[-2]
  qg = q.reshape(*lead, t, g, h // g, d).astype(jnp.float32)
  scores = jnp.einsum("...tgrk,...sgk->...grts", qg, k.astype(jnp.float32)) / jnp.sqrt(d)
  m = mask[..., None, None, :, :]  # [..., 1, 1, T, S]
  scores = jnp.where(m, scores, -jnp.inf)
  top = jnp.max(scores, axis=-1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  weights = jnp.where(m, jnp.exp(scores - top), 0.0)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  weights = weights / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("...grts,...sgk->...tgrk", weights, v.astype(jnp.float32))
  return out.reshape(*lead, t, h, d).astype(q.dtype)


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, inclusive: bool = True) -> jax.Array:
  """Keys j visible to queries i: j <= i (or j < i when not inclusive). [..., T, S]."""
  diff = q_pos[..., :, None] - k_pos[..., None, :]
  return diff >= 0 if inclusive else diff > 0


def window_mask(q_pos: jax.Array, k_pos: jax.Array, window: int) -> jax.Array:
  """Keys j with i - window < j <= i: the window of w keys ending at the query."""
  diff = q_pos[..., :, None] - k_pos[..., None, :]
  return (diff >= 0) & (diff < window)


def segment_mask(segment_ids: jax.Array | None) -> jax.Array | bool:
  """Keys in the query's own document, [B, T, S]; True when no segments given."""
  if segment_ids is None:
    return True
  return segment_ids[:, :, None] == segment_ids[:, None, :]


def gswa_blend(gate_logits: jax.Array | None, y_global: jax.Array,
               y_local: jax.Array) -> jax.Array:
  """Blend per head: ``g * y_global + (1 - g) * y_local`` with ``g = sigmoid(logit)``.

  Args:
    gate_logits: [..., T, H] logits, or None for the fixed 0.5 blend.
    y_global, y_local: [..., T, H, K].
  """
  if gate_logits is None:
    return 0.5 * (y_global + y_local)
  g = jax.nn.sigmoid(gate_logits.astype(jnp.float32))[..., None]
  out = g * y_global.astype(jnp.float32) + (1.0 - g) * y_local.astype(jnp.float32)
  return out.astype(y_global.dtype)
