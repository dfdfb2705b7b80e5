"""Influence scores against hand-computed cosines and validation means."""

import jax.numpy as jnp
import numpy as np
import pytest

from cropi import influence


def _reference_cosine(u, v):
  u = np.asarray(u, np.float64)
  v = np.asarray(v, np.float64)
  return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def _one_hot_set(size, zero_rows):
  """Row i is (i + 1) * e_i, so a mean shows which rows were averaged."""
  vectors = np.diag(np.arange(1.0, size + 1.0))
  vectors[zero_rows] = 0.0
  return vectors


def test_cosine_positive_scaling_invariant():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(8, 16))
  targets = rng.normal(size=(3, 16))
  base = influence.cosine_scores(train, targets)

  row_scales = rng.uniform(0.1, 5.0, size=(8, 1))
  row_scales[2] = 10.0
  target_scales = rng.uniform(0.1, 5.0, size=(3, 1))

  np.testing.assert_allclose(
      influence.cosine_scores(train * row_scales, targets), base, atol=1e-6)
  np.testing.assert_allclose(
      influence.cosine_scores(train, targets * target_scales), base, atol=1e-6)
  scaled_row = influence.cosine_scores(train[2:3] * 10.0, targets)
  np.testing.assert_allclose(scaled_row, base[2:3], atol=1e-6)


def test_cosine_identical_orthogonal_opposite():
  target = np.array([[1.0, 2.0, 0.0]])
  train = np.array([[1.0, 2.0, 0.0], [2.0, -1.0, 5.0], [-1.0, -2.0, 0.0]])
  scores = influence.cosine_scores(train, target)

  assert scores.shape == (3, 1)
  assert scores.dtype == np.float32
  assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)
  assert scores[1, 0] == pytest.approx(0.0, abs=1e-6)
  assert scores[2, 0] == pytest.approx(-1.0, abs=1e-6)


def test_cosine_hand_computed_example():
  train = np.array([[3.0, 4.0], [1.0, 0.0]])
  targets = np.array([[1.0, 0.0], [1.0, 1.0]])
  # <(3, 4), (1, 1)> = 7, ||(3, 4)|| = 5, ||(1, 1)|| = sqrt(2).
  expected = np.array([[0.6, 7.0 / (5.0 * np.sqrt(2.0))], [1.0, 1.0 / np.sqrt(2.0)]])
  np.testing.assert_allclose(influence.cosine_scores(train, targets), expected, atol=1e-6)


def test_cosine_zero_row_has_no_score():
  train = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, -2.0]])
  scores = influence.cosine_scores(train, np.array([[1.0, 0.0]]))

  assert np.isnan(scores[1, 0])
  assert np.all(np.isfinite(scores[[0, 2], 0]))
  np.testing.assert_array_equal(influence.is_eligible(train), [True, False, True])


def test_cosine_non_finite_row_has_no_score():
  train = np.array([[1.0, np.nan], [np.inf, 0.0], [1.0, 0.0]])
  scores = influence.cosine_scores(train, np.array([[1.0, 1.0]]))

  assert np.isnan(scores[0, 0])
  assert np.isnan(scores[1, 0])
  assert scores[2, 0] == pytest.approx(1.0 / np.sqrt(2.0), abs=1e-6)
  np.testing.assert_array_equal(influence.is_eligible(train), [False, False, True])


def test_cosine_sign_variant_matches_numpy():
  rng = np.random.default_rng(1)
  train = rng.normal(size=(6, 10))
  train[0, :5] = 0.0
  targets = rng.normal(size=(2, 10))
  scores = influence.cosine_scores(train, targets, use_sign=True)

  for i in range(6):
    for j in range(2):
      expected = _reference_cosine(np.sign(train[i]), np.sign(targets[j]))
      assert scores[i, j] == pytest.approx(expected, abs=1e-6)


def test_cosine_sign_differs_from_plain():
  train = np.array([[10.0, 1.0]])
  target = np.array([[1.0, 1.0]])
  assert influence.cosine_scores(train, target, use_sign=True)[0, 0] == pytest.approx(1.0)
  assert influence.cosine_scores(train, target)[0, 0] < 0.8


def test_cosine_accepts_jax_and_1d_target():
  train = jnp.array([[3.0, 4.0], [0.0, 1.0]])
  target = jnp.array([0.0, 2.0])
  scores = influence.cosine_scores(train, target)

  assert isinstance(scores, np.ndarray)
  np.testing.assert_allclose(scores, [[0.8], [1.0]], atol=1e-6)


@pytest.mark.parametrize(
    "target, message",
    [
        (np.array([[1.0, 0.0], [0.0, 0.0]]), "target rows 1"),
        (np.array([[np.nan, 1.0]]), "target rows 0"),
    ],
)
def test_cosine_bad_target_raises(target, message):
  with pytest.raises(ValueError, match=message):
    influence.cosine_scores(np.ones((2, 2)), target)


def test_cosine_dimension_mismatch_raises():
  with pytest.raises(ValueError, match="k = 3 but targets has k = 2"):
    influence.cosine_scores(np.ones((2, 3)), np.ones((1, 2)))


def test_cosine_non_matrix_raises():
  with pytest.raises(ValueError, match=r"shape \(4,\)"):
    influence.cosine_scores(np.ones(4), np.ones((1, 4)))


