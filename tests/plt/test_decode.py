"""Cached decoding (prefill, decode_step, generate) against the training forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plt
from tests.plt import helpers
from tests.plt.helpers import assert_decode_close

SEQ_LEN = 16
# One right-padded batch prefills rows of 1, 5 and 16 tokens: the shortest
# prompt, one longer than the window of 4 and the whole sequence.
PROMPT_LENGTHS = (1, 5, 16)

PLT_CASES = [
    pytest.param(dict(num_loops=loops, gate_input=gate_input, normalize_per_loop=normalize),
                 id=f"plt-L{loops}-{gate_input}-{'norm' if normalize else 'raw'}")
    for loops in (1, 2, 3)
    for gate_input in ("hidden", "query")
    for normalize in (False, True)
]
OTHER_CASES = [
    pytest.param(dict(variant="loop", num_loops=3), id="loop-L3"),
    pytest.param(dict(variant="baseline", num_loops=1), id="baseline"),
    pytest.param(dict(gswa="fixed_half"), id="plt-fixed-half"),
    pytest.param(dict(gswa="none"), id="plt-gswa-none"),
    pytest.param(dict(global_inclusive=False), id="plt-global-exclusive"),
    pytest.param(dict(kv_share=False, gswa="none"), id="plt-no-kv-share"),
    # The window exceeds the 32-position caches, so each ring is capped at 32 slots.
    pytest.param(dict(window=64), id="plt-window-over-max-len"),
]


@pytest.mark.parametrize("overrides", PLT_CASES + OTHER_CASES)
def test_decode_matches_forward(overrides):
  config = helpers.make_config(**overrides)
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(1, len(PROMPT_LENGTHS), SEQ_LEN)

  prompt_lengths = jnp.array(PROMPT_LENGTHS)
  expected, decoded = helpers.forward_and_decode(params, tokens, prompt_lengths, config)

  for row, prompt_length in enumerate(PROMPT_LENGTHS):
    assert_decode_close(decoded[row], expected[row], err_msg=f"prefill of {prompt_length} tokens")


def test_decode_matches_forward_bfloat16():
  config = helpers.make_config(dtype="bfloat16")
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(1, len(PROMPT_LENGTHS), SEQ_LEN)

  expected, decoded = helpers.forward_and_decode(params, tokens, jnp.array(PROMPT_LENGTHS), config)

  # Both paths round activations to bfloat16 at the same points, but a
  # different float32 summation order may flip a rounding. 0.05 allows that
  # and is far below the error of a wrong or missing cache entry.
  for row, prompt_length in enumerate(PROMPT_LENGTHS):
    np.testing.assert_allclose(decoded[row], expected[row], rtol=0, atol=0.05,
                               err_msg=f"prefill of {prompt_length} tokens")


@pytest.mark.parametrize("prompt_length", PROMPT_LENGTHS)
def test_decode_unpadded_prompt(prompt_length):
  config = helpers.make_config()
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(2, 2, SEQ_LEN)
  expected = np.asarray(helpers.forward(params, tokens, config))

  logits, state = helpers.prefill(params, tokens[:, :prompt_length], config, SEQ_LEN)
  assert_decode_close(logits, expected[:, :prompt_length])
  for position in range(prompt_length, SEQ_LEN):
    step_logits, state = helpers.decode_step(params, tokens[:, position], state, config)
    assert_decode_close(step_logits, expected[:, position], err_msg=f"position {position}")


def test_two_layers_three_loops_layout():
  config = helpers.make_config(num_layers=2, num_loops=3, window=4)
  params = helpers.make_params(config)
  batch, prompt_length, max_len = 2, 4, 6
  tokens = helpers.random_tokens(3, batch, max_len)
  expected = np.asarray(helpers.forward(params, tokens, config))

  logits, state = helpers.prefill(params, tokens[:, :prompt_length], config, max_len)
  assert_decode_close(logits, expected[:, :prompt_length])
  for position in range(prompt_length, max_len):
    step_logits, state = helpers.decode_step(params, tokens[:, position], state, config)
    assert_decode_close(step_logits, expected[:, position], err_msg=f"position {position}")

  # One shared cache of C=1, then [L-1, N, B, W, G, K] rings and [L-1, B, D] carries.
  assert state.keys.shape == (1, 2, batch, max_len, 2, 8)
  assert state.values.shape == (1, 2, batch, max_len, 2, 8)
  assert state.local_keys.shape == (2, 2, batch, 4, 2, 8)
  assert state.local_values.shape == (2, 2, batch, 4, 2, 8)
  assert state.local_pos.shape == (batch, 4)
  assert state.carry.shape == (2, batch, 32)
  assert state.pos.shape == (batch,)
  np.testing.assert_array_equal(state.pos, [max_len, max_len])


def test_one_layer_three_loops_placement():
  window = 2
  config = helpers.make_config(num_layers=1, num_loops=3, window=window)
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(4, 2, 4)
  _, outputs = helpers.forward_with_outputs(params, tokens, config)

  _, state = helpers.prefill(params, tokens[:, :3], config, 4)
  np.testing.assert_array_equal(state.pos, [3, 3])
  _, state = helpers.decode_step(params, tokens[:, 3], state, config)
  np.testing.assert_array_equal(state.pos, [4, 4])

  # outputs.keys is [L, N, B, S, G, K], and the new token is at position 3.
  assert_decode_close(state.keys[0, 0, :, 3], outputs.keys[0, 0, :, 3])
  assert_decode_close(state.values[0, 0, :, 3], outputs.values[0, 0, :, 3])
  slot = 3 % window
  for loop in (2, 3):
    assert_decode_close(state.local_keys[loop - 2, 0, :, slot],
                        outputs.keys[loop - 1, 0, :, 3], err_msg=f"loop {loop} key")
    assert_decode_close(state.local_values[loop - 2, 0, :, slot],
                        outputs.values[loop - 1, 0, :, 3], err_msg=f"loop {loop} value")
    # The other slot still contains position 2 from the prompt.
    assert_decode_close(state.local_keys[loop - 2, 0, :, 1 - slot],
                        outputs.keys[loop - 1, 0, :, 2], err_msg=f"loop {loop} key of position 2")
  np.testing.assert_array_equal(state.local_pos, [[2, 3], [2, 3]])


def test_one_token_at_a_time():
  config = helpers.make_config()
  params = helpers.make_params(config)
  tokens = jnp.array([[5, 17, 42, 9]])
  expected = np.asarray(helpers.forward(params, tokens, config))

  logits, state = helpers.prefill(params, tokens[:, :1], config, 16)
  assert_decode_close(logits[:, 0], expected[:, 0])
  for position in (1, 2, 3):
    step_logits, state = helpers.decode_step(params, tokens[:, position], state, config)
    assert_decode_close(step_logits, expected[:, position], err_msg=f"position {position}")


def test_position_advances_per_token():
  config = helpers.make_config()
  params = helpers.make_params(config)
  tokens = jnp.array([[5, 17, 42, 9]])

  _, state = helpers.prefill(params, tokens, config, 16)
  assert int(state.pos[0]) == 4
  _, state = helpers.decode_step(params, jnp.array([3]), state, config)
  assert int(state.pos[0]) == 5
  _, state = helpers.decode_step(params, jnp.array([8]), state, config)
  assert int(state.pos[0]) == 6


def test_ring_buffer_wraps_with_mixed_tokens():
  config = helpers.make_config(window=4)
  params = helpers.make_params(config)
  prompt = helpers.random_tokens(5, 1, 5)
  more_prompt = [11, 29]

  logits, state = helpers.prefill(params, prompt, config, 16)
  sequence = [int(t) for t in prompt[0]]
  collected = list(np.asarray(logits[0]))
  last = logits[:, -1]

  def feed(token):
    nonlocal state, last
    sequence.append(token)
    last, state = helpers.decode_step(params, jnp.array([token]), state, config)
    collected.append(np.asarray(last[0]))

  for _ in range(3):
    feed(int(jnp.argmax(last[0])))
  for token in more_prompt:
    feed(token)
  for _ in range(2):
    feed(int(jnp.argmax(last[0])))

  assert len(sequence) == 12
  expected = np.asarray(helpers.forward(params, jnp.array([sequence]), config))
  assert_decode_close(np.stack(collected), expected[0])


def test_shared_kv_prefill_and_decode_agree():
  """Loops 2 and 3 read loop 1's keys and values whether these come from prefill or decoding."""
  config = helpers.make_config()
  params = helpers.make_params(config)
  length = 8
  tokens = helpers.random_tokens(6, 1, length)
  expected = np.asarray(helpers.forward(params, tokens, config))

  prefill_logits, prefill_state = helpers.prefill(params, tokens, config, 16)
  logits, state = helpers.prefill(params, tokens[:, :1], config, 16)
  decoded = [logits[:, 0]]
  for position in range(1, length):
    step_logits, state = helpers.decode_step(params, tokens[:, position], state, config)
    decoded.append(step_logits)
  decoded = np.stack(decoded, axis=1)

  assert_decode_close(prefill_logits, expected)
  assert_decode_close(decoded, expected)
  assert_decode_close(state.keys, prefill_state.keys)
  assert_decode_close(state.values, prefill_state.values)
  assert_decode_close(state.local_keys, prefill_state.local_keys)
  assert_decode_close(state.carry, prefill_state.carry)
  np.testing.assert_array_equal(state.local_pos, prefill_state.local_pos)


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_donating_decode_step_jit():
  config = helpers.make_config()
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(7, 1, 6)
  expected = np.asarray(helpers.forward(params, tokens, config))

  _, state = helpers.prefill(params, tokens[:, :5], config, 16)
  logits, _ = plt.decode_step_jit(params, tokens[:, 5], state, config)
  assert_decode_close(logits, expected[:, 5])


