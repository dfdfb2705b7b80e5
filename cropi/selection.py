"""Curriculum selection rules: CROPI's rank fusion, max score and the baselines.

Source of the rules: H. Zhu et al., "Data-Efficient RLVR via Off-Policy
Influence Guidance" (CROPI), arXiv 2510.26491.

Conventions shared by every rule:

- Each rule returns int64 numpy positions 0..N-1 into the training pool
  (rows of an `OfflineStore`, not its `prompt_ids`), best first. The random
  rules return their positions in the order drawn.
- A NaN score marks an ineligible prompt, which no scored rule selects.
- Equal scores are ordered by prompt id, lower id first.
- All work runs on the host in numpy.
"""

import math

import numpy as np

SELECTION_RULES = (
    "valid_uniform",
    "max",
    "random",
    "random_per_stage",
    "learnability",
    "pass_rate",
    "static_influence",
)

# Rules that read `scores` or `rewards` in `select`.
_SCORE_RULES = ("valid_uniform", "max", "static_influence")
_REWARD_RULES = ("learnability", "pass_rate")


def _check_count(n, name: str = "n") -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"{name} must be an integer >= 0; got {n!r}")
  return int(n)


def _as_score_matrix(scores) -> np.ndarray:
  """Convert scores to float64 [N, J]. A 1-D array is one validation set."""
  matrix = np.asarray(scores, dtype=np.float64)
  if matrix.ndim == 1:
    matrix = matrix[:, None]
  if matrix.ndim != 2 or matrix.shape[1] == 0:
    raise ValueError(
        f"scores must be an [N] or [N, J] array with J >= 1; got shape {matrix.shape}")
  return matrix


def _eligible_rows(matrix: np.ndarray) -> np.ndarray:
  # A row counts only if every validation set scored it. `cosine_scores`
  # gives NaN to whole rows, so a partly NaN row only comes from other callers.
  return ~np.any(np.isnan(matrix), axis=1)


def num_selected(pool_size: int, select_ratio: float) -> int:
  """Compute the number of prompts selected per stage, ``floor(ratio * N)``.

  N counts the whole pool, ineligible prompts included, as CROPI does. So
  a pool of 30 with ratio 0.1 selects 3 even if only 10 prompts are
  eligible. The result can be 0 for a small pool.

  Args:
    pool_size: N, the number of prompts in the pool.
    select_ratio: share of the pool selected, in (0, 1].

  Returns:
    n as an int.

  Raises:
    ValueError: if `pool_size` < 0 or `select_ratio` is not in (0, 1].
  """
  pool_size = _check_count(pool_size, "pool_size")
  is_number = isinstance(select_ratio, (int, float, np.integer, np.floating))
  if isinstance(select_ratio, bool) or not is_number or not 0.0 < select_ratio <= 1.0:
    raise ValueError(f"select_ratio must be in (0, 1]; got {select_ratio!r}")
  # 0.29 * 100 is 28.999999999999996 in binary floating point. Rounding to 6
  # decimals first makes such products floor to the integer the decimal
  # ratio means.
  return math.floor(round(select_ratio * pool_size, 6))


def top_n(scores, n: int, *, eligible=None) -> np.ndarray:
  """Select the n highest scores, ties broken by lower id.

  Args:
    scores: [N] scores. NaN marks an ineligible prompt. +-Inf are ordered
      normally.
    n: maximum number of ids returned. Fewer come back when fewer prompts
      are eligible.
    eligible: optional bool [N] mask, combined with the NaN rule.

  Returns:
    int64 [min(n, eligible count)] ids, highest score first.
  """
  n = _check_count(n)
  values = np.asarray(scores, dtype=np.float64)
  if values.ndim != 1:
    raise ValueError(f"scores must be a 1-D [N] array; got shape {values.shape}")
  mask = ~np.isnan(values)
  if eligible is not None:
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.shape != values.shape:
      raise ValueError(
          f"eligible has shape {eligible.shape} but scores has shape {values.shape}")
    mask &= eligible

  ids = np.flatnonzero(mask)
  # np.lexsort sorts by its last key first: score descending, then id.
  order = np.lexsort((ids, -values[ids]))
  return ids[order][:n].astype(np.int64)


def reciprocal_rank_fusion(scores, n: int) -> np.ndarray:
  """Fuse per-set rankings by reciprocal rank, CROPI's `valid_uniform` score.

  For each validation set j the eligible prompts are ranked by c_j (rank 1
  is the best, ties by lower id), and the top n form R_j. Then::

    F(s) = sum over {j : s in R_j} of 1 / rank_j(s)

  There is no smoothing constant: CROPI adds 1/rank itself, where the usual
  reciprocal rank fusion adds 1/(60 + rank). Eligible prompts in no R_j get
  F = 0.

  Args:
    scores: [N, J] influence scores, or [N] for J = 1. A row with any NaN is
      ineligible.
    n: size of each per-set list R_j.

  Returns:
    float64 [N] fused scores, NaN for ineligible rows.
  """
  n = _check_count(n)
  matrix = _as_score_matrix(scores)
  eligible = _eligible_rows(matrix)

  fused = np.where(eligible, 0.0, np.nan)
  for column in matrix.T:
    ranked = top_n(column, n, eligible=eligible)
    fused[ranked] += 1.0 / np.arange(1, ranked.size + 1)
  return fused


