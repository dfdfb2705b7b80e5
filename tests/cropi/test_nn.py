"""The NNX adapter against the module's own logits."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cropi
from cropi import nn


class TinyLM(nnx.Module):
  """Embedding, one causal prefix mean and a linear head."""

  def __init__(self, vocab: int, width: int, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, width, rngs=rngs)
    self.head = nnx.Linear(width, vocab, rngs=rngs)
    self.dropout = nnx.Dropout(0.0, rngs=rngs)  # non-Param state must be carried along

  def __call__(self, tokens):
    h = self.embed(tokens)
    counts = jnp.arange(1, tokens.shape[-1] + 1, dtype=jnp.float32)[:, None]
    return self.head(self.dropout(jnp.cumsum(h, axis=-2) / counts))


def test_log_probs_match_the_module_logits():
  model = TinyLM(7, 5, nnx.Rngs(0))
  tokens = jnp.array([[1, 2, 3, 4], [6, 5, 0, 0]])
  log_prob_fn, params = nn.log_prob_fn_from_nnx(model, temperature=0.5)
  expected = cropi.sequence_log_probs(model(tokens), tokens, temperature=0.5)
  np.testing.assert_allclose(log_prob_fn(params, tokens), expected, rtol=1e-6)


def test_per_example_gradients_flow_through_the_params():
  model = TinyLM(7, 5, nnx.Rngs(1))
  log_prob_fn, params = nn.log_prob_fn_from_nnx(model)
  loss = cropi.make_prompt_loss(log_prob_fn, off_policy=False)
  batch = {
      "tokens": jnp.array([[[1, 2, 3], [1, 4, 5]], [[2, 2, 6], [2, 3, 0]]]),
      "mask": jnp.array([[[0, 1, 1], [0, 1, 1]], [[0, 0, 1], [0, 1, 0]]], jnp.float32),
      "behaviour_log_probs": jnp.zeros((2, 2, 3)),
      "rewards": jnp.array([[1.0, 0.0], [0.0, 1.0]]),
  }
  rows = cropi.per_example_grads(loss, params, batch)
  assert rows.shape == (2, cropi.flat_size(params))
  single = jax.grad(loss)(params, jax.tree.map(lambda x: x[1], batch))
  np.testing.assert_allclose(rows[1], cropi.flatten(single), rtol=1e-5, atol=1e-7)
  assert float(jnp.linalg.norm(rows[0])) > 0