@pytest.mark.parametrize("prompt_lengths", [[0, 3], [7, 3], [3, 3, 3]])
def test_prefill_rejects_invalid_prompt_lengths(prompt_lengths):
  config = helpers.make_config()
  params = helpers.make_params(config)
  with pytest.raises(ValueError, match="prompt_lengths"):
    plt.prefill(params, helpers.random_tokens(1, 2, 6), config, 8, prompt_lengths)


def test_decode_step_rejects_full_state():
  config = helpers.make_config()
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(1, 2, 6)
  _, state = plt.prefill(params, tokens, config, 6)

  with pytest.raises(ValueError, match="max_len"):
    plt.decode_step(params, tokens[:, 0], state, config)


def test_generate_rejects_short_max_len():
  config = helpers.make_config()
  params = helpers.make_params(config)
  with pytest.raises(ValueError, match="max_len"):
    plt.generate(params, helpers.random_tokens(1, 2, 6), config, jax.random.key(0), 4, max_len=8)


@pytest.fixture(scope="module")
def padded_generation():
  config = helpers.make_config()
  params = helpers.make_params(config)
  tokens = helpers.random_tokens(8, 2, 5)
  prompt_lengths = jnp.array([3, 5])
  # Row 0 is a 3-token prompt padded with token 0.
  prompt = tokens.at[0, 3:].set(0)
  return config, params, prompt, prompt_lengths