def select_valid_uniform(scores, n: int) -> np.ndarray:
  """Select by reciprocal-rank fusion over validation sets (CROPI's default).

  Every validation set gets the same weight, however many prompts it has.
  The result is `top_n` of `reciprocal_rank_fusion`. With at least n
  eligible prompts the union of the R_j already contains n prompts with F > 0,
  so prompts with F = 0 are only reached when fewer than n are eligible.

  Args:
    scores: [N, J] influence scores (NaN = ineligible), or [N].
    n: number of prompts to select.

  Returns:
    int64 ids, best first, at most n.

  Example:
    >>> scores = np.array([[0.9, 0.1], [0.8, 0.05], [0.1, 0.9], [np.nan, np.nan]])
    >>> select_valid_uniform(scores, 2)
    array([0, 2])
  """
  return top_n(reciprocal_rank_fusion(scores, n), n)


def select_max(scores, n: int) -> np.ndarray:
  """Select the n prompts with the highest ``max_j c_j(s)``.

  With one validation set this selects the same ids in the same order as
  `select_valid_uniform`.

  Args:
    scores: [N, J] influence scores (NaN = ineligible), or [N].
    n: number of prompts to select.

  Returns:
    int64 ids, best first, at most n.
  """
  matrix = _as_score_matrix(scores)
  eligible = _eligible_rows(matrix)
  best = np.full(matrix.shape[0], np.nan)
  best[eligible] = np.max(matrix[eligible], axis=1)
  return top_n(best, n)


def pass_rates(rewards) -> np.ndarray:
  """Compute each prompt's pass rate p, the mean of its stored rewards.

  Args:
    rewards: [N, K] rewards of the behaviour policy's K samples per prompt,
      usually 0 or 1. Any value in [0, 1] is accepted.

  Returns:
    float64 [N].

  Raises:
    ValueError: if `rewards` is not 2-D with K >= 1, or has a value that is
      NaN or outside [0, 1].
  """
  matrix = np.asarray(rewards, dtype=np.float64)
  if matrix.ndim != 2 or matrix.shape[1] == 0:
    raise ValueError(
        f"rewards must be an [N, K] array with K >= 1; got shape {matrix.shape}")
  if matrix.size and not np.all((matrix >= 0.0) & (matrix <= 1.0)):
    raise ValueError(
        f"rewards must lie in [0, 1]; got min {float(np.min(matrix))}, "
        f"max {float(np.max(matrix))}")
  return np.mean(matrix, axis=1)


def learnability(rewards) -> np.ndarray:
  """Compute the learnability ``p (1 - p)`` of each prompt.

  This is the variance of a 0/1 reward with pass rate p. It is 0 when all K
  rewards are 0 or all are 1, where the GRPO gradient is zero.

  Args:
    rewards: [N, K] rewards in [0, 1].

  Returns:
    float64 [N].
  """
  rates = pass_rates(rewards)
  return rates * (1.0 - rates)


def select_learnability(rewards, n: int) -> np.ndarray:
  """Select the n prompts with the highest ``p (1 - p)``.

  Prompts with ``p (1 - p) == 0`` are ineligible.

  Args:
    rewards: [N, K] rewards in [0, 1].
    n: number of prompts to select.

  Returns:
    int64 ids, best first, at most n.
  """
  values = learnability(rewards)
  return top_n(values, n, eligible=values > 0.0)


def select_pass_rate(rewards, n: int, *, seed: int = 0) -> np.ndarray:
  """Draw n prompts uniformly among those with 0 < p < 1.

  The draw depends only on `seed` and the filtered ids, so fixed rewards
  give the same subset at every stage.

  Args:
    rewards: [N, K] rewards in [0, 1].
    n: number of prompts to select.
    seed: seed of ``numpy.random.default_rng``.

  Returns:
    int64 ids in the order drawn, min(n, eligible count) of them.
  """
  n = _check_count(n)
  rates = pass_rates(rewards)
  candidates = np.flatnonzero((rates > 0.0) & (rates < 1.0))
  rng = np.random.default_rng(seed)
  drawn = rng.choice(candidates, size=min(n, candidates.size), replace=False)
  return np.asarray(drawn, dtype=np.int64)


def select_random(
    pool_size: int, n: int, *, seed: int = 0, stage: int = 0, resample: bool = True
) -> np.ndarray:
  """Draw n prompts uniformly from the whole pool, ineligible ones included.

  The generator is ``numpy.random.default_rng([seed, stage])``. With
  `resample` False the stage is fixed at 0, so every stage gets the subset
  that the resampling rule draws at stage 0.

  Args:
    pool_size: N.
    n: number of prompts to select, capped at N.
    seed: base seed.
    stage: curriculum stage, >= 0, used only with `resample`.
    resample: whether each stage draws a new subset.

  Returns:
    int64 ids in the order drawn.
  """
  pool_size = _check_count(pool_size, "pool_size")
  n = _check_count(n)
  stage = _check_count(stage, "stage") if resample else 0
  rng = np.random.default_rng([seed, stage])
  return rng.choice(pool_size, size=min(n, pool_size), replace=False).astype(np.int64)


