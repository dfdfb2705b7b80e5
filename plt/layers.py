"""Building blocks of the decoder: RMSNorm, RoPE, projections, SwiGLU.

Axis letters: B batch, T query positions, S key positions, D model width,
H query heads, G key/value heads, K head dim, F FFN width.
"""

from typing import Callable

import jax
import jax.numpy as jnp

DotGeneral = Callable[..., jax.Array]


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32: ``x / sqrt(mean(x^2) + eps) * scale``."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (normed * scale).astype(x.dtype)


def dense(x: jax.Array, w: jax.Array, dot_general: DotGeneral) -> jax.Array:
  """``x @ w`` over the last axis of x through an injectable dot_general."""
  w = w.astype(x.dtype)
  return dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) of x [..., T, heads, K].

  Args:
    x: queries or keys.
    positions: integer positions [..., T], broadcastable to x's leading axes.
    base: frequency base.
  """
  k = x.shape[-1]
  freqs = base ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)  # [K/2]
  angles = positions.astype(jnp.float32)[..., None, None] * freqs  # [..., T, 1, K/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : k // 2], x32[..., k // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def swiglu(x: jax.Array, w_gate, w_up, w_down, dot_general: DotGeneral) -> jax.Array:
  """SwiGLU FFN: ``(silu(x W_gate) * (x W_up)) W_down``."""
  hidden = jax.nn.silu(dense(x, w_gate, dot_general)) * dense(x, w_up, dot_general)
  return dense(hidden, w_down, dot_general)
