"""The NNX wrapper against the functional core."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import plt


def test_looped_lm_matches_functional_core():
  config = plt.ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                           head_dim=8, ffn_dim=64, num_loops=2, window=4)
  lm = plt.LoopedLM(config, nnx.Rngs(0))
  params = lm.params.get_value()
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
  np.testing.assert_array_equal(np.asarray(lm(tokens)), np.asarray(plt.forward(params, tokens, config)))

  logits, state = lm.prefill(tokens[:, :5], 8)
  step, _ = lm.decode_step(tokens[:, 5], state)
  expected = plt.forward(params, tokens, config)
  np.testing.assert_allclose(np.asarray(step), np.asarray(expected[:, 5]), atol=1e-5, rtol=1e-5)

  grads = nnx.grad(lambda m: jnp.mean(m(tokens) ** 2))(lm)
  assert float(jnp.abs(jax.tree.leaves(grads)[0]).sum()) > 0
