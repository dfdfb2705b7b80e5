"""Cached decoding: prefill, the one-pass PLT decode step, and sampling.

Axis letters: B batch, L loops, D model width, H query heads, G key/value
heads, K head dim, S max length, W ring size, V vocabulary. Positions are
0-based.

Prompts of different lengths are right-padded: row b's tokens are
``tokens[b, :prompt_lengths[b]]`` and what follows is ignored. Decoding then
writes row b's next token at its own position, so every row decodes exactly as
it would alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from plt import attention
from plt import config as config_lib
from plt import kv_cache
from plt import model


def _concrete(x):
  """x as a NumPy array, or None while x is traced under jit."""
  return None if isinstance(x, jax.core.Tracer) else np.asarray(x)


def _check_prompt(tokens, max_len, prompt_lengths):
  """Validate right-padded prompts; return the [B] int32 prompt lengths."""
  if tokens.ndim != 2:
    raise ValueError(f"invalid tokens shape {tokens.shape}; expected [batch, length]")
  b, p = tokens.shape
  if p < 1:
    raise ValueError(f"invalid tokens shape {tokens.shape}; the prompt needs at least one token")
  if not isinstance(max_len, (int, np.integer)) or p > max_len:
    raise ValueError(f"invalid max_len {max_len!r}; expected an int >= the prompt length {p}")
  if prompt_lengths is None:
    return jnp.full((b,), p, jnp.int32)
  lengths = jnp.asarray(prompt_lengths, jnp.int32)
  if lengths.shape != (b,):
    raise ValueError(f"invalid prompt_lengths shape {lengths.shape}; expected ({b},)")
  values = _concrete(lengths)
  if values is not None and (values.min() < 1 or values.max() > p):
    raise ValueError(f"invalid prompt_lengths {values.tolist()}; each must be in [1, {p}]")
  return lengths


def prefill(params, tokens, config: config_lib.ModelConfig, max_len: int,
            prompt_lengths=None, dot_general=None):
  """Run the training forward over prompts and build the decode state.

  Args:
    params: model parameters.
    tokens: [B, P] right-padded prompts.
    config: the model configuration.
    max_len: capacity of the caches (prompt plus generated tokens).
    prompt_lengths: optional [B] real lengths (each >= 1); default P.
    dot_general: the projections' dot_general.

  Returns:
    (logits [B, P, V] of every prompt position, `kv_cache.DecodeState`).
  """
  lengths = _check_prompt(jnp.asarray(tokens), max_len, prompt_lengths)
  return _prefill_jit(params, tokens, config, max_len, lengths, dot_general)


@functools.partial(jax.jit, static_argnames=("config", "max_len", "dot_general"))
def _prefill_jit(params, tokens, config, max_len, lengths, dot_general):
  c = config
  b, p = tokens.shape
  logits, outputs = model.forward_with_outputs(params, tokens, c, dot_general=dot_general)
  state = kv_cache.init_decode_state(c, b, max_len)
  rows = jnp.arange(b)

  # Full caches: loop 1 alone when shared, else one per loop.
  count = c.num_caches
  keys = state.keys.at[:, :, :, :p].set(outputs.keys[:count].astype(state.keys.dtype))
  values = state.values.at[:, :, :, :p].set(outputs.values[:count].astype(state.values.dtype))
  state = state.replace(keys=keys, values=values, pos=lengths)

  if c.has_local_branch:
    # Slot s of a ring contains the latest prompt position j < length with
    # j = s (mod W); earlier slots stay empty (-1).
    w = state.local_pos.shape[1]
    slots = jnp.arange(w)
    slot_pos = lengths[:, None] - 1 - jnp.mod(lengths[:, None] - 1 - slots, w)  # [B, W]
    source = jnp.clip(slot_pos, 0, p - 1)
    local_keys = outputs.keys[1:][:, :, rows[:, None], source]  # [L-1, N, B, W, G, K]
    local_values = outputs.values[1:][:, :, rows[:, None], source]
    state = state.replace(local_keys=local_keys.astype(state.local_keys.dtype),
                          local_values=local_values.astype(state.local_values.dtype),
                          local_pos=jnp.where(slot_pos >= 0, slot_pos, -1).astype(jnp.int32))

  if c.uses_clp:
    last = outputs.hidden[:-1][:, rows, lengths - 1]  # [L-1, B, D]
    state = state.replace(carry=last.astype(state.carry.dtype))
  return logits, state


def _write_rows(cache, layer, rows, slot, new):
  """cache[:, layer, b, slot[b]] = new[:, b] for every row b."""
  return cache.at[:, layer, rows, slot].set(new.astype(cache.dtype))


def _plt_step(params, tokens, state, config, dot_general):
  """Run the block stack once over B x L rows (L = 1 for the baseline)."""
  c = config
  num_rows = c.num_loops if c.uses_clp else 1
  b = tokens.shape[0]
  rows = jnp.arange(b)
  pos = state.pos
  e = model.embed(params, tokens, c)  # [B, D]
  x = e[:, None]
  if c.uses_clp:
    carried = jnp.swapaxes(state.carry, 0, 1)  # [B, L-1, D]
    x = jnp.concatenate([x, model.clp_input(params, e[:, None], carried, c)], axis=1)
  positions = jnp.broadcast_to(pos[:, None], (b, num_rows))

  s = state.keys.shape[3]
  key_pos = jnp.arange(s)
  # Row 0 (loop 1) is causal; rows >= 1 follow global_inclusive when sharing.
  row_masks = [attention.causal_mask(pos[:, None], key_pos[None])]  # [B, 1, S]
  inclusive = c.global_inclusive if c.shares_kv else True
  row_masks += [attention.causal_mask(pos[:, None], key_pos[None], inclusive)] * (num_rows - 1)
  global_mask = jnp.concatenate(row_masks, axis=1)  # [B, rows, S]

  local_pos = state.local_pos
  if c.has_local_branch:
    w = local_pos.shape[1]
    slot = jnp.mod(pos, w)
    local_pos = local_pos.at[rows, slot].set(pos)
    local_mask = (local_pos >= 0) & (pos[:, None] - local_pos < c.window)  # [B, W]
    local_mask = local_mask[:, None, None, :]  # [B, 1, T=1, W]

  def attn_fn(lp, x_in, q, k, v, layer, caches):
    keys, values, local_keys, local_values = caches
    if c.num_caches == 1:
      keys = _write_rows(keys, layer, rows, pos, k[None, :, 0])
      values = _write_rows(values, layer, rows, pos, v[None, :, 0])
      y = attention.attend(q, keys[0, layer], values[0, layer], global_mask)
    else:
      # Without sharing each row writes and reads its own loop's full cache.
      keys = _write_rows(keys, layer, rows, pos, jnp.swapaxes(k, 0, 1))
      values = _write_rows(values, layer, rows, pos, jnp.swapaxes(v, 0, 1))
      own_k = jnp.swapaxes(keys[:, layer], 0, 1)  # [B, L, S, G, K]
      own_v = jnp.swapaxes(values[:, layer], 0, 1)
      y = attention.attend(q[:, :, None], own_k, own_v, global_mask[:, :, None])[:, :, 0]
    if c.has_local_branch:
      # Row 0 writes the shared cache above before rows >= 1 read it: the
      # same-position global key comes from the same layer of this pass.
      local_keys = _write_rows(local_keys, layer, rows, slot, jnp.swapaxes(k[:, 1:], 0, 1))
      local_values = _write_rows(local_values, layer, rows, slot, jnp.swapaxes(v[:, 1:], 0, 1))
      lk = jnp.swapaxes(local_keys[:, layer], 0, 1)  # [B, L-1, W, G, K]
      lv = jnp.swapaxes(local_values[:, layer], 0, 1)
      y_local = attention.attend(q[:, 1:, None], lk, lv, local_mask)[:, :, 0]
      logits = model.gate_logits(lp, x_in[:, 1:], q[:, 1:], c, dot_general)
      blended = attention.gswa_blend(logits, y[:, 1:], y_local)
      y = jnp.concatenate([y[:, :1], blended], axis=1)
    return y, (keys, values, local_keys, local_values), None

  caches = (state.keys, state.values, state.local_keys, state.local_values)
  x, caches, _ = model.block_stack(params["layers"], x, positions, attn_fn,
                                   jnp.arange(c.num_layers), caches, c, dot_general)
  keys, values, local_keys, local_values = caches
  carry = jnp.swapaxes(x[:, :-1], 0, 1) if c.uses_clp else None
  state = state.replace(keys=keys, values=values, local_keys=local_keys,
                        local_values=local_values, local_pos=local_pos, carry=carry,
                        pos=pos + 1)
  return model.head(params, x[:, -1], c), state


def _loop_step(params, tokens, state, config, dot_general):
  """Vanilla loop: L sequential passes, each with its own full cache."""
  c = config
  b = tokens.shape[0]
  rows = jnp.arange(b)
  pos = state.pos
  positions = pos[:, None]
  key_pos = jnp.arange(state.keys.shape[3])
  mask = attention.causal_mask(pos[:, None], key_pos[None])  # [B, 1, S]

  def loop_body(carry, loop):
    x, keys, values = carry

    def attn_fn(lp, x_in, q, k, v, layer, caches):
      keys, values = caches
      keys = keys.at[loop, layer, rows, pos].set(k[:, 0].astype(keys.dtype))
      values = values.at[loop, layer, rows, pos].set(v[:, 0].astype(values.dtype))
      y = attention.attend(q, keys[loop, layer], values[loop, layer], mask)
      return y, (keys, values), None

    x, (keys, values), _ = model.block_stack(params["layers"], x, positions, attn_fn,
                                             jnp.arange(c.num_layers), (keys, values), c,
                                             dot_general)
    return (x, keys, values), None

  x = model.embed(params, tokens, c)[:, None]
  (x, keys, values), _ = jax.lax.scan(loop_body, (x, state.keys, state.values),
                                      jnp.arange(c.num_loops))
  state = state.replace(keys=keys, values=values, pos=pos + 1)
  return model.head(params, x[:, 0], c), state


def decode_step(params, tokens, state: kv_cache.DecodeState, config: config_lib.ModelConfig,
                dot_general=None):
  """Decode one token per row.

  A PLT step runs the block stack once on B x L rows: row 1 is loop 1 of the
  new token, row l >= 2 continues the chain from the carry of the previous
  step. The vanilla loop runs the stack L times in sequence; the baseline once.

  Args:
    params: model parameters.
    tokens: [B] int token ids at positions `state.pos`.
    state: the decode state from `prefill` or the previous step.
    config: the model configuration.
    dot_general: the projections' dot_general.

  Returns:
    (logits [B, V] float32 predicting the following token, new state).

  Raises:
    ValueError: for tokens not of shape [B], or (outside jit) when a row has
      reached max_len. NOTE: under jit a full state is not detected, and the
      writes of positions >= max_len are dropped.
  """
  tokens = jnp.asarray(tokens)
  if tokens.shape != state.pos.shape:
    raise ValueError(
        f"invalid tokens shape {tokens.shape}; expected one token per row, {state.pos.shape}")
  positions = _concrete(state.pos)
  capacity = state.keys.shape[3]
  if positions is not None and positions.max() >= capacity:
    raise ValueError(
        f"the decode state is full: position {positions.max()} >= max_len {capacity}; "
        "prefill with a larger max_len")
  return _decode_step_eager_jit(params, tokens, state, config, dot_general)


def _decode_step_impl(params, tokens, state, config, dot_general=None):
  dot_general = jax.lax.dot_general if dot_general is None else dot_general
  if config.variant == "loop":
    return _loop_step(params, tokens, state, config, dot_general)
  return _plt_step(params, tokens, state, config, dot_general)


def sample(logits, key, temperature, top_k: int = 0):
  """Sample one token per row; temperature 0 is greedy. Keys split per row."""
  keys = jax.random.split(key, logits.shape[0])
  scaled = logits / jnp.maximum(temperature, 1e-6)
  if top_k:
    kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
  sampled = jax.vmap(jax.random.categorical)(keys, scaled)
  return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def generate(params, prompt, config: config_lib.ModelConfig, key, max_new_tokens: int,
             temperature=1.0, top_k: int = 0, prompt_lengths=None, max_len: int | None = None,
             dot_general=None):
  """Prefill the prompts, then sample `max_new_tokens` tokens per row.

  Jitted once per static configuration. The decoding loop is a `lax.scan`
  over steps; the key of step i is ``fold_in(key, i)``, split once more per
  row. Temperature 0 is greedy decoding; `top_k` > 0 keeps the k most likely
  tokens.

  Args:
    params: model parameters.
    prompt: [B, P] right-padded prompts.
    config: the model configuration.
    key: PRNG key.
    max_new_tokens: tokens to generate per row.
    temperature: softmax temperature.
    top_k: 0 for no top-k filter.
    prompt_lengths: optional [B] real prompt lengths.
    max_len: cache capacity; default P + max_new_tokens.
    dot_general: the projections' dot_general.

  Returns:
    [B, max_new_tokens] int32 tokens.
  """
  prompt = jnp.asarray(prompt)
  if prompt.ndim != 2:
    raise ValueError(f"invalid prompt shape {prompt.shape}; expected [batch, length]")
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"invalid max_new_tokens {max_new_tokens!r}; expected a positive int")
  if not isinstance(top_k, (int, np.integer)) or not 0 <= top_k <= config.vocab_size:
    raise ValueError(f"invalid top_k {top_k!r}; expected an int in [0, {config.vocab_size}]")
  b, p = prompt.shape
  max_len = p + max_new_tokens if max_len is None else max_len
  lengths = _check_prompt(prompt, max_len, prompt_lengths)
  lengths_now = _concrete(lengths)
  needed = (int(lengths_now.max()) if lengths_now is not None else p) + max_new_tokens
  if needed > max_len:
    raise ValueError(f"invalid max_len {max_len}; prompt plus max_new_tokens needs {needed}")
  return _generate_jit(params, prompt, config, key, int(max_new_tokens), temperature,
                       int(top_k), lengths, int(max_len), dot_general)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "max_len", "top_k",
                                             "dot_general"))
def _generate_jit(params, prompt, config, key, max_new_tokens, temperature, top_k, lengths,
                  max_len, dot_general):
  b = prompt.shape[0]
  logits, state = _prefill_jit(params, prompt, config, max_len, lengths, dot_general)
  last = logits[jnp.arange(b), lengths - 1]

  def step(carry, i):
    state, last = carry
    token = sample(last, jax.random.fold_in(key, i), temperature, top_k)
    last, state = _decode_step_impl(params, token, state, config, dot_general)
    return (state, last), token

  _, tokens = jax.lax.scan(step, (state, last), jnp.arange(max_new_tokens))
  return tokens.T


# Eager decode_step calls compile once per static configuration.
_decode_step_eager_jit = jax.jit(_decode_step_impl, static_argnames=("config", "dot_general"))

# A jitted step that donates the decode state, so the caches update in place.
decode_step_jit = jax.jit(_decode_step_impl, static_argnames=("config", "dot_general"),
                          donate_argnames=("state",))
