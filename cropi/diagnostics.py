"""Checks of gradient approximations: cosines, top-fraction precision and projection errors."""

import math

import numpy as np

from cropi import selection


def gradient_cosine(a, b):
  """Compute the cosine between two gradients, row by row for 2-D inputs.

  ``cos(a, b) = <a, b> / (||a|| ||b||)`` in float64. 2-D inputs are read as
  [N, D] stacks of flattened gradients and give one cosine per row. Inputs
  of any other rank are flattened whole. A zero vector gives NaN.

  Args:
    a: gradient array, numpy or jax.
    b: gradient array of the same shape.

  Returns:
    A float, or float64 [N] for 2-D inputs.

  Raises:
    ValueError: if the shapes differ.
  """
  x = np.asarray(a, dtype=np.float64)
  y = np.asarray(b, dtype=np.float64)
  if x.shape != y.shape:
    raise ValueError(f"a has shape {x.shape} but b has shape {y.shape}; they must match")

  if x.ndim == 2:
    dots = np.sum(x * y, axis=1)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(norms > 0.0, dots / norms, np.nan)

  x = x.ravel()
  y = y.ravel()
  norms = float(np.linalg.norm(x) * np.linalg.norm(y))
  if norms == 0.0:
    return math.nan
  return float(np.dot(x, y) / norms)


def precision_at_fraction(approx_scores, exact_scores, fraction: float = 0.1) -> float:
  """Measure how much of the exact top-m an approximate score recovers.

  Only prompts where both scores are finite count. With N_e such prompts,
  ``m = max(1, floor(fraction * N_e))``, and the result is
  ``|top_m(approx) ∩ top_m(exact)| / m``. Ties are broken by lower id. An
  exact copy gives 1.0, a reversed order gives 0.0 when ``2 m <= N_e``, and a
  random order gives ``m / N_e`` (about `fraction`) on average.

  Args:
    approx_scores: [N] scores under test, for example from a projection.
    exact_scores: [N] reference scores.
    fraction: share of the eligible prompts in each top list, in (0, 1].

  Returns:
    float in [0, 1].

  Raises:
    ValueError: if the shapes differ, `fraction` is not in (0, 1], or no
      prompt has two finite scores.

  Example:
    >>> exact = np.arange(20.0)
    >>> precision_at_fraction(exact + 0.5, exact, fraction=0.1)
    1.0
    >>> precision_at_fraction(-exact, exact, fraction=0.1)
    0.0
  """
  approx = np.asarray(approx_scores, dtype=np.float64)
  exact = np.asarray(exact_scores, dtype=np.float64)
  if approx.ndim != 1 or approx.shape != exact.shape:
    raise ValueError(
        f"approx_scores and exact_scores must be 1-D of equal length; got shapes "
        f"{approx.shape} and {exact.shape}")
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")

  both_finite = np.isfinite(approx) & np.isfinite(exact)
  count = int(np.sum(both_finite))
  if count == 0:
    raise ValueError(f"no prompt has finite approx and exact scores among {approx.size}")

  m = max(1, math.floor(fraction * count))
  top_approx = selection.top_n(approx, m, eligible=both_finite)
  top_exact = selection.top_n(exact, m, eligible=both_finite)
  return float(np.intersect1d(top_approx, top_exact).size / m)


def inner_product_errors(x, y) -> dict:
  """Measure how well a projection ``x -> y`` keeps inner products and norms.

  For a Johnson-Lindenstrauss projection both quantities concentrate as K
  grows: the pairwise error near 0 and the norm ratio near 1, with spread
  of order ``1 / sqrt(K)``. For rows i < j, in row-major order
  (0, 1), (0, 2), ..., (1, 2), ...::

    pairwise_error[p] = |<y_i, y_j> - <x_i, x_j>| / (||x_i|| ||x_j||)
    squared_norm_ratio[i] = ||y_i||^2 / ||x_i||^2

  Pairs and ratios that involve a zero row of `x` are NaN. The cost is two
  [N, N] Gram matrices in float64.

  Args:
    x: [N, D] original vectors, for example flattened gradients.
    y: [N, K] their projections.

  Returns:
    dict with ``pairwise_error`` float64 [N (N - 1) / 2],
    ``squared_norm_ratio`` float64 [N] and ``pairs`` int64 [N (N - 1) / 2, 2],
    the (i, j) of each pairwise entry.

  Raises:
    ValueError: if `x` or `y` is not 2-D or their row counts differ.
  """
  original = np.asarray(x, dtype=np.float64)
  projected = np.asarray(y, dtype=np.float64)
  if original.ndim != 2 or projected.ndim != 2 or original.shape[0] != projected.shape[0]:
    raise ValueError(
        f"x and y must be [N, D] and [N, K] with the same N; got shapes "
        f"{original.shape} and {projected.shape}")

  rows, columns = np.triu_indices(original.shape[0], k=1)
  original_gram = original @ original.T
  projected_gram = projected @ projected.T
  original_norms = np.sqrt(np.diag(original_gram))

  with np.errstate(invalid="ignore", divide="ignore"):
    scale = original_norms[rows] * original_norms[columns]
    pairwise = np.abs(projected_gram[rows, columns] - original_gram[rows, columns]) / scale
    ratio = np.diag(projected_gram) / np.diag(original_gram)
  pairwise = np.where(scale > 0.0, pairwise, np.nan)
  ratio = np.where(original_norms > 0.0, ratio, np.nan)

  return {
      "pairwise_error": pairwise,
      "squared_norm_ratio": ratio,
      "pairs": np.stack([rows, columns], axis=1).astype(np.int64),
  }
