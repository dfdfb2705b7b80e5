"""Off-policy influence scores: cosine of projected gradients with validation targets."""

from collections.abc import Sequence

import jax
import numpy as np

# Source: H. Zhu et al., "Data-Efficient RLVR via Off-Policy Influence
# Guidance" (CROPI), arXiv 2510.26491. Each validation set is summarised by
# the mean of at most 100 projected prompt gradients, drawn with seed 0.
DEFAULT_MAX_VALID_PROMPTS = 100
DEFAULT_SEED = 0

# How many bad row indices an error message lists before it stops.
_MAX_LISTED_ROWS = 5


def _as_matrix(values, name: str) -> np.ndarray:
  """Convert `values` to a float64 host array and check that it is 2-D."""
  matrix = np.asarray(values, dtype=np.float64)
  if matrix.ndim != 2:
    raise ValueError(
        f"{name} must be a 2-D [rows, k] array; got shape {matrix.shape}")
  return matrix


def _list_rows(row_mask: np.ndarray) -> str:
  rows = np.flatnonzero(row_mask)
  listed = ", ".join(str(row) for row in rows[:_MAX_LISTED_ROWS])
  if rows.size > _MAX_LISTED_ROWS:
    listed += f", ... ({rows.size} rows in all)"
  return listed


def is_eligible(vectors) -> np.ndarray:
  """Mark the rows that can be scored: finite with at least one nonzero entry.

  A prompt whose sampled rewards are all equal has zero GRPO advantage, so
  its policy gradient and its projection are exactly zero and carry no
  direction. A row with a NaN or Inf entry is ineligible too, because its
  cosine is undefined.

  Args:
    vectors: [N, K] projected gradients, numpy or jax.

  Returns:
    bool numpy array [N].
  """
  matrix = _as_matrix(vectors, "vectors")
  finite = np.all(np.isfinite(matrix), axis=1)
  nonzero = np.any(matrix != 0.0, axis=1)
  return finite & nonzero


