"""Selection rules against hand-ranked examples and the shared return contract."""

import numpy as np
import pytest

from cropi import selection

NAN = np.nan

# Three validation sets over six prompts. Per-set rankings with n = 3:
#   set 0: p0 (1), p1 (2), p3 (3)
#   set 1: p2 (1), p4 (2), p1 (3)
#   set 2: p3 (1), p0 (2), p1 (3)
RRF_SCORES = np.array([
    [0.9, 0.1, 0.5],
    [0.8, 0.7, 0.4],
    [0.1, 0.9, 0.3],
    [0.5, 0.2, 0.9],
    [0.2, 0.8, 0.1],
    [0.3, 0.3, 0.2],
])
RRF_FUSED = np.array([1 + 1 / 2, 1 / 2 + 1 / 3 + 1 / 3, 1.0, 1 / 3 + 1, 1 / 2, 0.0])


def _contract_inputs(pool_size=40, seed=0):
  """Scores and rewards whose ineligible prompts agree, as in a real run.

  A prompt with all-equal rewards has a zero gradient, so its scores are NaN.
  """
  rng = np.random.default_rng(seed)
  rewards = (rng.uniform(size=(pool_size, 8)) < rng.uniform(size=(pool_size, 1))).astype(float)
  rewards[:12:2] = 0.0
  rewards[1:12:2] = 1.0
  rates = rewards.mean(axis=1)
  degenerate = (rates == 0.0) | (rates == 1.0)

  scores = rng.normal(size=(pool_size, 3))
  scores[degenerate] = NAN
  return scores, rewards, degenerate


def test_num_selected_counts_whole_pool():
  assert selection.num_selected(30, 0.1) == 3
  assert selection.num_selected(10, 1.0) == 10
  assert selection.num_selected(5, 0.1) == 0
  assert selection.num_selected(0, 0.5) == 0


def test_num_selected_floors_decimal_ratios():
  assert selection.num_selected(100, 0.29) == 29
  assert selection.num_selected(100, 0.57) == 57
  assert selection.num_selected(99, 0.1) == 9


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, NAN, True, "0.1"])
def test_num_selected_invalid_ratio_raises(ratio):
  with pytest.raises(ValueError, match=f"select_ratio must be in \\(0, 1\\]; got {ratio!r}"):
    selection.num_selected(10, ratio)


@pytest.mark.parametrize("pool_size", [-1, 2.0])
def test_num_selected_invalid_pool_raises(pool_size):
  with pytest.raises(ValueError, match=f"pool_size .* got {pool_size!r}"):
    selection.num_selected(pool_size, 0.1)


def test_n_counts_ineligible_prompts():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(30, 2))
  scores[10:] = NAN
  n = selection.num_selected(30, 0.1)
  ids = selection.select("valid_uniform", n, scores=scores)

  assert n == 3
  assert ids.size == 3
  assert np.all(ids < 10)


def test_top_n_ties_by_lower_id():
  ids = selection.top_n([0.5, 0.7, 0.5, 0.7, 0.5], 3)
  np.testing.assert_array_equal(ids, [1, 3, 0])
  assert ids.dtype == np.int64


def test_top_n_skips_nan_and_mask():
  scores = [NAN, 0.9, 0.8, 0.7]
  np.testing.assert_array_equal(selection.top_n(scores, 4), [1, 2, 3])
  np.testing.assert_array_equal(
      selection.top_n(scores, 4, eligible=[True, False, True, True]), [2, 3])


@pytest.mark.parametrize("n", [-1, 1.5])
def test_top_n_invalid_n_raises(n):
  with pytest.raises(ValueError, match=f"n must be an integer >= 0; got {n!r}"):
    selection.top_n([1.0, 2.0], n)


def test_top_n_shape_errors():
  with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
    selection.top_n(np.ones((2, 2)), 1)
  with pytest.raises(ValueError, match=r"eligible has shape \(3,\)"):
    selection.top_n(np.ones(2), 1, eligible=[True, True, True])


def test_equal_scores_select_lowest_ids():
  scores = np.full((8, 2), 0.25)
  np.testing.assert_array_equal(selection.select_valid_uniform(scores, 3), [0, 1, 2])
  np.testing.assert_array_equal(selection.select_max(scores, 3), [0, 1, 2])