def _require(rule: str, name: str, value):
  if value is None:
    raise ValueError(f"rule {rule!r} needs {name}; got {name}=None")
  return value


def _infer_pool_size(pool_size, scores, rewards) -> int:
  sizes = {}
  if scores is not None:
    sizes["scores"] = np.shape(scores)[0]
  if rewards is not None:
    sizes["rewards"] = np.shape(rewards)[0]
  if pool_size is not None:
    sizes["pool_size"] = pool_size
  if not sizes:
    raise ValueError("random rules need pool_size, scores or rewards; got none of them")
  if len(set(sizes.values())) > 1:
    raise ValueError(f"inconsistent pool sizes {sizes}; pass arrays with one row per prompt")
  return next(iter(sizes.values()))


def select(
    rule: str,
    n: int,
    *,
    scores=None,
    rewards=None,
    pool_size=None,
    seed: int = 0,
    stage: int = 0,
) -> np.ndarray:
  """Select one stage's prompts with a rule from `SELECTION_RULES`.

  Rules and the input each needs:

  - ``valid_uniform``: `scores`. CROPI's reciprocal-rank fusion.
  - ``max``: `scores`. Highest score over validation sets.
  - ``static_influence``: `scores`, handled as ``valid_uniform``. It differs
    only in the input: the caller passes the scores computed once at the
    initial policy at every stage.
  - ``random``: `pool_size` (or the row count of `scores` or `rewards`).
    The same subset every stage.
  - ``random_per_stage``: as ``random``, redrawn from (seed, stage).
  - ``learnability``: `rewards`. Highest ``p (1 - p)``.
  - ``pass_rate``: `rewards`. Uniform draw among prompts with 0 < p < 1.

  Args:
    rule: one of `SELECTION_RULES`.
    n: number of prompts to select, usually `num_selected(N, ratio)`.
    scores: [N, J] influence scores, NaN = ineligible.
    rewards: [N, K] behaviour-policy rewards in [0, 1].
    pool_size: N, for the random rules.
    seed: seed of the random rules.
    stage: curriculum stage, read only by ``random_per_stage``.

  Returns:
    int64 ids into the pool, best first or in the order drawn, at most n.

  Raises:
    ValueError: on an unknown rule or a missing input of the rule.

  Example:
    >>> scores = np.array([[0.2], [0.9], [np.nan], [0.5]])
    >>> select("valid_uniform", num_selected(4, 0.5), scores=scores)
    array([1, 3])
  """
  if rule in _SCORE_RULES:
    scores = _require(rule, "scores", scores)
    if rule == "max":
      return select_max(scores, n)
    return select_valid_uniform(scores, n)

  if rule in _REWARD_RULES:
    rewards = _require(rule, "rewards", rewards)
    if rule == "learnability":
      return select_learnability(rewards, n)
    return select_pass_rate(rewards, n, seed=seed)

  if rule in ("random", "random_per_stage"):
    size = _infer_pool_size(pool_size, scores, rewards)
    return select_random(size, n, seed=seed, stage=stage, resample=rule == "random_per_stage")

  raise ValueError(
      f"unknown selection rule {rule!r}; expected one of {', '.join(SELECTION_RULES)}")


def overlap(previous_ids, ids) -> float:
  """Compute the share of `ids` that was also in `previous_ids`.

  ``|A ∩ B| / |B|`` over unique ids, with A = `previous_ids` and B = `ids`.
  It is 1.0 when the new stage repeats the old subset and 0.0 when it is
  disjoint. An empty B gives 0.0.

  Args:
    previous_ids: ids of the earlier stage.
    ids: ids of the current stage.

  Returns:
    float in [0, 1].
  """
  previous = np.unique(np.asarray(previous_ids, dtype=np.int64))
  current = np.unique(np.asarray(ids, dtype=np.int64))
  if current.size == 0:
    return 0.0
  return float(np.intersect1d(previous, current).size / current.size)


def score_histogram(scores, bins: int = 20) -> tuple:
  """Histogram the finite scores, ignoring NaN (ineligible) and Inf.

  Args:
    scores: scores of any shape, flattened.
    bins: number of equal-width bins over [min, max] of the finite scores.
      Without finite scores the range is [0, 1] and all counts are 0.

  Returns:
    (counts int64 [bins], edges float64 [bins + 1]), as ``numpy.histogram``.
  """
  if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
    raise ValueError(f"bins must be an integer >= 1; got {bins!r}")
  values = np.asarray(scores, dtype=np.float64).ravel()
  return np.histogram(values[np.isfinite(values)], bins=bins)