def test_is_eligible_rows():
  vectors = np.array([[0.0, 0.0], [0.0, 1e-30], [-1.0, 0.0], [np.nan, 0.0]])
  np.testing.assert_array_equal(influence.is_eligible(vectors), [False, True, True, False])


def test_target_drops_zero_rows():
  valid = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
  target = influence.validation_target(valid)

  assert target.dtype == np.float32
  assert target.shape == (3,)
  np.testing.assert_allclose(target, [1.0, 2.0, 0.0])


def test_target_plain_mean_when_small():
  rng = np.random.default_rng(2)
  valid = rng.normal(size=(40, 8))
  expected = valid.mean(axis=0)

  for seed in (0, 7):
    target = influence.validation_target(valid, max_prompts=40, seed=seed)
    np.testing.assert_allclose(target, expected, rtol=1e-6, atol=1e-7)


def test_target_draws_at_most_max_prompts():
  valid = _one_hot_set(250, zero_rows=np.arange(0, 250, 5))
  target = influence.validation_target(valid, max_prompts=100, seed=0)

  averaged = np.flatnonzero(target)
  # Each drawn row i adds (i + 1) / 100 to coordinate i alone.
  assert averaged.size == 100
  assert np.all(averaged % 5 != 0)
  np.testing.assert_allclose(target[averaged] * 100.0, averaged + 1.0, rtol=1e-6)


def test_target_single_prompt_draw():
  valid = _one_hot_set(10, zero_rows=[])
  target = influence.validation_target(valid, max_prompts=1, seed=3)

  averaged = np.flatnonzero(target)
  assert averaged.size == 1
  assert target[averaged[0]] == averaged[0] + 1.0


def test_target_seed_reproducible():
  valid = _one_hot_set(250, zero_rows=[])
  first = influence.validation_target(valid, max_prompts=100, seed=0)
  again = influence.validation_target(valid, max_prompts=100, seed=0)
  other = influence.validation_target(valid, max_prompts=100, seed=1)

  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(np.flatnonzero(first), np.flatnonzero(other))


def test_target_no_eligible_rows_raises():
  with pytest.raises(ValueError, match="all 4 rows"):
    influence.validation_target(np.zeros((4, 3)))


@pytest.mark.parametrize("max_prompts", [0, -1, 2.5, True])
def test_target_invalid_max_prompts_raises(max_prompts):
  with pytest.raises(ValueError, match=f"max_prompts .* got {max_prompts!r}"):
    influence.validation_target(np.ones((3, 2)), max_prompts=max_prompts)


def test_target_non_finite_raises():
  valid = np.ones((6, 2))
  valid[4, 1] = np.inf
  with pytest.raises(ValueError, match="rows 4 of 6"):
    influence.validation_target(valid)


def test_scores_list_of_sets_hand_means():
  rng = np.random.default_rng(3)
  train = rng.normal(size=(5, 6))
  train[3] = 0.0
  sets = [rng.normal(size=(4, 6)), rng.normal(size=(7, 6)), rng.normal(size=(3, 6))]
  sets[1][[0, 5]] = 0.0
  scores = influence.influence_scores(train, sets)

  assert scores.shape == (5, 3)
  assert scores.dtype == np.float32
  for j, vectors in enumerate(sets):
    nonzero_rows = vectors[np.any(vectors != 0.0, axis=1)]
    mean = nonzero_rows.sum(axis=0) / nonzero_rows.shape[0]
    for i in range(5):
      if i == 3:
        assert np.isnan(scores[i, j])
      else:
        assert scores[i, j] == pytest.approx(_reference_cosine(train[i], mean), abs=1e-5)


def test_scores_single_array_is_one_set():
  rng = np.random.default_rng(4)
  train = rng.normal(size=(4, 3))
  valid = rng.normal(size=(5, 3))
  scores = influence.influence_scores(train, valid)

  assert scores.shape == (4, 1)
  np.testing.assert_array_equal(scores, influence.influence_scores(train, [valid]))


def test_scores_stacked_sets_match_list():
  rng = np.random.default_rng(5)
  train = rng.normal(size=(4, 3))
  stacked = rng.normal(size=(2, 5, 3))
  np.testing.assert_array_equal(
      influence.influence_scores(train, stacked),
      influence.influence_scores(train, list(stacked)))


def test_scores_use_subsampled_target():
  rng = np.random.default_rng(6)
  train = rng.normal(size=(3, 4))
  valid = rng.normal(size=(30, 4))
  scores = influence.influence_scores(train, valid, max_valid_prompts=5, seed=2)
  target = influence.validation_target(valid, max_prompts=5, seed=2)

  np.testing.assert_allclose(scores, influence.cosine_scores(train, target), atol=1e-7)


def test_scores_empty_sets_raise():
  with pytest.raises(ValueError, match="valid_vectors is empty"):
    influence.influence_scores(np.ones((2, 2)), [])


@pytest.mark.parametrize("bad", [np.ones(3), np.ones((1, 1, 1, 1)), 3.0])
def test_scores_bad_valid_vectors_raise(bad):
  with pytest.raises(ValueError, match="valid_vectors must be"):
    influence.influence_scores(np.ones((2, 1)), bad)
