"""GRPO advantages, surrogate, KL, aggregation and the POPI loss against closed forms."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cropi import objectives
from tests.cropi import helpers


def _reference_advantages(rewards, ddof=1, eps=1e-4):
  r = np.asarray(rewards, np.float64)
  if r.max() == r.min():
    return np.zeros_like(r)
  return (r - r.mean()) / (r.std(ddof=ddof) + eps)


# ---------------------------------------------------------------- advantages


def test_advantages_equal_inexact_rewards_zero():
  rewards = jnp.full((8,), 0.35, jnp.float32)
  adv = objectives.group_advantages(rewards, jnp.zeros(8, jnp.int32))
  assert np.all(np.asarray(adv) == 0.0)
  assert np.all(np.asarray(objectives.prompt_advantages(rewards[None])) == 0.0)


def test_seven_equal_and_one_different_reward():
  rewards = np.array([0.35] * 7 + [0.95], np.float32)
  adv = objectives.group_advantages(jnp.asarray(rewards), jnp.zeros(8, jnp.int32))
  np.testing.assert_allclose(adv, _reference_advantages(rewards), rtol=1e-5)
  assert adv[7] > 0
  assert np.all(np.asarray(adv[:7]) < 0)
  assert len(set(np.asarray(adv[:7]).tolist())) == 1


def test_interleaved_prompts_are_grouped_by_id():
  # p0's two completions are rewarded 1 and 0, p1's both 1; stored [p0, p1, p0, p1].
  rewards = jnp.array([1.0, 1.0, 0.0, 1.0])
  ids = jnp.array([0, 1, 0, 1])
  adv = np.asarray(objectives.group_advantages(rewards, ids))
  c = 0.5 / (np.sqrt(0.5) + 1e-4)
  np.testing.assert_allclose(adv, [c, 0.0, -c, 0.0], rtol=1e-6)
  assert adv[1] == 0.0
  assert adv[3] == 0.0
  # Treating consecutive pairs as groups would give different advantages.
  contiguous = np.asarray(objectives.prompt_advantages(rewards.reshape(2, 2))).ravel()
  assert not np.allclose(contiguous, adv)


def test_storage_order_does_not_matter():
  rng = np.random.default_rng(0)
  rewards = rng.integers(0, 2, 24).astype(np.float32)
  ids = np.repeat(np.arange(4), 6)
  perm = rng.permutation(24)
  sorted_adv = objectives.group_advantages(jnp.asarray(rewards), jnp.asarray(ids))
  shuffled = objectives.group_advantages(jnp.asarray(rewards[perm]), jnp.asarray(ids[perm]))
  np.testing.assert_allclose(np.asarray(shuffled), np.asarray(sorted_adv)[perm], rtol=1e-6)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 1e-4, 0.1])
def test_advantages_match_numpy_per_group(ddof, eps):
  rng = np.random.default_rng(ddof)
  rewards = rng.random((5, 8)).astype(np.float32)
  rewards[2] = 0.7
  expected = np.stack([_reference_advantages(r, ddof, eps) for r in rewards])
  got = objectives.group_advantages(jnp.asarray(rewards.ravel()), jnp.repeat(jnp.arange(5), 8),
                                    std_ddof=ddof, eps=eps)
  np.testing.assert_allclose(np.asarray(got).reshape(5, 8), expected, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(objectives.prompt_advantages(rewards, std_ddof=ddof, eps=eps), expected,
                             rtol=2e-5, atol=1e-6)


def test_known_reward_vector_with_bessel_std():
  # mean 0.25; Bessel std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
  adv = objectives.prompt_advantages(jnp.array([1.0, 0.0, 0.0, 0.0]))
  np.testing.assert_allclose(adv, [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001],
                             rtol=1e-6)


def test_std_floor_bounds_the_divisor():
  rewards = jnp.array([0.50, 0.51])
  adv = objectives.group_advantages(rewards, jnp.zeros(2, jnp.int32), std_floor=1.0, eps=0.0)
  np.testing.assert_allclose(adv, [-0.005, 0.005], rtol=1e-4)


def test_single_completion_group_gets_zero():
  adv = objectives.group_advantages(jnp.array([1.0, 0.0, 1.0]), jnp.array([0, 1, 1]))
  assert float(adv[0]) == 0.0


def test_equal_weights_give_population_std():
  rewards = jnp.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
  weighted = objectives.weighted_prompt_advantages(rewards, jnp.full((1, 5), 3.0))
  np.testing.assert_allclose(weighted, objectives.prompt_advantages(rewards, std_ddof=0), rtol=1e-6)


def test_weighted_statistics_match_the_formula():
  rewards = np.array([1.0, 0.0, 1.0, 0.0])
  w = np.array([2.0, 1.0, 0.5, 0.5])
  mu = np.sum(w * rewards) / np.sum(w)
  sigma = np.sqrt(np.sum(w * (rewards - mu) ** 2) / np.sum(w))
  got = objectives.weighted_prompt_advantages(jnp.asarray(rewards), jnp.asarray(w))
  np.testing.assert_allclose(got, (rewards - mu) / (sigma + 1e-4), rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"std_ddof": 2}, "invalid std_ddof 2"),
    ({"eps": -1.0}, "invalid eps -1.0"),
])
def test_bad_advantage_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    objectives.group_advantages(jnp.ones(2), jnp.zeros(2, jnp.int32), **kwargs)


def test_mismatched_shapes_and_float_ids_raise():
  with pytest.raises(ValueError, match="must be equal"):
    objectives.group_advantages(jnp.ones(3), jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match="group_ids dtype"):
    objectives.group_advantages(jnp.ones(2), jnp.zeros(2))


# ---------------------------------------------------------------- aggregation


def test_lengths_one_and_three_with_opposite_advantages():
  mask = jnp.array([[1.0, 0, 0], [1.0, 1.0, 1.0]])
  logp = jnp.log(jnp.full((2, 3), 0.3))
  per_token = objectives.clipped_surrogate(logp, logp, jnp.array([1.0, -1.0]))
  assert float(objectives.aggregate(per_token, mask, "seq_mean_token_mean")) == 0.0
  assert float(objectives.aggregate(per_token, mask, "token_mean")) == pytest.approx(0.5)


def test_aggregate_micro_batch_split():
  losses = jnp.array([[1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0], [0.0] * 5])
  mask = jnp.array([[1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0], [1.0] * 5])
  whole = objectives.aggregate(losses, mask, "token_mean")
  halves = sum(objectives.aggregate(losses[i:i + 2], mask[i:i + 2], "token_mean", num_tokens=8.0)
               for i in (0, 2))
  assert float(whole) == pytest.approx(0.375)
  assert float(halves) == pytest.approx(0.375)
  seq_whole = objectives.aggregate(losses, mask, "seq_mean_token_mean")
  seq_halves = sum(objectives.aggregate(losses[i:i + 2], mask[i:i + 2], num_sequences=4)
                   for i in (0, 2))
  assert float(seq_whole) == pytest.approx(0.75)
  assert float(seq_halves) == pytest.approx(0.75)


def test_padding_values_are_ignored_even_when_not_finite():
  losses = jnp.array([[2.0, jnp.nan, jnp.inf]])
  mask = jnp.array([[1.0, 0.0, 0.0]])
  for mode in objectives.AGGREGATIONS:
    assert float(objectives.aggregate(losses, mask, mode)) == 2.0


def test_unknown_aggregation_raises():
  with pytest.raises(ValueError, match="invalid aggregation 'mean'"):
    objectives.aggregate(jnp.ones((1, 1)), jnp.ones((1, 1)), "mean")


# ---------------------------------------------------------------- surrogate and KL


def _token_grad(log_ratio, advantage, **clip):
  def loss(lp):
    return objectives.clipped_surrogate(lp, jnp.zeros_like(lp), jnp.array([advantage]), **clip)[0, 0]
  return float(jax.grad(loss)(jnp.array([[log_ratio]]))[0, 0])


@pytest.mark.parametrize("ratio, advantage, clipped", [
    (1.5, 1.0, True), (0.5, -1.0, True),  # left the interval in the advantage's direction
    (1.5, -1.0, False), (0.5, 1.0, False), (1.1, 1.0, False), (0.9, -1.0, False),
])
def test_clipping_zeroes_outward_gradient(ratio, advantage, clipped):
  grad = _token_grad(np.log(ratio), advantage, clip_low=0.2, clip_high=0.2)
  if clipped:
    assert grad == 0.0
  else:
    assert grad == pytest.approx(-ratio * advantage, rel=1e-6)


def test_clip_higher_uses_its_own_upper_bound():
  assert _token_grad(np.log(1.25), 1.0, clip_low=0.2, clip_high=0.28) != 0.0
  assert _token_grad(np.log(1.25), 1.0, clip_low=0.2, clip_high=0.2) == 0.0


def test_half_set_clip_bounds_raise():
  with pytest.raises(ValueError, match="both be set"):
    objectives.clipped_surrogate(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones(1), clip_low=0.2,
                                 clip_high=None)


def test_k3_expectation_is_the_exact_kl():
  p = jax.nn.softmax(jnp.array([0.3, -1.0, 2.0, 0.1]))
  q = jax.nn.softmax(jnp.array([0.0, 0.5, 1.0, -0.4]))
  k3 = objectives.k3_kl(jnp.log(p), jnp.log(q))
  assert np.all(np.asarray(k3) >= 0)
  np.testing.assert_allclose(jnp.sum(p * k3), jnp.sum(p * (jnp.log(p) - jnp.log(q))), rtol=1e-5)
  assert float(jnp.max(jnp.abs(objectives.k3_kl(jnp.log(p), jnp.log(p))))) == 0.0


def test_grpo_loss_adds_the_weighted_kl():
  logp = jnp.log(jnp.array([[0.2, 0.5], [0.4, 0.4]]))
  ref = jnp.log(jnp.array([[0.3, 0.4], [0.4, 0.1]]))
  mask = jnp.ones((2, 2))
  adv = jnp.array([1.0, -0.5])
  plain, _ = objectives.grpo_loss(logp, logp, adv, mask)
  with_kl, metrics = objectives.grpo_loss(logp, logp, adv, mask, ref_log_probs_BxT=ref, kl_coef=0.1)
  kl = objectives.aggregate(objectives.k3_kl(logp, ref), mask)
  assert float(with_kl) == pytest.approx(float(plain + 0.1 * kl), rel=1e-6)
  assert float(metrics["ratio"]) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="needs ref_log_probs"):
    objectives.grpo_loss(logp, logp, adv, mask, kl_coef=0.1)


def test_sequence_log_probs_align_with_tokens():
  logits = jax.random.normal(jax.random.key(0), (2, 4, 5))
  tokens = jnp.array([[1, 2, 3, 4], [0, 0, 1, 1]])
  got = objectives.sequence_log_probs(logits, tokens, temperature=0.5)
  logp = jax.nn.log_softmax(logits / 0.5)
  for b, t in itertools.product(range(2), range(1, 4)):
    assert float(got[b, t]) == pytest.approx(float(logp[b, t - 1, tokens[b, t]]), rel=1e-6)
  assert np.all(np.asarray(got[:, 0]) == 0.0)


# ---------------------------------------------------------------- POPI


def _popi_grad(params, example, **kwargs):
  loss = objectives.make_prompt_loss(helpers.log_prob_fn, **kwargs)
  return jax.jit(jax.grad(loss))(params, example)


def _example(store, i):
  return {k: jnp.asarray(v[i]) for k, v in store.examples().items()}


def test_popi_at_behaviour_is_on_policy():
  params = helpers.init_lm(0)
  store = helpers.make_store(behaviour_params=params)
  example = _example(store, 0)
  adv = objectives.prompt_advantages(example["rewards"])
  lengths = example["mask"].sum(-1)

  def reference(p):  # -(1/K) sum_k (A_k / |o_k|) sum_t log pi(o_kt)
    lp = helpers.log_prob_fn(p, example["tokens"])
    return -jnp.mean(adv * jnp.sum(lp * example["mask"], -1) / lengths)

  expected = jax.grad(reference)(params)
  for kwargs in ({}, {"clip_eps": 0.2}):
    got = _popi_grad(params, example, **kwargs)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  onpolicy = jax.grad(objectives.make_prompt_loss(helpers.log_prob_fn, off_policy=False))(params, example)
  for a, b in zip(jax.tree.leaves(onpolicy), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_importance_weighted_population_std():
  params = helpers.init_lm(0)
  store = helpers.make_store(behaviour_params=params)
  example = _example(store, 2)
  weighted = objectives.make_prompt_loss(helpers.log_prob_fn, importance_weighted=True)
  population = objectives.make_prompt_loss(helpers.log_prob_fn, std_ddof=0)
  plain = objectives.make_prompt_loss(helpers.log_prob_fn)
  grads = [jax.grad(f)(params, example)["out"] for f in (weighted, population, plain)]
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)
  # Bessel's std is larger, so the plain gradient is smaller by sqrt((K - 1) / K).
  np.testing.assert_allclose(grads[2], grads[1] * np.sqrt(3 / 4), rtol=1e-3, atol=1e-8)


def test_bandit_off_policy_expectation_exact():
  theta = jnp.array([0.4, -0.3, 1.2, 0.0, -1.1])
  behaviour = jax.nn.log_softmax(jnp.array([0.0, 0.5, -0.2, 0.3, 0.1]))
  advantages = jnp.array([1.0, -0.5, 0.25, 2.0, -1.5])
  mask = jnp.ones((1, 1))

  def off_policy(th, x):
    lp = jax.nn.log_softmax(th)[x].reshape(1, 1)
    per_token = objectives.clipped_surrogate(lp, behaviour[x].reshape(1, 1), advantages[x:x + 1],
                                             clip_low=None, clip_high=None)
    return objectives.aggregate(per_token, mask)

  def on_policy(th, x):
    return -jax.nn.log_softmax(th)[x] * advantages[x]

  pi = jax.nn.softmax(theta)
  beta = jnp.exp(behaviour)
  off = sum(beta[x] * jax.grad(off_policy)(theta, x) for x in range(5))
  on = sum(pi[x] * jax.grad(on_policy)(theta, x) for x in range(5))
  np.testing.assert_allclose(off, on, rtol=1e-5, atol=1e-7)
  assert float(jnp.max(jnp.abs(on))) > 0.05


def _two_token_gap(theta, beta_theta):
  """Exact sequence-level gradient minus the expected token-ratio estimator, two tokens of 2 values."""
  reward = jnp.array([[1.0, -1.0], [0.5, 2.0]])  # A(o1, o2)

  def token_logps(th):  # th: first-token logits [2] and second-token logits [2, 2] given o1
    return jax.nn.log_softmax(th["first"]), jax.nn.log_softmax(th["second"], axis=-1)

  def exact(th):
    l1, l2 = token_logps(th)
    return -jnp.sum(jnp.exp(l1[:, None] + l2) * reward)

  b1, b2 = token_logps(beta_theta)

  def estimator(th):  # expected over o ~ beta of -(1/2) sum_t rho_t A(o), times 2 for the sum form
    l1, l2 = token_logps(th)
    rho1 = jnp.exp(l1 - b1)[:, None]
    rho2 = jnp.exp(l2 - b2)
    return -jnp.sum(jnp.exp(b1[:, None] + b2) * (rho1 + rho2) * reward)

  g_exact = jax.grad(exact)(theta)
  g_est = jax.grad(estimator)(theta)
  return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_exact),
                                                              jax.tree.leaves(g_est)))


def test_token_ratio_estimator_bias():
  beta = {"first": jnp.array([0.2, -0.4]), "second": jnp.array([[0.0, 1.0], [-0.5, 0.3]])}
  moved = {"first": jnp.array([1.5, -1.0]), "second": jnp.array([[1.0, -1.0], [0.8, -0.6]])}
  assert _two_token_gap(beta, beta) < 1e-6
  assert _two_token_gap(moved, beta) > 0.05


def test_degenerate_group_has_exactly_zero_gradient():
  params = helpers.init_lm(1)
  store = helpers.make_store(degenerate=(3,))
  grad = _popi_grad(params, _example(store, 3))
  assert all(np.all(np.asarray(g) == 0.0) for g in jax.tree.leaves(grad))
  other = _popi_grad(params, _example(store, 0))
  assert any(np.any(np.asarray(g) != 0.0) for g in jax.tree.leaves(other))


def test_right_padding_changes_neither_loss_nor_gradient():
  params = helpers.init_lm(2)
  behaviour = helpers.init_lm(3)
  store = helpers.make_store(behaviour_params=behaviour)
  example = _example(store, 4)
  padded = dict(example)
  pad = 5
  padded["tokens"] = jnp.pad(example["tokens"], ((0, 0), (0, pad)), constant_values=3)
  padded["mask"] = jnp.pad(example["mask"], ((0, 0), (0, pad)))
  padded["behaviour_log_probs"] = jnp.pad(example["behaviour_log_probs"], ((0, 0), (0, pad)),
                                          constant_values=-7.0)
  loss = jax.jit(objectives.make_prompt_loss(helpers.log_prob_fn))
  grad = jax.jit(jax.grad(loss))
  assert float(loss(params, padded)) == pytest.approx(float(loss(params, example)), rel=1e-6)
  for a, b in zip(jax.tree.leaves(grad(params, padded)), jax.tree.leaves(grad(params, example))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_each_response_is_normalised_by_its_own_length():
  logp = jnp.log(jnp.array([[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]))
  behaviour = jnp.log(jnp.array([[0.25, 0.25, 0.25], [0.5, 0.5, 0.5]]))
  mask = jnp.array([[1.0, 0, 0], [1.0, 1.0, 1.0]])
  rewards = jnp.array([1.0, 0.0])
  a = 0.5 / (np.sqrt(0.5) + 1e-4)
  # Sequence 0: one token with ratio 2; sequence 1: three tokens with ratio 0.5.
  expected = -0.5 * (2.0 * a + (3 * 0.5 * -a) / 3)
  got = objectives.popi_loss(logp, behaviour, rewards, mask)
  assert float(got) == pytest.approx(expected, rel=1e-6)


def test_on_policy_loss_rejects_off_policy_options():
  with pytest.raises(ValueError, match="clip_eps=0.2"):
    objectives.make_prompt_loss(helpers.log_prob_fn, off_policy=False, clip_eps=0.2)
