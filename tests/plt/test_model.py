"""The training forward: baseline reductions, CLP dependencies, documents, gates, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plt
from plt import model
from tests.plt import helpers

# Differences below ROUNDING_ATOL are float32 rounding. A real dependency moves
# the outputs of these models by more than CHANGE_MIN.
ROUNDING_ATOL = 1e-6
CHANGE_MIN = 1e-3


def _max_abs_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_plt_one_loop_equals_baseline():
  baseline = helpers.make_config(variant="baseline", num_loops=1)
  one_loop = helpers.make_config(num_loops=1)
  params = helpers.make_params(baseline)
  tokens = helpers.random_tokens(10, 2, 12)

  np.testing.assert_array_equal(helpers.forward(params, tokens, one_loop),
                                helpers.forward(params, tokens, baseline))


def test_plt_one_loop_has_baseline_params():
  baseline = helpers.make_config(variant="baseline", num_loops=1)
  one_loop = helpers.make_config(num_loops=1)
  key = jax.random.key(0)

  baseline_shapes = jax.tree.map(jnp.shape, plt.init_params(key, baseline))
  assert jax.tree.map(jnp.shape, plt.init_params(key, one_loop)) == baseline_shapes


def test_plt_one_loop_cache_equals_baseline():
  baseline = helpers.make_config(variant="baseline", num_loops=1)
  one_loop = helpers.make_config(num_loops=1)
  params = helpers.make_params(baseline)
  tokens = helpers.random_tokens(11, 2, 6)

  _, baseline_state = helpers.prefill(params, tokens, baseline, 8)
  _, one_loop_state = helpers.prefill(params, tokens, one_loop, 8)
  np.testing.assert_array_equal(one_loop_state.keys, baseline_state.keys)
  np.testing.assert_array_equal(one_loop_state.values, baseline_state.values)
  assert one_loop_state.local_keys is None
  assert one_loop_state.carry is None


def test_loop_one_loop_equals_baseline():
  baseline = helpers.make_config(variant="baseline", num_loops=1)
  one_loop = helpers.make_config(variant="loop", num_loops=1)
  params = helpers.make_params(baseline)
  tokens = helpers.random_tokens(10, 2, 12)

  np.testing.assert_allclose(helpers.forward(params, tokens, one_loop),
                             helpers.forward(params, tokens, baseline), rtol=0,
                             atol=ROUNDING_ATOL)


def _hidden_with_carry_offset(monkeypatch, config):
  """Return a jitted (params, tokens, offset) -> [L, B, S, D] output of every loop.

  The offset [B, S, D] is added to h^(l-1) where it enters the one-position
  shift, in every loop l >= 2, so position i of the offset perturbs exactly
  the carried h^(l-1)_i. The hook is in place only while the function traces.
  """
  shift_right = model.shift_right

  @helpers.jit
  def hidden(params, tokens, offset):
    def shift_right_with_offset(h, segment_ids, config):
      return shift_right(h + offset, segment_ids, config)

    with monkeypatch.context() as patch:
      patch.setattr(model, "shift_right", shift_right_with_offset)
      return plt.forward_with_outputs(params, tokens, config)[1].hidden

  return hidden


@pytest.mark.parametrize("num_loops", [2, 3])
def test_carry_reaches_next_position_only(monkeypatch, num_loops):
  config = helpers.make_config(num_loops=num_loops)
  params = helpers.make_params(config)
  batch, length, position = 2, 10, 5
  tokens = helpers.random_tokens(12, batch, length)
  _, outputs = helpers.forward_with_outputs(params, tokens, config)
  hidden = _hidden_with_carry_offset(monkeypatch, config)

  zero = jnp.zeros((batch, length, config.d_model))
  offset = zero.at[:, position].set(jax.random.normal(jax.random.key(1), (batch, config.d_model)))
  clean = np.asarray(hidden(params, tokens, zero))
  perturbed = np.asarray(hidden(params, tokens, offset))

  # The hook itself changes nothing.
  np.testing.assert_allclose(clean, outputs.hidden, rtol=0, atol=ROUNDING_ATOL)
  np.testing.assert_allclose(perturbed[0], clean[0], rtol=0, atol=ROUNDING_ATOL,
                             err_msg="loop 1")
  for loop in range(2, num_loops + 1):
    np.testing.assert_allclose(perturbed[loop - 1, :, :position + 1],
                               clean[loop - 1, :, :position + 1], rtol=0, atol=ROUNDING_ATOL,
                               err_msg=f"loop {loop} up to the perturbed position")
    change = _max_abs_diff(perturbed[loop - 1, :, position + 1], clean[loop - 1, :, position + 1])
    assert change > CHANGE_MIN, f"loop {loop} at the next position"


def test_logits_causal():
  config = helpers.make_config()
  params = helpers.make_params(config)
  length, position = 12, 5
  tokens = helpers.random_tokens(13, 2, length)
  changed = tokens.at[:, position + 1:].set((tokens[:, position + 1:] + 1) % config.vocab_size)

  logits = np.asarray(helpers.forward(params, tokens, config))
  changed_logits = np.asarray(helpers.forward(params, changed, config))

  np.testing.assert_allclose(changed_logits[:, :position + 1], logits[:, :position + 1], rtol=0,
                             atol=ROUNDING_ATOL)
  assert _max_abs_diff(changed_logits[:, position + 1], logits[:, position + 1]) > CHANGE_MIN


@pytest.fixture(scope="module")
def two_documents():
  """Pack a 5-token and a 7-token document into one row, for plt with 3 loops."""
  config = helpers.make_config(num_loops=3)
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(14, 1, 12)
  segment_ids = jnp.array([[0] * 5 + [1] * 7])
  return config, params, tokens, segment_ids


def test_second_document_equals_alone(two_documents):
  config, params, tokens, segment_ids = two_documents

  packed = helpers.forward(params, tokens, config, segment_ids)
  alone = helpers.forward(params, tokens[:, 5:], config)
  helpers.assert_decode_close(packed[:, 5:], alone)


@pytest.mark.parametrize("overrides", [dict(variant="loop"), dict(kv_share=False, gswa="none")])
def test_second_document_alone_other_variants(two_documents, overrides):
  _, _, tokens, segment_ids = two_documents
  config = helpers.make_config(**overrides)
  params = helpers.make_params(config)

  packed = helpers.forward(params, tokens, config, segment_ids)
  alone = helpers.forward(params, tokens[:, 5:], config)
  helpers.assert_decode_close(packed[:, 5:], alone)


def test_first_document_equals_alone(two_documents):
  config, params, tokens, segment_ids = two_documents

  packed = helpers.forward(params, tokens, config, segment_ids)
  alone = helpers.forward(params, tokens[:, :5], config)
  helpers.assert_decode_close(packed[:, :5], alone)


def test_carry_crosses_documents_without_reset(two_documents):
  config, params, tokens, segment_ids = two_documents
  no_reset = helpers.make_config(num_loops=3, reset_on_doc_start=False)

  packed = helpers.forward(params, tokens, no_reset, segment_ids)
  alone = helpers.forward(params, tokens[:, 5:], config)
  assert _max_abs_diff(packed[:, 5], alone[:, 0]) > CHANGE_MIN


def test_document_starts_get_zero_carry(two_documents):
  """At a zero carry the CLP input is emb_scale * e, so hidden_scale cannot matter."""
  config, params, tokens, segment_ids = two_documents
  other_scale = helpers.make_config(num_loops=3, hidden_scale=3.0)

  logits = np.asarray(helpers.forward(params, tokens, config, segment_ids))
  other_logits = np.asarray(helpers.forward(params, tokens, other_scale, segment_ids))

  for start in (0, 5):
    np.testing.assert_allclose(other_logits[:, start], logits[:, start], rtol=0,
                               atol=ROUNDING_ATOL, err_msg=f"document start {start}")
    # One position later the carry is not zero.
    assert _max_abs_diff(other_logits[:, start + 1], logits[:, start + 1]) > CHANGE_MIN


@pytest.mark.parametrize("gate_input, gate_w_shape", [
    ("hidden", (2, 32, 4)),
    ("query", (2, 4, 8)),
])
def test_init_params_zero_gates(gate_input, gate_w_shape):
  config = helpers.make_config(gate_input=gate_input)
  stack = plt.init_params(jax.random.key(0), config)["layers"]

  assert stack["gate_w"].shape == gate_w_shape
  assert not np.any(stack["gate_w"])
  assert stack["gate_b"].shape == (2, 4)
  assert not np.any(stack["gate_b"])


def test_init_params_gate_norm_ones():
  config = helpers.make_config(gate_input="hidden")
  stack = plt.init_params(jax.random.key(0), config)["layers"]
  np.testing.assert_array_equal(stack["gate_norm"], np.ones((2, 32)))


@pytest.mark.parametrize("overrides", [
    dict(gswa="fixed_half"),
    dict(gswa="none"),
    dict(num_loops=1),
    dict(variant="loop"),
    dict(variant="baseline", num_loops=1),
])
def test_init_params_without_gate(overrides):
  stack = plt.init_params(jax.random.key(0), helpers.make_config(**overrides))["layers"]
  assert not {"gate_w", "gate_b", "gate_norm"} & set(stack)


@pytest.mark.parametrize("gate_input", ["hidden", "query"])
def test_zero_gates_equal_fixed_half(gate_input):
  gated = helpers.make_config(gate_input=gate_input)
  params = plt.init_params(jax.random.key(2), gated)
  tokens = helpers.random_tokens(15, 2, 10)

  fixed = helpers.forward(params, tokens, helpers.make_config(gswa="fixed_half"))
  np.testing.assert_allclose(helpers.forward(params, tokens, gated), fixed, rtol=0,
                             atol=ROUNDING_ATOL)


def test_random_gates_change_logits():
  gated = helpers.make_config()
  params = helpers.make_params(gated)
  tokens = helpers.random_tokens(15, 2, 10)

  fixed = helpers.forward(params, tokens, helpers.make_config(gswa="fixed_half"))
  assert _max_abs_diff(helpers.forward(params, tokens, gated), fixed) > CHANGE_MIN


def _layer0(params):
  return jax.tree.map(lambda x: np.asarray(x[0], np.float64), params["layers"])


def test_gate_logits_from_normed_hidden():
  config = helpers.make_config(gate_input="hidden")
  layer = _layer0(helpers.make_params(config))
  rng = np.random.default_rng(0)
  x_in = rng.standard_normal((2, 3, config.d_model)).astype(np.float32)
  q = rng.standard_normal((2, 3, config.num_heads, config.head_dim)).astype(np.float32)

  logits = model.gate_logits(jax.tree.map(jnp.asarray, layer), jnp.asarray(x_in), jnp.asarray(q),
                             config, jax.lax.dot_general)
  normed = x_in / np.sqrt(np.mean(np.square(x_in, dtype=np.float64), axis=-1, keepdims=True)
                          + config.rms_eps)
  expected = (normed * layer["gate_norm"]) @ layer["gate_w"] + layer["gate_b"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_gate_logits_from_query():
  config = helpers.make_config(gate_input="query")
  layer = _layer0(helpers.make_params(config))
  rng = np.random.default_rng(1)
  x_in = rng.standard_normal((2, 3, config.d_model)).astype(np.float32)
  q = rng.standard_normal((2, 3, config.num_heads, config.head_dim)).astype(np.float32)

  logits = model.gate_logits(jax.tree.map(jnp.asarray, layer), jnp.asarray(x_in), jnp.asarray(q),
                             config, jax.lax.dot_general)
  expected = np.sum(q * layer["gate_w"], axis=-1) + layer["gate_b"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_gate_logits_fixed_half_is_none():
  config = helpers.make_config(gswa="fixed_half")
  assert model.gate_logits({}, jnp.zeros((1, 32)), jnp.zeros((1, 4, 8)), config, None) is None


@functools.cache
def _layer_grads_per_position(config):
  """Compute the gradient of each position's summed logits w.r.t. the layer parameters.

  Returns the layer parameters' tree with a leading position axis [S, ...].
  """
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(16, 2, 4)

  def logit_sums(params):
    return jnp.sum(plt.forward(params, tokens, config), axis=(0, 2))

  return helpers.jit(jax.jacrev(logit_sums))(params)["layers"]


# With gswa "none" loop 2 never uses its own keys and values, so loop 1's wk and
# wv reach loop 2's logits through the carry h^(1)_{i-1} and the global branch
# only. At position 0 the carry is zero, so wv reaches it through the global
# branch alone. At position 1 the carry is h^(1)_0, computed from one key, which
# does not depend on wk, so wk reaches it through the global branch alone. An
# exclusive global branch drops exactly the key that carries the gradient.
KV_GRAD_CASES = [("wv", 0), ("wk", 1)]


@pytest.mark.parametrize("name, position", KV_GRAD_CASES)
def test_loop1_kv_grad_via_global_branch(name, position):
  config = helpers.make_config(num_loops=2, gswa="none")
  grad = np.asarray(_layer_grads_per_position(config)[name][position])
  assert np.abs(grad).max() > CHANGE_MIN


@pytest.mark.parametrize("name, position", KV_GRAD_CASES)
def test_loop1_kv_grad_zero_exclusive(name, position):
  config = helpers.make_config(num_loops=2, gswa="none", global_inclusive=False)
  grad = np.asarray(_layer_grads_per_position(config)[name][position])
  assert not np.any(grad)


FIRST_TOKEN, LAST_TOKEN = 7, 9
INJECTION_LOSSES = {"loop 2 at position 0": 0, "loop 3 at position 0": 1,
                    "last logits": 2}


@functools.cache
def _embed_grads(emb_scale):
  """Compute the embedding gradients [3, V, D] of sum(h^(2)_0), sum(h^(3)_0) and the last logits.

  The model has 3 loops, an exclusive global branch and an untied LM head, so
  the head adds no embedding gradient. Position 0 of loop l >= 2 then attends
  to no loop-1 key and reads a zero carry, so the first token reaches h^(l)_0
  only through loop l's CLP injection emb_scale * e_0. At the last position
  the global branch hides loop 1's key, and the outputs of loops 1 and 2 would
  only feed the next position, which does not exist. So the last token reaches
  the last logits only through loop 3's injection.
  """
  config = helpers.make_config(num_loops=3, global_inclusive=False, tie_embeddings=False,
                               emb_scale=emb_scale)
  params = helpers.make_params(config)
  tokens = jnp.array([[FIRST_TOKEN, 1, 2, 3, 4, LAST_TOKEN]])

  def losses(params):
    logits, outputs = plt.forward_with_outputs(params, tokens, config)
    return jnp.stack([jnp.sum(outputs.hidden[1, :, 0]), jnp.sum(outputs.hidden[2, :, 0]),
                      jnp.sum(logits[:, -1])])

  return np.asarray(helpers.jit(jax.jacrev(losses))(params)["embed"])


@pytest.mark.parametrize("loss", INJECTION_LOSSES)
def test_embed_grad_through_each_injection(loss):
  token = LAST_TOKEN if loss == "last logits" else FIRST_TOKEN
  grad = _embed_grads(0.8)[INJECTION_LOSSES[loss], token]
  assert np.abs(grad).max() > CHANGE_MIN


@pytest.mark.parametrize("loss", INJECTION_LOSSES)
def test_embed_grad_zero_without_injection(loss):
  token = LAST_TOKEN if loss == "last logits" else FIRST_TOKEN
  grad = _embed_grads(0.0)[INJECTION_LOSSES[loss], token]
  assert not np.any(grad)
