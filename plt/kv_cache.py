"""The explicit decode state: full KV caches, local ring buffers and CLP carries.

Axis letters: C full caches per layer, N layers, B batch, S max length, W ring
size, G key/value heads, K head dim, D model width. C is 1 when loop 1's cache
is shared or the model is not looped, else L. Positions are 0-based.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from plt import config as config_lib


@flax.struct.dataclass
class DecodeState:
  """Everything a decode step reads and writes, with static shapes.

  Attributes:
    keys: [C, N, B, S, G, K] full-length key caches (post-RoPE).
    values: [C, N, B, S, G, K].
    local_keys: [L-1, N, B, W, G, K] ring buffers of loops >= 2, or None.
      Slot ``p mod W`` contains position p.
    local_values: same shape as local_keys, or None.
    local_pos: [B, W] int32 position held by each ring slot, -1 when empty.
    carry: [L-1, B, D] CLP carries: row l >= 2 of the next step reads
      ``carry[l - 2] = h^(l-1)`` of the previous position; None without CLP.
    pos: [B] int32 position of the next token of each row.
  """

  keys: jax.Array
  values: jax.Array
  local_keys: jax.Array | None
  local_values: jax.Array | None
  local_pos: jax.Array | None
  carry: jax.Array | None
  pos: jax.Array


def ring_size(config: config_lib.ModelConfig, max_len: int) -> int:
  """Slots of each local ring buffer: the window, capped at max_len."""
  return min(config.window, max_len)


def init_decode_state(config: config_lib.ModelConfig, batch: int, max_len: int) -> DecodeState:
  """Create an empty decode state for `batch` rows of up to `max_len` tokens."""
  if max_len < 1:
    raise ValueError(f"invalid max_len {max_len}; expected a positive int")
  c = config
  dtype = c.compute_dtype
  kv_shape = (c.num_caches, c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
  local_keys = local_values = local_pos = carry = None
  if c.has_local_branch:
    w = ring_size(c, max_len)
    ring_shape = (c.num_loops - 1, c.num_layers, batch, w, c.num_kv_heads, c.head_dim)
    local_keys = jnp.zeros(ring_shape, dtype)
    local_values = jnp.zeros(ring_shape, dtype)
    local_pos = jnp.full((batch, w), -1, jnp.int32)
  if c.uses_clp:
    carry = jnp.zeros((c.num_loops - 1, batch, c.d_model), dtype)
  return DecodeState(keys=jnp.zeros(kv_shape, dtype), values=jnp.zeros(kv_shape, dtype),
                     local_keys=local_keys, local_values=local_values,
                     local_pos=local_pos, carry=carry, pos=jnp.zeros((batch,), jnp.int32))


def kv_cache_bytes(config: config_lib.ModelConfig, batch: int, max_len: int) -> int:
  """Bytes of the key/value arrays of the decode state (full caches and rings).

  Computed from the shapes of the real decode-state arrays. Carries and
  positions are not keys or values and are not counted. For PLT with a shared
  cache this is ``baseline * (1 + (L-1) * w / max_len)``; for the vanilla loop
  it is ``L * baseline``. A window longer than max_len is capped at max_len,
  so then PLT also costs ``L * baseline``.
  """
  shapes = jax.eval_shape(lambda: init_decode_state(config, batch, max_len))
  arrays = [shapes.keys, shapes.values, shapes.local_keys, shapes.local_values]
  return int(sum(np.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays if a is not None))
