"""A thin Flax NNX wrapper around the functional PLT core."""

import jax
from flax import nnx

from plt import config as config_lib
from plt import decode
from plt import model


class LoopedLM(nnx.Module):
  """The decoder as an NNX module; all computation is the functional core.

  >>> import jax.numpy as jnp
  >>> lm = LoopedLM(config_lib.ModelConfig(num_loops=2, window=4), nnx.Rngs(0))
  >>> lm(jnp.zeros((1, 8), jnp.int32)).shape
  (1, 8, 256)
  """

  def __init__(self, config: config_lib.ModelConfig, rngs: nnx.Rngs, dot_general=None):
    self.config = config
    self.dot_general = dot_general
    self.params = nnx.Param(model.init_params(rngs.params(), config))

  def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Training logits [B, S, V]; see `plt.forward`."""
    return model.forward(self.params.get_value(), tokens, self.config, segment_ids, self.dot_general)

  def prefill(self, tokens, max_len: int, prompt_lengths=None):
    """Prompt logits and decode state; see `plt.prefill`."""
    return decode.prefill(self.params.get_value(), tokens, self.config, max_len, prompt_lengths,
                          self.dot_general)

  def decode_step(self, tokens, state):
    """Logits [B, V] and the next state; see `plt.decode_step`."""
    return decode.decode_step(self.params.get_value(), tokens, state, self.config, self.dot_general)