def test_fused_score_matches_hand_sum():
  fused = selection.reciprocal_rank_fusion(RRF_SCORES, 3)
  np.testing.assert_allclose(fused, RRF_FUSED, rtol=1e-12)


def test_valid_uniform_hand_example():
  ids = selection.select_valid_uniform(RRF_SCORES, 3)
  np.testing.assert_array_equal(ids, [0, 3, 1])


def test_max_hand_example():
  # Row maxima 0.9, 0.8, 0.9, 0.9, 0.8, 0.3: three-way tie broken by id.
  np.testing.assert_array_equal(selection.select_max(RRF_SCORES, 3), [0, 2, 3])


def test_fusion_marks_ineligible_nan():
  scores = RRF_SCORES.copy()
  scores[0] = NAN
  fused = selection.reciprocal_rank_fusion(scores, 3)

  assert np.isnan(fused[0])
  # Without p0, set 0 ranks p1, p3, p5 and set 2 ranks p3, p1, p2.
  expected = [1 + 1 / 3 + 1 / 2, 1 / 1 + 1 / 3, 1 / 2 + 1, 1 / 2, 1 / 3]
  np.testing.assert_allclose(fused[1:], expected, rtol=1e-12)


def test_partly_nan_row_is_ineligible():
  scores = np.array([[0.9, NAN], [0.1, 0.2], [0.3, 0.4]])
  assert np.isnan(selection.reciprocal_rank_fusion(scores, 2)[0])
  np.testing.assert_array_equal(selection.select_max(scores, 3), [2, 1])
  np.testing.assert_array_equal(selection.select_valid_uniform(scores, 3), [2, 1])


@pytest.mark.parametrize("seed", range(5))
def test_max_equals_valid_uniform_single_set(seed):
  rng = np.random.default_rng(seed)
  scores = np.round(rng.uniform(-1.0, 1.0, size=(50, 1)), 1)
  scores[rng.choice(50, size=8, replace=False)] = NAN
  for n in (1, 5, 13):
    np.testing.assert_array_equal(
        selection.select_max(scores, n), selection.select_valid_uniform(scores, n))


def test_scores_1d_is_one_set():
  scores = np.array([0.2, 0.9, NAN, 0.5])
  np.testing.assert_array_equal(selection.select_max(scores, 2), [1, 3])
  np.testing.assert_array_equal(selection.select_valid_uniform(scores, 2), [1, 3])


def test_empty_score_matrix_raises():
  with pytest.raises(ValueError, match=r"J >= 1; got shape \(3, 0\)"):
    selection.select_max(np.ones((3, 0)), 1)


def test_fewer_eligible_than_n_returns_all():
  scores = np.full((10, 2), NAN)
  scores[[2, 5, 7]] = [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]]

  assert sorted(selection.select_valid_uniform(scores, 5)) == [2, 5, 7]
  np.testing.assert_array_equal(selection.select_max(scores, 5), [2, 7, 5])

  rewards = np.zeros((10, 4))
  rewards[[1, 8], 0] = 1.0
  np.testing.assert_array_equal(selection.select_learnability(rewards, 5), [1, 8])
  assert sorted(selection.select_pass_rate(rewards, 5)) == [1, 8]


