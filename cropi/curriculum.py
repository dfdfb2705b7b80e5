"""The CROPI curriculum: rescore the pool off-policy at every stage, select the top fraction, train.

Reimplements the stage loop of "Data-Efficient RLVR via Off-Policy Influence
Guidance" (Zhu et al., arXiv 2510.26491). Stage m scores every pool prompt
with the policy theta_m reached at the end of stage m - 1 (theta_0 is the
behaviour policy), from the stored trajectories only: scoring never samples.
It selects floor(select_ratio * N) prompts and hands them to the caller's
trainer. The library keeps no state of its own: the caller's trainer owns
the optimizer, the checkpoints and the KL reference.
"""

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from cropi import gradients
from cropi import influence
from cropi import rollouts
from cropi import selection

# Rules that need influence scores; the others use stored rewards or nothing.
INFLUENCE_RULES = ("valid_uniform", "max", "static_influence")


class StageLog(NamedTuple):
  """Record of one stage: the selection, its inputs and its cost."""

  stage: int
  rule: str
  selected: np.ndarray  # [n] store rows, best first
  num_eligible: int  # prompts that could be selected (non-zero gradient or 0 < p < 1)
  histograms: tuple  # per validation set: (counts, edges) of its finite scores; () without scores
  overlap: Optional[float]  # |this ∩ previous| / |this|; None at the first stage
  store_hash: str  # content hash of the trajectories scored
  scoring_seconds: float  # wall time of the scoring pass


def make_influence_scorer(loss_fn: Callable, store: rollouts.OfflineStore,
                          valid_stores: Sequence[rollouts.OfflineStore], projector: Callable, *,
                          chunk_size: int = 8, max_valid_prompts: int = 100, seed: int = 0,
                          use_sign: bool = False) -> Callable[[Any], np.ndarray]:
  """``score(params) -> [N, J]`` influence scores of the pool against J validation sets.

  Every pool and validation prompt gets its projected per-prompt gradient of
  `loss_fn` (usually ``objectives.make_prompt_loss(log_prob_fn)``), computed
  from the stored trajectories. The scores are cosines with each set's mean
  projected gradient (`influence.influence_scores`). Prompts with all-zero gradients
  get NaN: no score.

  Args:
    loss_fn: per-prompt loss over `rollouts.OfflineStore.examples` rows.
    store: the training pool's trajectories.
    valid_stores: one store per validation set.
    projector: maps [C, D] gradients to [C, k]; one object for the pool and
      the validation sets, so they share the dropout mask and the matrix.
    chunk_size: prompts per vmapped chunk.
    max_valid_prompts, seed, use_sign: as in `influence.influence_scores`.
  """
  if not valid_stores:
    raise ValueError("valid_stores is empty; influence scores need at least one validation set")
  pool = store.examples()
  valid = [v.examples() for v in valid_stores]

  def score(params) -> np.ndarray:
    train_k = gradients.per_example_grads(loss_fn, params, pool, chunk_size=chunk_size,
                                          projector=projector)
    valid_k = [gradients.per_example_grads(loss_fn, params, v, chunk_size=chunk_size,
                                           projector=projector) for v in valid]
    return np.asarray(influence.influence_scores(
        np.asarray(train_k), [np.asarray(v) for v in valid_k],
        max_valid_prompts=max_valid_prompts, seed=seed, use_sign=use_sign))

  return score


def select_stage(stage: int, params: Any, *, store: rollouts.OfflineStore, rule: str = "valid_uniform",
                 select_ratio: float = 0.1, score_fn: Optional[Callable[[Any], np.ndarray]] = None,
                 seed: int = 0, previous: Optional[np.ndarray] = None,
                 static_scores: Optional[np.ndarray] = None) -> tuple[StageLog, Optional[np.ndarray]]:
  """Select the prompts of one stage: the body of `run`, for trainers with their own loop.

  The influence rules call ``score_fn(params)`` with the stage's starting
  policy theta_m; the other rules never call it. "static_influence" reuses
  `static_scores` when given and otherwise scores now.

  Args:
    stage: m, used by the per-stage random rule and the log.
    params: theta_m, the policy at the start of the stage.
    store, rule, select_ratio, score_fn, seed: as in `run`.
    previous: the previous stage's selection, for the overlap log.
    static_scores: the stage-0 scores of "static_influence".

  Returns:
    (the stage's `StageLog`, the scores it used or None). Keep the scores of
    stage 0 to pass as `static_scores` later.
  """
  if rule not in selection.SELECTION_RULES:
    raise ValueError(f"invalid rule {rule!r}; valid values: {selection.SELECTION_RULES}")
  if rule in INFLUENCE_RULES and score_fn is None and static_scores is None:
    raise ValueError(f"rule {rule!r} needs a score_fn")
  n = selection.num_selected(store.num_prompts, select_ratio)
  scores, seconds = None, 0.0
  if rule == "static_influence" and static_scores is not None:
    scores = np.asarray(static_scores)
  elif rule in INFLUENCE_RULES:
    start = time.perf_counter()
    scores = np.asarray(score_fn(params))
    seconds = time.perf_counter() - start
  ids = selection.select(rule, n, scores=scores, rewards=store.rewards, pool_size=store.num_prompts,
                         seed=seed, stage=stage)
  log = StageLog(
      stage=stage, rule=rule, selected=ids, num_eligible=_num_eligible(rule, scores, store),
      histograms=() if scores is None else tuple(
          selection.score_histogram(scores[:, j]) for j in range(scores.shape[1])),
      overlap=None if previous is None else selection.overlap(previous, ids),
      store_hash=store.content_hash, scoring_seconds=seconds)
  return log, scores


