"""Diagnostics on cases with known results: identical, reversed and random rankings."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from cropi import diagnostics


def test_cosine_flat_vectors():
  assert diagnostics.gradient_cosine([3.0, 4.0], [4.0, 3.0]) == pytest.approx(24.0 / 25.0)
  assert diagnostics.gradient_cosine([1.0, 0.0], [-2.0, 0.0]) == pytest.approx(-1.0)


def test_cosine_rowwise_for_matrices():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 7))
  b = rng.normal(size=(5, 7))
  cosines = diagnostics.gradient_cosine(a, b)

  assert cosines.shape == (5,)
  for i in range(5):
    expected = a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i]))
    assert cosines[i] == pytest.approx(expected)


def test_cosine_flattens_higher_rank():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(2, 3, 4))
  b = rng.normal(size=(2, 3, 4))
  expected = a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b))

  cosine = diagnostics.gradient_cosine(jnp.asarray(a), jnp.asarray(b))
  assert isinstance(cosine, float)
  assert cosine == pytest.approx(expected, abs=1e-6)


def test_cosine_zero_vector_is_nan():
  assert math.isnan(diagnostics.gradient_cosine([0.0, 0.0], [1.0, 2.0]))
  cosines = diagnostics.gradient_cosine([[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [2.0, 2.0]])
  assert math.isnan(cosines[0])
  assert cosines[1] == pytest.approx(1.0)


def test_cosine_shape_mismatch_raises():
  with pytest.raises(ValueError, match=r"a has shape \(3,\) but b has shape \(4,\)"):
    diagnostics.gradient_cosine(np.ones(3), np.ones(4))


def test_precision_identical_ranking_is_one():
  exact = np.random.default_rng(2).normal(size=100)
  assert diagnostics.precision_at_fraction(exact, exact, fraction=0.1) == 1.0
  assert diagnostics.precision_at_fraction(3.0 * exact + 1.0, exact, fraction=0.1) == 1.0


def test_precision_reversed_ranking_is_zero():
  exact = np.random.default_rng(3).normal(size=100)
  # m = 10 and 2 m <= 100, so the top 10 and the bottom 10 are disjoint.
  assert diagnostics.precision_at_fraction(-exact, exact, fraction=0.1) == 0.0
  assert diagnostics.precision_at_fraction(-exact, exact, fraction=0.5) == 0.0


def test_precision_random_ranking_near_fraction():
  rng = np.random.default_rng(4)
  exact = rng.normal(size=100)
  precisions = [
      diagnostics.precision_at_fraction(rng.permutation(exact), exact, fraction=0.1)
      for _ in range(400)
  ]
  # Expected m / N = 0.1. The per-draw standard deviation is about 0.09, so
  # the mean of 400 draws has a standard deviation of about 0.0045.
  assert np.mean(precisions) == pytest.approx(0.1, abs=0.02)


def test_precision_counts_finite_pairs_only():
  exact = np.arange(20.0)
  approx = exact.copy()
  approx[[19, 18, 17]] = np.nan
  exact[0] = np.inf
  # 16 prompts have two finite scores, so m = floor(0.25 * 16) = 4 and both
  # top lists are ids 16, 15, 14, 13.
  assert diagnostics.precision_at_fraction(approx, exact, fraction=0.25) == 1.0


def test_precision_small_pool_uses_one():
  approx = np.array([0.3, 0.2, 0.1])
  assert diagnostics.precision_at_fraction(approx, [0.1, 0.2, 0.3], fraction=0.1) == 0.0
  assert diagnostics.precision_at_fraction(approx, [0.3, 0.1, 0.2], fraction=0.1) == 1.0


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.2])
def test_precision_invalid_fraction_raises(fraction):
  with pytest.raises(ValueError, match=f"fraction must be in \\(0, 1\\]; got {fraction!r}"):
    diagnostics.precision_at_fraction(np.ones(4), np.ones(4), fraction=fraction)


def test_precision_shape_mismatch_raises():
  with pytest.raises(ValueError, match=r"shapes \(4,\) and \(5,\)"):
    diagnostics.precision_at_fraction(np.ones(4), np.ones(5))


def test_precision_no_finite_pair_raises():
  with pytest.raises(ValueError, match="among 2"):
    diagnostics.precision_at_fraction([np.nan, 1.0], [1.0, np.nan])


def test_identity_projection_is_exact():
  x = np.random.default_rng(5).normal(size=(6, 9))
  errors = diagnostics.inner_product_errors(x, x)

  assert errors["pairwise_error"].shape == (15,)
  np.testing.assert_allclose(errors["pairwise_error"], 0.0, atol=1e-12)
  np.testing.assert_allclose(errors["squared_norm_ratio"], 1.0, rtol=1e-12)


def test_pairs_in_row_major_order():
  errors = diagnostics.inner_product_errors(np.eye(3), np.eye(3))
  np.testing.assert_array_equal(errors["pairs"], [[0, 1], [0, 2], [1, 2]])
  assert errors["pairs"].dtype == np.int64


def test_pairwise_error_hand_example():
  x = np.array([[1.0, 0.0], [0.0, 2.0]])
  y = np.array([[1.0, 1.0], [0.0, 2.0]])
  errors = diagnostics.inner_product_errors(x, y)
  # <y_0, y_1> = 2, <x_0, x_1> = 0, ||x_0|| ||x_1|| = 2.
  np.testing.assert_allclose(errors["pairwise_error"], [1.0])
  np.testing.assert_allclose(errors["squared_norm_ratio"], [2.0, 1.0])


def test_gaussian_projection_near_isometry():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(12, 2048))
  k = 1024
  projection = rng.normal(size=(2048, k)) / np.sqrt(k)
  errors = diagnostics.inner_product_errors(x, x @ projection)

  # The norm ratio has a standard deviation of sqrt(2 / k) = 0.044 and the
  # pairwise error about sqrt(1 / k) = 0.031, so 0.25 is over 5 deviations.
  assert np.all(np.abs(errors["squared_norm_ratio"] - 1.0) < 0.25)
  assert np.all(errors["pairwise_error"] < 0.25)


def test_zero_row_gives_nan():
  x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  errors = diagnostics.inner_product_errors(x, x)

  assert np.all(np.isnan(errors["pairwise_error"][:2]))
  assert errors["pairwise_error"][2] == 0.0
  assert np.isnan(errors["squared_norm_ratio"][0])


def test_inner_product_shape_errors():
  with pytest.raises(ValueError, match=r"got shapes \(3, 2\) and \(4, 2\)"):
    diagnostics.inner_product_errors(np.ones((3, 2)), np.ones((4, 2)))
  with pytest.raises(ValueError, match=r"got shapes \(3,\) and \(3, 2\)"):
    diagnostics.inner_product_errors(np.ones(3), np.ones((3, 2)))
