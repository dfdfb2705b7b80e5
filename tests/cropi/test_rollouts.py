"""Rollouts, verifiers and the offline store."""

import dataclasses
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cropi import rollouts
from tests.cropi import helpers


def categorical_sampler(params, prompts_MxP, prompt_lengths_M, keys_M, max_new=6, temperature=1.0):
  """Samples max_new tokens from a fixed distribution; token 0 ends a completion."""
  del prompts_MxP, prompt_lengths_M
  logits = params / temperature
  tokens = jax.vmap(lambda k: jax.random.categorical(k, logits, shape=(max_new,)))(keys_M)
  ended = jnp.cumsum(tokens == 0, axis=1) - (tokens == 0) > 0  # strictly after the first end token
  tokens = jnp.where(ended, 0, tokens)
  lengths = jnp.where(jnp.any(tokens == 0, axis=1), jnp.argmax(tokens == 0, axis=1) + 1, max_new)
  log_probs = jax.nn.log_softmax(logits)[tokens]
  return tokens, lengths, jnp.where(jnp.arange(max_new) < lengths[:, None], log_probs, 0.0)


def first_token_verifier(prompt_ids, completions, lengths):
  """Reward 1 when the first token equals prompt_id mod 3 + 1."""
  del lengths
  return [float(c[0] == p % 3 + 1) for p, c in zip(prompt_ids, completions)]


LOGITS = jnp.array([0.5, 1.0, 1.0, 1.0, 0.2])


def test_samples_from_one_base_key_differ_and_repeat():
  prompts = np.ones((1, 2), np.int32)
  first = rollouts.generate(categorical_sampler, first_token_verifier, LOGITS, prompts, np.array([2]),
                            jax.random.key(7), num_samples=4)
  again = rollouts.generate(categorical_sampler, first_token_verifier, LOGITS, prompts, np.array([2]),
                            jax.random.key(7), num_samples=4)
  other = rollouts.generate(categorical_sampler, first_token_verifier, LOGITS, prompts, np.array([2]),
                            jax.random.key(8), num_samples=4)
  assert len({tuple(row) for row in first.completions.tolist()}) > 1
  np.testing.assert_array_equal(first.completions, again.completions)
  np.testing.assert_array_equal(first.rewards, again.rewards)
  assert not np.array_equal(first.completions, other.completions)


def test_rows_are_prompt_major_and_rewards_aligned():
  prompts = np.ones((3, 2), np.int32)
  out = rollouts.generate(categorical_sampler, first_token_verifier, LOGITS, prompts,
                          np.array([1, 2, 2]), jax.random.key(0), num_samples=5,
                          prompt_ids_N=np.array([10, 11, 12]))
  np.testing.assert_array_equal(out.prompt_ids, np.repeat([10, 11, 12], 5))
  np.testing.assert_array_equal(out.group_ids, np.repeat([0, 1, 2], 5))
  expected = [float(c[0] == p % 3 + 1) for p, c in zip(out.prompt_ids, out.completions)]
  np.testing.assert_array_equal(out.rewards, expected)
  groups = out.rewards.reshape(3, 5)
  assert out.num_zero_variance_groups == int(np.sum(groups.max(1) == groups.min(1)))


def test_zero_variance_groups_are_counted_not_resampled():
  calls = []

  def sampler(params, prompts, lengths, keys):
    calls.append(len(keys))
    return categorical_sampler(params, prompts, lengths, keys)

  out = rollouts.generate(sampler, lambda ids, c, n: [1.0] * len(ids), LOGITS, np.ones((2, 1)),
                          np.array([1, 1]), jax.random.key(0), num_samples=3)
  assert calls == [6]
  assert out.num_zero_variance_groups == 2


# A toy vocabulary for text verifiers: token id i is the character CHARS[i].
CHARS = "\0" + "0123456789:+= " + string.ascii_letters


def _encode(text, width=16):
  ids = [CHARS.index(ch) for ch in text]
  return ids + [0] * (width - len(ids))


def _decode(ids, length):
  return "".join(CHARS[i] for i in ids[:length]).rstrip("\0")


def test_five_completions_two_without_a_final_answer():
  texts = ["2+2=4 Answer:4", "2+2=5", "Answer: 5", "no answer here", "Answer:04"]
  completions = np.array([_encode(t) for t in texts])
  lengths = np.array([len(t) for t in texts])
  references = {0: "4", 1: "4", 2: "5", 3: "4", 4: "4"}

  def verifier(prompt_ids, comps, lens):
    return [rollouts.exact_match_reward(_decode(c, n), references[int(p)],
                                        normalize=rollouts.canonical_number)
            for p, c, n in zip(prompt_ids, comps, lens)]

  rewards = rollouts.score(verifier, np.arange(5), completions, lengths)
  np.testing.assert_array_equal(rewards, [1.0, 0.0, 1.0, 0.0, 1.0])


def test_unparseable_reference_never_scores():
  for completion in ("Answer: 7", "Answer:", "Answer: seven", ""):
    assert rollouts.exact_match_reward(completion, "seven", normalize=rollouts.canonical_number) == 0.0
    assert rollouts.exact_match_reward(completion, None) == 0.0


def test_answer_extraction_and_numbers():
  assert rollouts.extract_answer("work\nAnswer: 12\nAnswer: 13 \nmore") == "13"
  assert rollouts.extract_answer("Answer:   ") is None
  assert rollouts.extract_answer("#### 5", marker="####") == "5"
  assert rollouts.canonical_number("1,200") == "1200"
  assert rollouts.canonical_number("1200.0") == "1200"
  assert rollouts.canonical_number("-0.5") == "-0.5"
  assert rollouts.canonical_number("12 apples") is None


