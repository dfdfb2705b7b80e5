"""Tiny configurations, random parameters and shared jitted entry points of the plt tests.

Every test module jits through the functions here, so each configuration
and shape compiles once per test process, however many tests use it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import plt

VOCAB_SIZE = 64
# Error allowed between cached decoding and the training forward in float32:
# |decoded - forward| <= DECODE_ATOL + DECODE_RTOL * |forward|. Logits of these
# models are of order 1 to 5.
DECODE_ATOL = 1e-5
DECODE_RTOL = 1e-5


def assert_decode_close(actual, desired, err_msg=""):
  """Assert that cached results match the training forward within the decode tolerance."""
  np.testing.assert_allclose(actual, desired, rtol=DECODE_RTOL, atol=DECODE_ATOL,
                             err_msg=err_msg)


# Compiling, not running, dominates the run time of these tiny models, and
# backend optimization level 0 shortens XLA's CPU compile time. Every
# tolerance in these tests is met at this level too. Other backends compile with
# their defaults.
COMPILER_OPTIONS = ({"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu"
                    else None)
jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)

forward = jit(plt.forward, static_argnames=("config",))
forward_with_outputs = jit(plt.forward_with_outputs, static_argnames=("config",))
prefill = jit(plt.prefill, static_argnames=("config", "max_len"))
decode_step = jit(plt.decode_step, static_argnames=("config",))


def make_config(**overrides) -> plt.ModelConfig:
  """Build a float32 plt config: 2 layers, 4 heads, 2 KV heads, head_dim 8, 3 loops, window 4.

  emb_scale and hidden_scale are not 1, so a swapped or dropped scale shows.
  """
  fields = dict(vocab_size=VOCAB_SIZE, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=8, ffn_dim=64, dtype="float32", init_std=0.2, variant="plt",
                num_loops=3, window=4, emb_scale=0.8, hidden_scale=1.25)
  fields.update(overrides)
  return plt.ModelConfig(**fields)


@functools.cache
def make_params(config: plt.ModelConfig, seed: int = 0):
  """Draw random parameters in the layout of `plt.init_params` with NumPy.

  Weights are N(0, init_std), norm scales 1 + N(0, 0.2) and gate weights and
  biases N(0, 0.3): zero gates would blend both G-SWA branches evenly, which
  hides a wrong gate input or direction. NumPy draws cost no XLA compiles.
  The result is cached per (config, seed), so callers must not mutate it.
  """
  shapes = jax.eval_shape(functools.partial(plt.init_params, config=config), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name.endswith("norm"):
      return jnp.asarray(1.0 + 0.2 * noise)
    if name.startswith("gate_"):
      return jnp.asarray(0.3 * noise)
    return jnp.asarray(config.init_std * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def random_tokens(seed: int, batch: int, length: int) -> jax.Array:
  """Draw uniform token ids [batch, length]."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, VOCAB_SIZE, (batch, length)), jnp.int32)


@functools.partial(jit, static_argnames=("config",))
def forward_and_decode(params, tokens, prompt_lengths, config):
  """Compute the training-forward and the cached-decoding logits [B, S, V] of tokens.

  Row b of the decoding is prefilled with its first prompt_lengths[b] tokens
  in one right-padded batch, then decoded one token per step. The padding
  contains other tokens than the row's real continuation, so a decode step that
  fails to overwrite the padding's cache entries changes the logits. Every row
  runs S - 1 decode steps in a `lax.scan`, and the steps past a row's last
  token feed junk whose logits are discarded. The caches hold 2 S positions, so no row runs
  out of room. Both results come from one jit, which compiles faster than two.
  """
  batch, length = tokens.shape
  rows = jnp.arange(batch)
  positions = jnp.arange(length)
  before_end = positions < prompt_lengths[:, None]  # [B, S]
  padding = (tokens + 1 + positions) % config.vocab_size
  prompts = jnp.where(before_end, tokens, padding)
  prompt_logits, state = plt.prefill(params, prompts, config, 2 * length, prompt_lengths)

  def step(state, index):
    step_positions = prompt_lengths + index
    step_tokens = tokens[rows, jnp.minimum(step_positions, length - 1)]
    logits, state = plt.decode_step(params, step_tokens, state, config)
    return state, logits

  _, step_logits = jax.lax.scan(step, state, jnp.arange(length - 1))  # [S - 1, B, V]
  # Position t of row b came from step t - prompt_lengths[b] when not in the prompt.
  step_index = jnp.clip(positions[None] - prompt_lengths[:, None], 0, length - 2)
  decoded = step_logits[step_index, rows[:, None]]  # [B, S, V]
  decoded = jnp.where(before_end[..., None], prompt_logits, decoded)
  return plt.forward(params, tokens, config), decoded