def run(state: Any, *, store: rollouts.OfflineStore, params_fn: Callable[[Any], Any],
        train_fn: Callable[[Any, np.ndarray, int], Any], num_stages: int, select_ratio: float = 0.1,
        rule: str = "valid_uniform", score_fn: Optional[Callable[[Any], np.ndarray]] = None,
        seed: int = 0, start_stage: int = 0, previous: Optional[np.ndarray] = None,
        static_scores: Optional[np.ndarray] = None,
        on_stage_end: Optional[Callable[[StageLog, Any], None]] = None) -> tuple[Any, list[StageLog]]:
  """Run stages `start_stage` .. `num_stages` - 1 of the curriculum.

  Per stage m: `select_stage` with ``params_fn(state)`` (the influence rules
  score the pool with theta_m), then ``state = train_fn(state, ids, m)`` and
  ``on_stage_end(log, state)``. The static rules (learnability, pass_rate,
  random) use the stored rewards or a seed and never call `score_fn`.
  "static_influence" scores once, at the first stage, and keeps that
  selection; resuming it past stage 0 needs `static_scores`.

  Args:
    state: the trainer's state; opaque here.
    store: the pool's offline trajectories; its hash is checked unchanged at
      every stage.
    params_fn: extracts the policy parameters from `state`.
    train_fn: runs the stage's GRPO steps on the selected store rows.
    num_stages: M, the number of stages.
    select_ratio: alpha; n = floor(alpha * N) counts every pool prompt.
    rule: one of `selection.SELECTION_RULES`.
    score_fn: ``params -> [N, J]`` scores, for example from
      `make_influence_scorer`; required by the influence rules.
    seed: seed of the random rules.
    start_stage: first stage to run, for resuming.
    previous: the selection of stage start_stage - 1, for the overlap log.
    static_scores: stage-0 scores for resuming "static_influence".
    on_stage_end: called after each stage's training, for logging and
      checkpointing.

  Returns:
    (final state, one `StageLog` per stage run).
  """
  if rule not in selection.SELECTION_RULES:
    raise ValueError(f"invalid rule {rule!r}; valid values: {selection.SELECTION_RULES}")
  if rule in INFLUENCE_RULES and score_fn is None:
    raise ValueError(f"rule {rule!r} needs a score_fn")
  if not 0 <= start_stage <= num_stages:
    raise ValueError(f"invalid start_stage {start_stage}; expected 0..{num_stages}")
  if rule == "static_influence" and start_stage > 0 and static_scores is None:
    raise ValueError("resuming 'static_influence' past stage 0 needs the stage-0 static_scores")
  expected_hash = store.content_hash
  logs = []
  for stage in range(start_stage, num_stages):
    if store.content_hash != expected_hash:
      raise RuntimeError(f"the offline store changed before stage {stage}")
    log, scores = select_stage(stage, params_fn(state), store=store, rule=rule,
                               select_ratio=select_ratio, score_fn=score_fn, seed=seed,
                               previous=previous, static_scores=static_scores)
    if rule == "static_influence":
      static_scores = scores
    state = train_fn(state, log.selected, stage)
    if on_stage_end is not None:
      on_stage_end(log, state)
    logs.append(log)
    previous = log.selected
  return state, logs


def _num_eligible(rule: str, scores: Optional[np.ndarray], store: rollouts.OfflineStore) -> int:
  if scores is not None:
    return int(np.sum(np.all(np.isfinite(scores), axis=1)))
  if rule in ("learnability", "pass_rate"):
    rates = store.pass_rates
    return int(np.sum((rates > 0) & (rates < 1)))
  return store.num_prompts