def test_verifier_must_return_one_finite_reward_per_row():
  completions = np.zeros((3, 2), np.int32)
  with pytest.raises(ValueError, match=r"shape \(2,\); expected \(3,\)"):
    rollouts.score(lambda *a: [1.0, 0.0], np.arange(3), completions, np.ones(3))
  with pytest.raises(ValueError, match=r"non-finite rewards at rows \[1\]"):
    rollouts.score(lambda *a: [1.0, np.nan, 0.0], np.arange(3), completions, np.ones(3))


def test_bad_generate_arguments_raise():
  with pytest.raises(ValueError, match="invalid num_samples 0"):
    rollouts.generate(categorical_sampler, first_token_verifier, LOGITS, np.ones((1, 2)), np.array([1]),
                      jax.random.key(0), num_samples=0)
  with pytest.raises(ValueError, match="prompt_lengths shape"):
    rollouts.generate(categorical_sampler, first_token_verifier, LOGITS, np.ones((2, 2)), np.array([1]),
                      jax.random.key(0), num_samples=2)


# ---------------------------------------------------------------- offline store


def test_store_from_rollouts_round_trips_through_npz(tmp_path):
  prompts = np.array([[1, 2, 0], [3, 0, 0]], np.int32)
  lengths = np.array([2, 1])
  out = rollouts.generate(categorical_sampler, first_token_verifier, LOGITS, prompts, lengths,
                          jax.random.key(3), num_samples=4)
  store = rollouts.build_store(out, prompts, lengths, 4, metadata={"temperature": 0.5, "source": "t"})
  assert store.completions.shape == (2, 4, 6)
  np.testing.assert_array_equal(store.rewards.ravel(), out.rewards)
  path = tmp_path / "store.npz"
  np.savez(path, **store.to_arrays())
  with np.load(path) as data:
    loaded = rollouts.OfflineStore.from_arrays(data)
  assert loaded.content_hash == store.content_hash
  assert loaded.metadata == {"temperature": 0.5, "source": "t"}
  for name in ("completions", "rewards", "behaviour_log_probs"):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(store, name))


def test_store_is_immutable_and_its_hash_tracks_content():
  store = helpers.make_store()
  with pytest.raises(ValueError):
    store.rewards[0, 0] = 5.0
  with pytest.raises(dataclasses.FrozenInstanceError):
    store.rewards = None
  rewards = np.array(store.rewards)
  rewards[0, 0] = 1.0 - rewards[0, 0]
  changed = dataclasses.replace(store, rewards=rewards)
  assert changed.content_hash != store.content_hash
  assert helpers.make_store().content_hash == store.content_hash
  relabelled = dataclasses.replace(store, metadata={**store.metadata, "temperature": 1.0})
  assert relabelled.content_hash != store.content_hash


def test_examples_place_each_completion_right_after_its_prompt():
  store = helpers.make_store()
  ex = store.examples([2, 5])
  for row, i in enumerate([2, 5]):
    plen = store.prompt_lengths[i]
    for k in range(store.num_samples):
      clen = store.completion_lengths[i, k]
      expected = list(store.prompt_tokens[i, :plen]) + list(store.completions[i, k, :clen])
      tokens = ex["tokens"][row, k]
      assert tokens[:plen + clen].tolist() == expected
      assert not np.any(tokens[plen + clen:])
      mask = np.zeros_like(tokens)
      mask[plen:plen + clen] = 1
      np.testing.assert_array_equal(ex["mask"][row, k], mask)
  np.testing.assert_array_equal(ex["rewards"], store.rewards[[2, 5]])


def test_teacher_forced_log_probs_match_the_full_sequences():
  params = helpers.init_lm(4)
  store = helpers.make_store(behaviour_params=params)
  ex = store.examples()
  full = np.asarray(helpers.log_prob_fn(params, jnp.asarray(ex["tokens"][3])))
  np.testing.assert_allclose(ex["behaviour_log_probs"][3], full * ex["mask"][3], rtol=1e-6, atol=1e-7)


def test_pass_rates_and_zero_variance_groups():
  store = helpers.make_store(degenerate=(1, 4))
  np.testing.assert_allclose(store.pass_rates, store.rewards.mean(axis=1))
  assert rollouts.zero_variance_groups(store.rewards).tolist() == [
      i in (1, 4) for i in range(store.num_prompts)]


@pytest.mark.parametrize("change, message", [
    ({"rewards": np.zeros((7, 3))}, r"rewards has shape \(7, 3\); expected \(7, 4\)"),
    ({"prompt_lengths": np.zeros(7)}, r"prompt_lengths must lie in \[1, 3\]"),
    ({"prompt_ids": np.zeros(7)}, "prompt_ids must be unique"),
    ({"metadata": {"bad": [1, 2]}}, r"metadata\['bad'\] is a list"),
])
def test_store_rejects_inconsistent_arrays(change, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(helpers.make_store(), **change)


def test_from_arrays_names_missing_fields():
  arrays = helpers.make_store().to_arrays()
  del arrays["rewards"]
  with pytest.raises(ValueError, match=r"lack \['rewards'\]"):
    rollouts.OfflineStore.from_arrays(arrays)


def test_canonical_number_keeps_every_digit():
  assert rollouts.canonical_number("12345678901234567890") == "12345678901234567890"
  assert rollouts.canonical_number("$1,200.50") == "1200.5"
  assert rollouts.canonical_number(".5") == "0.5"
  assert rollouts.canonical_number("1,2,3") is None