def validation_target(
    valid_vectors,
    *,
    max_prompts: int = DEFAULT_MAX_VALID_PROMPTS,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
  """Average the projected gradients of one validation set into a target vector.

  Following CROPI (Zhu et al., arXiv 2510.26491), all-zero rows are dropped.
  If more than `max_prompts` rows remain, `max_prompts` of them are drawn
  uniformly without replacement by ``numpy.random.default_rng(seed)``. The
  target is the equal-weight mean of the kept rows, with no per-row
  normalisation, so rows with larger gradients weigh more::

    target = (1 / |S|) sum_{i in S} v_i,  S = kept rows

  The draw is reproducible for a fixed seed but is not the same subset that
  the authors' PyTorch code draws.

  Args:
    valid_vectors: [M, K] projected gradients of one validation set.
    max_prompts: maximum number of rows averaged, at least 1.
    seed: seed of the draw, used only when more than `max_prompts` rows
      are eligible.

  Returns:
    float32 numpy array [K]. The mean is accumulated in float64.

  Raises:
    ValueError: if `max_prompts` < 1, if any entry is NaN or Inf (a
      non-finite validation gradient points to a failed backward pass, so it
      is rejected, not skipped), or if no row is eligible.
  """
  is_integer = isinstance(max_prompts, (int, np.integer)) and not isinstance(max_prompts, bool)
  if not is_integer or max_prompts < 1:
    raise ValueError(f"max_prompts must be an integer >= 1; got {max_prompts!r}")
  matrix = _as_matrix(valid_vectors, "valid_vectors")

  finite_rows = np.all(np.isfinite(matrix), axis=1)
  if not np.all(finite_rows):
    raise ValueError(
        f"valid_vectors contains NaN or Inf in rows {_list_rows(~finite_rows)} "
        f"of {matrix.shape[0]}; check the validation gradients")

  eligible = np.flatnonzero(is_eligible(matrix))
  if eligible.size == 0:
    raise ValueError(
        f"no eligible validation prompt: all {matrix.shape[0]} rows of "
        f"valid_vectors are zero; a set needs a prompt with unequal rewards")

  if eligible.size > max_prompts:
    rng = np.random.default_rng(seed)
    eligible = rng.choice(eligible, size=max_prompts, replace=False)

  target = np.mean(matrix[eligible], axis=0)
  if not np.all(np.isfinite(target.astype(np.float32))):
    raise ValueError(
        "validation target overflows float32; rescale the projected gradients")
  return target.astype(np.float32)


def cosine_scores(train_vectors, targets, *, use_sign: bool = False) -> np.ndarray:
  """Compute the cosine of every training row with every target.

  ``c[i, j] = <g_i, t_j> / (||g_i|| ||t_j||)``. Larger is better. Rows that
  `is_eligible` rejects (all zero, NaN or Inf) get NaN, and NaN means "no
  score" in every selection rule. With `use_sign`, both vectors are replaced
  by their element-wise sign first, the "sign" variant of CROPI (off by
  default).

  Args:
    train_vectors: [N, K] projected training gradients.
    targets: [J, K] validation targets, or one target of shape [K].
    use_sign: whether to take the element-wise sign before the cosine.

  Returns:
    float32 numpy array [N, J]. The products are accumulated in float64.

  Raises:
    ValueError: if K differs, or a target row is all zero or not finite.
  """
  train = _as_matrix(train_vectors, "train_vectors")
  target_matrix = np.asarray(targets, dtype=np.float64)
  if target_matrix.ndim == 1:
    target_matrix = target_matrix[None, :]
  target_matrix = _as_matrix(target_matrix, "targets")
  if train.shape[1] != target_matrix.shape[1]:
    raise ValueError(
        f"train_vectors has k = {train.shape[1]} but targets has "
        f"k = {target_matrix.shape[1]}; both must come from the same projection")

  bad_targets = ~is_eligible(target_matrix)
  if np.any(bad_targets):
    raise ValueError(
        f"target rows {_list_rows(bad_targets)} are all zero or not finite; "
        f"a target needs a finite, nonzero direction")

  eligible = is_eligible(train)
  # Zero the ineligible rows so NaN or Inf cannot leak into the products.
  train = np.where(eligible[:, None], train, 0.0)
  if use_sign:
    train = np.sign(train)
    target_matrix = np.sign(target_matrix)

  train_norms = np.linalg.norm(train, axis=1)
  target_norms = np.linalg.norm(target_matrix, axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    scores = (train @ target_matrix.T) / (train_norms[:, None] * target_norms[None, :])
  scores[~eligible] = np.nan
  return scores.astype(np.float32)


def _split_validation_sets(valid_vectors) -> list:
  """Return the validation sets as a list of arrays, one per set."""
  if isinstance(valid_vectors, (np.ndarray, jax.Array)):
    if valid_vectors.ndim == 2:
      return [valid_vectors]
    if valid_vectors.ndim == 3:
      return list(valid_vectors)
    raise ValueError(
        f"valid_vectors must be an [M, K] array, a [J, M, K] array or a "
        f"sequence of [M_j, K] arrays; got an array of shape {valid_vectors.shape}")
  if isinstance(valid_vectors, Sequence) and not isinstance(valid_vectors, (str, bytes)):
    return list(valid_vectors)
  raise ValueError(
      f"valid_vectors must be an array or a sequence of arrays; got "
      f"{type(valid_vectors).__name__}")


def influence_scores(
    train_vectors,
    valid_vectors,
    *,
    max_valid_prompts: int = DEFAULT_MAX_VALID_PROMPTS,
    seed: int = DEFAULT_SEED,
    use_sign: bool = False,
) -> np.ndarray:
  """Score every training prompt against every validation set.

  For each validation set j, `validation_target` builds t_j from its
  projected gradients. The score is then ``c_j(s) = cos(g_s, t_j)`` as in
  `cosine_scores`. Every set draws its subset with the same `seed`.

  Args:
    train_vectors: [N, K] projected training gradients.
    valid_vectors: one [M, K] array (J = 1), a [J, M, K] array, or a
      sequence of J arrays of shape [M_j, K]. A Python list is always read
      as a sequence of sets, never as the rows of one set.
    max_valid_prompts: maximum number of rows averaged per validation set.
    seed: seed of the per-set draw.
    use_sign: whether to score with element-wise signs.

  Returns:
    float32 numpy array [N, J]. Ineligible training rows are NaN.

  Raises:
    ValueError: if there is no validation set, or from `validation_target`
      and `cosine_scores`.

  Example:
    >>> train = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    >>> math_set = np.array([[1.0, 1.0], [3.0, 3.0]])
    >>> code_set = np.array([[0.0, 5.0], [0.0, 0.0]])
    >>> influence_scores(train, [math_set, code_set]).round(3)
    array([[0.707, 0.   ],
           [0.707, 1.   ],
           [  nan,   nan]], dtype=float32)
  """
  sets = _split_validation_sets(valid_vectors)
  if not sets:
    raise ValueError("valid_vectors is empty; pass at least one validation set")
  targets = np.stack([
      validation_target(vectors, max_prompts=max_valid_prompts, seed=seed)
      for vectors in sets
  ])
  return cosine_scores(train_vectors, targets, use_sign=use_sign)
