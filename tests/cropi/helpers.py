"""A tiny causal LM and a hand-built offline store shared by the cropi tests."""

import jax
import jax.numpy as jnp
import numpy as np

from cropi import objectives
from cropi import rollouts

VOCAB = 6
WIDTH = 4


def init_lm(seed: int = 0, scale: float = 0.5) -> dict:
  """Parameters of a causal bag-of-prefix LM with vocabulary VOCAB."""
  keys = jax.random.split(jax.random.key(seed), 4)
  return {
      "embed": scale * jax.random.normal(keys[0], (VOCAB, WIDTH)),
      "mix": scale * jax.random.normal(keys[1], (WIDTH, WIDTH)),
      "out": scale * jax.random.normal(keys[2], (WIDTH, VOCAB)),
      "bias": scale * jax.random.normal(keys[3], (VOCAB,)),
  }


def logits_fn(params, tokens_BxS):
  """Position t reads the mean embedding of tokens 0..t, so the model is causal."""
  h = params["embed"][tokens_BxS]
  counts = jnp.arange(1, tokens_BxS.shape[-1] + 1, dtype=jnp.float32)[:, None]
  prefix = jnp.cumsum(h, axis=-2) / counts
  return jnp.tanh(prefix @ params["mix"]) @ params["out"] + params["bias"]


def log_prob_fn(params, tokens_BxS):
  return objectives.sequence_log_probs(logits_fn(params, tokens_BxS), tokens_BxS)


def make_store(num_prompts: int = 7, num_samples: int = 4, prompt_len: int = 3, max_new: int = 4,
               seed: int = 0, behaviour_params=None, degenerate=(1,)) -> rollouts.OfflineStore:
  """A random store; the prompts listed in `degenerate` get all-equal rewards.

  With `behaviour_params`, the stored log-probs are that policy's
  teacher-forced ones, so theta = behaviour gives ratios of exactly 1.
  """
  rng = np.random.default_rng(seed)
  prompt_lengths = rng.integers(1, prompt_len + 1, num_prompts)
  prompts = rng.integers(1, VOCAB, (num_prompts, prompt_len))
  prompts[np.arange(prompt_len)[None, :] >= prompt_lengths[:, None]] = 0
  lengths = rng.integers(1, max_new + 1, (num_prompts, num_samples))
  completions = rng.integers(1, VOCAB, (num_prompts, num_samples, max_new))
  completions[np.arange(max_new)[None, None, :] >= lengths[:, :, None]] = 0
  rewards = rng.integers(0, 2, (num_prompts, num_samples)).astype(np.float32)
  rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # every group mixed unless made degenerate
  for i in degenerate:
    rewards[i] = 1.0
  store = rollouts.OfflineStore(
      prompt_ids=np.arange(100, 100 + num_prompts), prompt_tokens=prompts,
      prompt_lengths=prompt_lengths, completions=completions, completion_lengths=lengths,
      rewards=rewards, behaviour_log_probs=np.zeros(completions.shape, np.float32),
      metadata={"temperature": 0.5, "seed": seed, "source": "test"})
  if behaviour_params is not None:
    import dataclasses
    store = dataclasses.replace(
        store, behaviour_log_probs=rollouts.teacher_forced_log_probs(log_prob_fn, behaviour_params, store))
  return store
