"""Flax NNX adapter: turn a language-model module into cropi's (log_prob_fn, params) pair."""

from typing import Any, Callable

from flax import nnx

from cropi import objectives


def log_prob_fn_from_nnx(model: nnx.Module, temperature: float = 1.0) -> tuple[Callable, Any]:
  """Split an NNX causal LM into a pure log-prob function and its parameter state.

  The module must map token ids [B, S] to next-token logits [B, S, V]. Only
  `nnx.Param` variables become the differentiated parameters; any other
  state (RNG counters, batch statistics) is closed over unchanged.

  Args:
    model: the NNX module.
    temperature: divides the logits, for tempered behaviour log-probs.

  Returns:
    ``(log_prob_fn, params)`` with ``log_prob_fn(params, tokens_BxS) -> [B, S]``
    aligned log-probs (see `objectives.sequence_log_probs`), ready for
    `objectives.make_prompt_loss` and `cropi.per_example_grads`.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def log_prob_fn(params, tokens_BxS):
    module = nnx.merge(graphdef, params, rest)
    return objectives.sequence_log_probs(module(tokens_BxS), tokens_BxS, temperature)

  return log_prob_fn, params
