"""Parameters, the shared block stack and the training forward of all variants.

Axis letters: B batch, S sequence, D model width, H query heads, G key/value
heads, K head dim, N layers, L loops, V vocabulary.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from plt import attention
from plt import config as config_lib
from plt import layers

Params = dict[str, Any]
# attn_fn(layer_params, x_in, q, k, v, extra, state) -> (y, state, output):
# the attention of one layer, given the layer's input and its projected and
# rotated q [..., T, H, K], k and v [..., T, G, K].
AttnFn = Callable[..., tuple[jax.Array, Any, Any]]


def init_params(key: jax.Array, config: config_lib.ModelConfig) -> Params:
  """Initialize parameters: N(0, init_std) weights, unit norms, zero gates.

  Layer parameters are stacked on a leading axis of size N for `lax.scan`.
  Zero gate weights and biases give g = 0.5, the even blend of both branches.
  """
  c = config
  n, d, h, g, k, f = c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.ffn_dim
  keys = iter(jax.random.split(key, 9))

  def normal(shape):
    return c.init_std * jax.random.normal(next(keys), shape, jnp.float32)

  stack = {
      "attn_norm": jnp.ones((n, d)),
      "wq": normal((n, d, h * k)),
      "wk": normal((n, d, g * k)),
      "wv": normal((n, d, g * k)),
      "wo": normal((n, h * k, d)),
      "mlp_norm": jnp.ones((n, d)),
      "w_gate": normal((n, d, f)),
      "w_up": normal((n, d, f)),
      "w_down": normal((n, f, d)),
  }
  if c.has_gate_params:
    if c.gate_input == "hidden":
      stack["gate_norm"] = jnp.ones((n, d))
      stack["gate_w"] = jnp.zeros((n, d, h))
    else:
      stack["gate_w"] = jnp.zeros((n, h, k))
    stack["gate_b"] = jnp.zeros((n, h))
  params = {"embed": normal((c.vocab_size, d)), "final_norm": jnp.ones((d,)), "layers": stack}
  if not c.tie_embeddings:
    params["lm_head"] = normal((d, c.vocab_size))
  return params


def gate_logits(lp, x_in, q, config, dot_general) -> jax.Array | None:
  """G-SWA gate logits [..., T, H], or None for the fixed 0.5 blend."""
  if config.gswa == "fixed_half":
    return None
  if config.gate_input == "hidden":
    normed = layers.rms_norm(x_in, lp["gate_norm"], config.rms_eps)
    logits = layers.dense(normed, lp["gate_w"], dot_general)
  else:
    logits = jnp.einsum("...hk,hk->...h", q.astype(jnp.float32), lp["gate_w"])
  return logits + lp["gate_b"]


def _layer(lp, x, positions, attn_fn: AttnFn, extra, state, config, dot_general):
  c = config
  lead = x.shape[:-1]
  h = layers.rms_norm(x, lp["attn_norm"], c.rms_eps)
  q = layers.dense(h, lp["wq"], dot_general).reshape(*lead, c.num_heads, c.head_dim)
  k = layers.dense(h, lp["wk"], dot_general).reshape(*lead, c.num_kv_heads, c.head_dim)
  v = layers.dense(h, lp["wv"], dot_general).reshape(*lead, c.num_kv_heads, c.head_dim)
  q = layers.rope(q, positions, c.rope_base)
  k = layers.rope(k, positions, c.rope_base)
  y, state, output = attn_fn(lp, x, q, k, v, extra, state)
  x = x + layers.dense(y.reshape(*lead, c.num_heads * c.head_dim), lp["wo"], dot_general)
  h = layers.rms_norm(x, lp["mlp_norm"], c.rms_eps)
  x = x + layers.swiglu(h, lp["w_gate"], lp["w_up"], lp["w_down"], dot_general)
  return x, state, output


def block_stack(stack_params, x, positions, attn_fn: AttnFn, extras, state, config,
                dot_general):
  """Run the N shared layers once, as a `lax.scan` over the layer axis.

  Args:
    stack_params: layer parameters stacked on axis 0.
    x: [..., T, D] input rows.
    positions: [..., T] RoPE positions.
    attn_fn: the attention of one layer (see `AttnFn`).
    extras: per-layer inputs of attn_fn, stacked on axis 0 (e.g. loop 1's
      keys and values, or the layer index).
    state: a pytree threaded through the layers (e.g. the decode state).

  Returns:
    (x, state, outputs stacked over layers).
  """
  def body(carry, xs):
    x, state = carry
    lp, extra = xs
    x, state, output = _layer(lp, x, positions, attn_fn, extra, state, config, dot_general)
    return (x, state), output

  (x, state), outputs = jax.lax.scan(body, (x, state), (stack_params, extras))
  return x, state, outputs


def embed(params, tokens, config) -> jax.Array:
  """Token embeddings in the compute dtype."""
  return params["embed"][tokens].astype(config.compute_dtype)


def head(params, h, config) -> jax.Array:
  """Float32 logits from the final RMSNorm; the LM head is never quantized."""
  h = layers.rms_norm(h, params["final_norm"], config.rms_eps).astype(jnp.float32)
  if config.tie_embeddings:
    return jnp.einsum("...d,vd->...v", h, params["embed"])
  return jnp.einsum("...d,dv->...v", h, params["lm_head"])


def clp_input(params, e, carried, config) -> jax.Array:
  """CLP row input ``emb_scale * e + hidden_scale * N(carried)``."""
  if config.normalize_per_loop:
    carried = layers.rms_norm(carried, params["final_norm"], config.rms_eps)
  return (config.emb_scale * e + config.hidden_scale * carried).astype(e.dtype)


def shift_right(h, segment_ids, config) -> jax.Array:
  """h at the previous position, zero at position 0 and at document starts."""
  shifted = jnp.concatenate([jnp.zeros_like(h[:, :1]), h[:, :-1]], axis=1)
  if segment_ids is not None and config.reset_on_doc_start:
    same_doc = segment_ids[:, 1:] == segment_ids[:, :-1]
    keep = jnp.concatenate([jnp.zeros_like(same_doc[:, :1]), same_doc], axis=1)
    shifted = jnp.where(keep[..., None], shifted, 0)
  return shifted


class LoopOutputs(NamedTuple):
  """Per-loop results of the training forward, used to fill a decode state."""

  hidden: jax.Array  # [L, B, S, D] output h^(l) of every loop
  keys: jax.Array  # [L, N, B, S, G, K] post-RoPE keys of every loop and layer
  values: jax.Array  # [L, N, B, S, G, K]


def forward_with_outputs(params, tokens, config, segment_ids=None, dot_general=None):
  """Training forward that also returns every loop's hidden states and KV.

  Returns:
    (logits [B, S, V] float32, `LoopOutputs`).
  """
  c = config
  dot_general = jax.lax.dot_general if dot_general is None else dot_general
  b, s = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(s), (b, s))
  same_doc = attention.segment_mask(segment_ids)
  causal = attention.causal_mask(positions, positions) & same_doc
  layer_ids = jnp.arange(c.num_layers)
  e = embed(params, tokens, c)

  def causal_attn(lp, x_in, q, k, v, extra, state):
    return attention.attend(q, k, v, causal), state, (k, v)

  def run(x, attn_fn, extras=layer_ids):
    x, _, (k, v) = block_stack(params["layers"], x, positions, attn_fn, extras, None, c,
                               dot_general)
    return x, k, v

  if c.variant == "loop":
    # Vanilla looping: loop l reads loop l-1 at the same position.
    def loop_body(h, _):
      h, k, v = run(h, causal_attn)
      return h, (h, k, v)

    h, (hidden, keys, values) = jax.lax.scan(loop_body, e, None, length=c.num_loops)
    return head(params, h, c), LoopOutputs(hidden, keys, values)

  h1, k1, v1 = run(e, causal_attn)
  if not c.uses_clp:
    return head(params, h1, c), LoopOutputs(h1[None], k1[None], v1[None])

  global_mask = attention.causal_mask(positions, positions, c.global_inclusive) & same_doc
  local_mask = attention.window_mask(positions, positions, c.window) & same_doc

  def gswa_attn(lp, x_in, q, k, v, extra, state):
    k_global, v_global = extra
    y = attention.attend(q, k_global, v_global, global_mask)
    if c.has_local_branch:
      y_local = attention.attend(q, k, v, local_mask)
      y = attention.gswa_blend(gate_logits(lp, x_in, q, c, dot_general), y, y_local)
    return y, state, (k, v)

  def clp_body(h_prev, _):
    u = clp_input(params, e, shift_right(h_prev, segment_ids, c), c)
    if c.shares_kv:
      h, k, v = run(u, gswa_attn, (k1, v1))
    else:
      h, k, v = run(u, causal_attn)
    return h, (h, k, v)

  h, (hidden, keys, values) = jax.lax.scan(clp_body, h1, None, length=c.num_loops - 1)
  outputs = LoopOutputs(
      hidden=jnp.concatenate([h1[None], hidden]),
      keys=jnp.concatenate([k1[None], keys]),
      values=jnp.concatenate([v1[None], values]))
  return head(params, h, c), outputs


def forward(params: Params, tokens: jax.Array, config: config_lib.ModelConfig,
            segment_ids: jax.Array | None = None, dot_general=None) -> jax.Array:
  """Training forward: float32 next-token logits [B, S, V] for tokens [B, S].

  Loops run as a `lax.scan` over the loop index with the shared block stack.
  With CLP, loop l >= 2 at position i reads loop l-1 at position i-1 (zero at
  position 0 and, with `segment_ids`, at every document start); attention
  never crosses documents.

  Args:
    params: from `init_params`.
    tokens: [B, S] int token ids.
    config: the model configuration.
    segment_ids: optional [B, S] document ids of packed rows.
    dot_general: replaces `jax.lax.dot_general` in every projection (for
      example a quantized one from lightquant); the LM head stays float32.
  """
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] < 1:
    raise ValueError(f"invalid tokens shape {tokens.shape}; expected [batch, length >= 1]")
  if segment_ids is not None and jnp.shape(segment_ids) != tokens.shape:
    raise ValueError(
        f"invalid segment_ids shape {jnp.shape(segment_ids)}; expected {tokens.shape}")
  logits, _ = _forward_jit(params, tokens, config, segment_ids, dot_general)
  return logits


# Eager calls compile once per (config, dot_general, shapes); under an outer
# jit this inlines.
_forward_jit = jax.jit(forward_with_outputs, static_argnames=("config", "dot_general"))