def test_learnability_matches_hand_values():
  rewards = np.array([
      [0, 0, 0, 0],
      [1, 0, 0, 0],
      [1, 1, 0, 0],
      [1, 1, 1, 0],
      [1, 1, 1, 1],
  ], dtype=float)
  np.testing.assert_allclose(selection.pass_rates(rewards), [0.0, 0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(
      selection.learnability(rewards), [0.0, 0.1875, 0.25, 0.1875, 0.0])


def test_learnability_fractional_rewards():
  rewards = np.array([[0.5, 0.5], [0.2, 0.4]])
  np.testing.assert_allclose(selection.learnability(rewards), [0.25, 0.3 * 0.7])


def test_select_learnability_order_and_filter():
  rewards = np.array([
      [1, 1, 1, 1],
      [1, 0, 0, 0],
      [1, 1, 0, 0],
      [0, 0, 0, 0],
      [0, 1, 1, 1],
  ], dtype=float)
  # p (1 - p): 0, 0.1875, 0.25, 0, 0.1875. The tie 1 vs 4 goes to the lower id.
  np.testing.assert_array_equal(selection.select_learnability(rewards, 5), [2, 1, 4])
  np.testing.assert_array_equal(selection.select_learnability(rewards, 2), [2, 1])


@pytest.mark.parametrize(
    "rewards, message",
    [
        (np.ones(4), r"\[N, K\] array with K >= 1; got shape \(4,\)"),
        (np.ones((3, 0)), r"got shape \(3, 0\)"),
        (np.array([[0.0, 1.5]]), "in \\[0, 1\\]; got min 0.0, max 1.5"),
        (np.array([[0.0, NAN]]), "in \\[0, 1\\]; got min nan"),
    ],
)
def test_pass_rates_invalid_rewards_raise(rewards, message):
  with pytest.raises(ValueError, match=message):
    selection.pass_rates(rewards)


def test_pass_rate_keeps_only_mixed_prompts():
  _, rewards, degenerate = _contract_inputs(pool_size=60, seed=1)
  mixed = np.flatnonzero(~degenerate)
  ids = selection.select_pass_rate(rewards, 20, seed=3)
  rates = selection.pass_rates(rewards)[ids]

  assert ids.size == 20
  assert np.all((rates > 0.0) & (rates < 1.0))
  assert set(ids) <= set(mixed)
  np.testing.assert_array_equal(ids, selection.select_pass_rate(rewards, 20, seed=3))


def test_pass_rate_seed_changes_draw():
  _, rewards, _ = _contract_inputs(pool_size=60, seed=1)
  first = selection.select_pass_rate(rewards, 10, seed=0)
  other = selection.select_pass_rate(rewards, 10, seed=1)
  assert set(first) != set(other)


def test_random_static_same_every_stage():
  first = selection.select_random(100, 10, seed=4, stage=0, resample=False)
  for stage in range(1, 5):
    again = selection.select_random(100, 10, seed=4, stage=stage, resample=False)
    np.testing.assert_array_equal(again, first)


def test_random_static_is_stage_zero_draw():
  static = selection.select_random(100, 10, seed=4, resample=False)
  np.testing.assert_array_equal(static, selection.select_random(100, 10, seed=4, stage=0))


def test_random_per_stage_resamples():
  stage_0 = selection.select_random(100, 10, seed=4, stage=0)
  stage_1 = selection.select_random(100, 10, seed=4, stage=1)
  other_seed = selection.select_random(100, 10, seed=5, stage=1)

  assert set(stage_0) != set(stage_1)
  assert set(stage_1) != set(other_seed)
  np.testing.assert_array_equal(stage_1, selection.select_random(100, 10, seed=4, stage=1))


def test_random_n_capped_at_pool():
  ids = selection.select_random(5, 8, seed=0)
  assert sorted(ids) == [0, 1, 2, 3, 4]


def test_random_uniform_over_pool():
  counts = np.zeros(20)
  for stage in range(2000):
    counts[selection.select_random(20, 4, seed=0, stage=stage)] += 1
  # Each id is expected 400 times; the binomial standard deviation is about 18.
  assert np.all(np.abs(counts - 400) < 100)


@pytest.mark.parametrize("rule", selection.SELECTION_RULES)
def test_every_rule_contract(rule):
  scores, rewards, degenerate = _contract_inputs()
  pool_size = scores.shape[0]
  n = selection.num_selected(pool_size, 0.25)

  def run(stage):
    return selection.select(
        rule, n, scores=scores, rewards=rewards, pool_size=pool_size, seed=2, stage=stage)

  ids = run(stage=1)
  assert ids.dtype == np.int64
  assert ids.ndim == 1
  assert 0 < ids.size <= n
  assert np.unique(ids).size == ids.size
  assert np.all((ids >= 0) & (ids < pool_size))
  np.testing.assert_array_equal(ids, run(stage=1))
  if rule not in ("random", "random_per_stage"):
    assert not np.any(degenerate[ids]), f"{rule} selected ineligible ids {ids[degenerate[ids]]}"


def test_select_static_influence_is_valid_uniform():
  scores, _, _ = _contract_inputs()
  np.testing.assert_array_equal(
      selection.select("static_influence", 7, scores=scores),
      selection.select_valid_uniform(scores, 7))


def test_select_dispatches_to_rules():
  scores, rewards, _ = _contract_inputs()
  np.testing.assert_array_equal(
      selection.select("max", 7, scores=scores), selection.select_max(scores, 7))
  np.testing.assert_array_equal(
      selection.select("learnability", 7, rewards=rewards),
      selection.select_learnability(rewards, 7))
  np.testing.assert_array_equal(
      selection.select("pass_rate", 7, rewards=rewards, seed=3),
      selection.select_pass_rate(rewards, 7, seed=3))
  np.testing.assert_array_equal(
      selection.select("random", 7, pool_size=40, seed=3, stage=2),
      selection.select_random(40, 7, seed=3, resample=False))
  np.testing.assert_array_equal(
      selection.select("random_per_stage", 7, pool_size=40, seed=3, stage=2),
      selection.select_random(40, 7, seed=3, stage=2))


def test_select_random_infers_pool_size():
  scores, rewards, _ = _contract_inputs()
  expected = selection.select_random(40, 5, seed=1, resample=False)
  np.testing.assert_array_equal(selection.select("random", 5, scores=scores, seed=1), expected)
  np.testing.assert_array_equal(selection.select("random", 5, rewards=rewards, seed=1), expected)


def test_select_unknown_rule_raises():
  with pytest.raises(ValueError, match="unknown selection rule 'top_k'") as error:
    selection.select("top_k", 3, scores=np.ones((4, 1)))
  for rule in selection.SELECTION_RULES:
    assert rule in str(error.value)


@pytest.mark.parametrize(
    "rule, missing",
    [
        ("valid_uniform", "scores"),
        ("max", "scores"),
        ("static_influence", "scores"),
        ("learnability", "rewards"),
        ("pass_rate", "rewards"),
    ],
)
def test_select_missing_input_raises(rule, missing):
  with pytest.raises(ValueError, match=f"rule '{rule}' needs {missing}"):
    selection.select(rule, 3, pool_size=10)


@pytest.mark.parametrize("rule", ["random", "random_per_stage"])
def test_select_random_without_pool_raises(rule):
  with pytest.raises(ValueError, match="need pool_size, scores or rewards"):
    selection.select(rule, 3)


def test_select_inconsistent_pool_raises():
  with pytest.raises(ValueError, match="inconsistent pool sizes .*'pool_size': 12"):
    selection.select("random", 3, scores=np.ones((10, 1)), pool_size=12)


def test_select_random_invalid_stage_raises():
  with pytest.raises(ValueError, match="stage must be an integer >= 0; got -1"):
    selection.select_random(10, 3, stage=-1)


def test_overlap_values():
  assert selection.overlap([1, 2, 3], [2, 3, 4, 5]) == 0.5
  assert selection.overlap([4, 5], [5, 4]) == 1.0
  assert selection.overlap([1, 2], [3]) == 0.0
  assert selection.overlap([1, 2], []) == 0.0
  assert selection.overlap([], [1]) == 0.0


def test_histogram_finite_scores_only():
  scores = np.array([[0.1, NAN], [0.5, 0.9], [np.inf, -0.3]])
  counts, edges = selection.score_histogram(scores, bins=4)
  expected_counts, expected_edges = np.histogram([0.1, 0.5, 0.9, -0.3], bins=4)

  assert counts.sum() == 4
  np.testing.assert_array_equal(counts, expected_counts)
  np.testing.assert_allclose(edges, expected_edges)


def test_histogram_without_finite_scores():
  counts, edges = selection.score_histogram([NAN, NAN], bins=3)
  np.testing.assert_array_equal(counts, [0, 0, 0])
  assert edges[0] == 0.0
  assert edges[-1] == 1.0


@pytest.mark.parametrize("bins", [0, 2.5])
def test_histogram_invalid_bins_raises(bins):
  with pytest.raises(ValueError, match=f"bins must be an integer >= 1; got {bins!r}"):
    selection.score_histogram([0.1], bins=bins)