def test_generate_padded_rows_match_alone(padded_generation):
  config, params, prompt, prompt_lengths = padded_generation
  key = jax.random.key(0)

  together = plt.generate(params, prompt, config, key, 4, temperature=0.0,
                          prompt_lengths=prompt_lengths)
  first = plt.generate(params, prompt[:1, :3], config, key, 4, temperature=0.0)
  second = plt.generate(params, prompt[1:], config, key, 4, temperature=0.0)

  np.testing.assert_array_equal(together[0], first[0])
  np.testing.assert_array_equal(together[1], second[0])


def test_generate_greedy_matches_argmax(padded_generation):
  config, params, prompt, _ = padded_generation
  generated = np.asarray(plt.generate(params, prompt[1:], config, jax.random.key(0), 4,
                                      temperature=0.0))

  sequence = np.concatenate([np.asarray(prompt[1]), generated[0]])
  logits = np.asarray(helpers.forward(params, jnp.asarray(sequence[None]), config))
  np.testing.assert_array_equal(generated[0], np.argmax(logits[0, 4:8], axis=-1))


def test_generate_sampling_reproducible(padded_generation):
  config, params, prompt, prompt_lengths = padded_generation
  key = jax.random.key(3)

  first = plt.generate(params, prompt, config, key, 8, temperature=1.0,
                       prompt_lengths=prompt_lengths)
  second = plt.generate(params, prompt, config, key, 8, temperature=1.0,
                        prompt_lengths=prompt_lengths)
  np.testing.assert_array_equal(first, second)


