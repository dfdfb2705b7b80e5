"""A plt decoder as an RLVR policy: log-probs, a per-row-key sampler and supervised warm-up data.

Axis letters: M rows (prompt x sample), P prompt tokens, T new tokens,
S = P + T sequence tokens, V vocabulary.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import cropi
import plt


def make_log_prob_fn(config: plt.ModelConfig, temperature: float = 1.0) -> Callable:
  """``log_prob_fn(params, tokens_MxS) -> [M, S]`` teacher-forced log-probs of a plt decoder."""

  def log_prob_fn(params, tokens_MxS):
    logits = plt.forward(params, tokens_MxS, config)
    return cropi.sequence_log_probs(logits, tokens_MxS, temperature)

  return log_prob_fn


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "eos_id", "pad_id"))
def _sample(params, prompts_MxP, lengths_M, keys_M, temperature, *, config, max_new_tokens, eos_id,
            pad_id):
  m, p = prompts_MxP.shape
  logits, state = plt.prefill(params, prompts_MxP, config, p + max_new_tokens, lengths_M)
  last = logits[jnp.arange(m), lengths_M - 1]

  def step(carry, i):
    state, last, done = carry
    scaled = last / temperature
    row_keys = jax.vmap(jax.random.fold_in, (0, None))(keys_M, i)
    token = jax.vmap(jax.random.categorical)(row_keys, scaled).astype(jnp.int32)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(scaled), token[:, None], axis=1)[:, 0]
    token = jnp.where(done, pad_id, token)
    log_prob = jnp.where(done, 0.0, log_prob)
    last, state = plt.decode_step(params, token, state, config)
    return (state, last, done | (token == eos_id)), (token, log_prob)

  init = (state, last, jnp.zeros((m,), bool))
  _, (tokens, log_probs) = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
  tokens, log_probs = tokens.T, log_probs.T
  ended = tokens == eos_id
  lengths = jnp.where(jnp.any(ended, axis=1), jnp.argmax(ended, axis=1) + 1, max_new_tokens)
  return tokens, lengths.astype(jnp.int32), log_probs


def make_sampler(config: plt.ModelConfig, max_new_tokens: int, temperature: float, eos_id: int,
                 pad_id: int) -> Callable:
  """Build a sampler with cropi's contract: one key per row, tokens after the first end token padded.

  Returns ``sampler(params, prompts_MxP, prompt_lengths_M, keys_M) ->
  (tokens [M, T], lengths [M], log_probs [M, T])`` where lengths count the
  tokens up to and including the first end token (T when none came) and the
  log-probs are those of the tempered sampling distribution.
  """
  if not temperature > 0:
    raise ValueError(f"invalid temperature {temperature}; sampling needs > 0")

  def sampler(params, prompts, lengths, keys):
    return _sample(params, jnp.asarray(prompts), jnp.asarray(lengths), keys,
                   jnp.float32(temperature), config=config, max_new_tokens=max_new_tokens,
                   eos_id=eos_id, pad_id=pad_id)

  return sampler


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "eos_id", "pad_id"))
def greedy(params, prompts_MxP, lengths_M, *, config, max_new_tokens, eos_id, pad_id):
  """Greedy completions [M, T], padded after the first end token."""
  m, p = prompts_MxP.shape
  logits, state = plt.prefill(params, prompts_MxP, config, p + max_new_tokens, lengths_M)
  last = logits[jnp.arange(m), lengths_M - 1]

  def step(carry, _):
    state, last, done = carry
    token = jnp.where(done, pad_id, jnp.argmax(last, axis=-1).astype(jnp.int32))
    last, state = plt.decode_step(params, token, state, config)
    return (state, last, done | (token == eos_id)), token

  _, tokens = jax.lax.scan(step, (state, last, jnp.zeros((m,), bool)), None, length=max_new_tokens)
  return tokens.T


class SupervisedSequences:
  """Prompt + worked solution sequences, with the same `batch` interface as the text corpus.

  Each row is the BOS-led prompt followed by the solution and its end token,
  right-padded. The loss mask covers the solution tokens only, so warm-up
  teaches the answer format without modelling the prompt distribution.
  """

  def __init__(self, prompts_NxP: np.ndarray, prompt_lengths_N: np.ndarray, solutions_NxT: np.ndarray,
               solution_lengths_N: np.ndarray, pad_id: int):
    n, p = prompts_NxP.shape
    t = solutions_NxT.shape[1]
    positions = np.arange(p + t)[None, :]
    offset = positions - prompt_lengths_N[:, None]
    in_solution = (offset >= 0) & (offset < solution_lengths_N[:, None])
    padded_prompts = np.pad(prompts_NxP, ((0, 0), (0, t)), constant_values=pad_id)
    picked = np.take_along_axis(solutions_NxT, np.clip(offset, 0, t - 1), axis=1)
    tokens = np.where(offset < 0, padded_prompts, np.where(in_solution, picked, pad_id))
    self.inputs = tokens[:, :-1].astype(np.int32)
    self.targets = tokens[:, 1:].astype(np.int32)
    self.mask = in_solution[:, 1:].astype(np.float32)  # target t + 1 is a solution token
    self.num_rows = n

  def __len__(self) -> int:
    return self.num_rows

  def batch(self, indices) -> dict:
    indices = np.asarray(indices)
    return {"inputs": self.inputs[indices], "targets": self.targets[indices],
            "segment_ids": np.zeros_like(self.inputs[indices]), "mask": self.mask[indices]}