def test_generate_sampling_depends_on_key(padded_generation):
  config, params, prompt, prompt_lengths = padded_generation
  # At temperature 1000 every token has probability close to 1/64, so two keys
  # give the same 16 tokens with probability about 64**-16.
  first = plt.generate(params, prompt, config, jax.random.key(3), 8, temperature=1000.0,
                       prompt_lengths=prompt_lengths)
  second = plt.generate(params, prompt, config, jax.random.key(4), 8, temperature=1000.0,
                        prompt_lengths=prompt_lengths)
  assert not np.array_equal(first, second)


def test_sample_zero_temperature_is_argmax():
  logits = jax.random.normal(jax.random.key(0), (4, 32))
  tokens = plt.sample(logits, jax.random.key(1), 0.0)
  np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))


def test_sample_top_k_one_is_argmax():
  logits = jax.random.normal(jax.random.key(0), (4, 32))
  for seed in range(5):
    tokens = plt.sample(logits, jax.random.key(seed), 1.0, top_k=1)
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1), err_msg=f"seed {seed}")


def test_sample_top_k_stays_in_top_k():
  logits = jax.random.normal(jax.random.key(0), (4, 32))
  top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
  sampled = jax.vmap(lambda key: plt.sample(logits, key, 5.0, top_k=3))(
      jax.random.split(jax.random.key(2), 50))  # [50, 4]
  in_top3 = (np.asarray(sampled)[:, :, None] == top3[None]).any(axis=-1)
  assert in_top3.all()


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr


def _scans(jaxpr, length):
  """Collect every scan equation of the given length in jaxpr and its sub-jaxprs."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan" and eqn.params["length"] == length:
      found.append(eqn)
    for sub in _subjaxprs(eqn):
      found += _scans(sub, length)
  return found


def _decode_step_jaxpr(config, batch):
  params = helpers.make_params(config)
  state = plt.init_decode_state(config, batch, 16)
  step = functools.partial(plt.decode_step, config=config)
  return jax.make_jaxpr(step)(params, jnp.zeros((batch,), jnp.int32), state).jaxpr


@pytest.mark.parametrize("overrides, rows", [
    (dict(num_loops=3), 3),
    (dict(variant="baseline", num_loops=1), 1),
])
def test_decode_step_runs_stack_once(overrides, rows):
  config = helpers.make_config(num_layers=2, **overrides)
  batch = 2
  layer_scans = _scans(_decode_step_jaxpr(config, batch), config.num_layers)

  assert len(layer_scans) == 1
  # The scan carries x first: one pass over all B x L rows.
  scan = layer_scans[0]
  x_in = scan.invars[scan.params["num_consts"]]
  assert x_in.aval.shape == (batch, rows, config.d_model)


def test_loop_decode_step_runs_stack_per_loop():
  config = helpers.make_config(variant="loop", num_layers=2, num_loops=3)
  jaxpr = _decode_step_jaxpr(config, 2)

  loop_scans = _scans(jaxpr, 3)
  assert len(loop_scans) == 1
  assert len(_scans(loop_scans[0].params["jaxpr"].jaxpr, 2)) == 1
  assert len(_scans(jaxpr, 2)) == 1
