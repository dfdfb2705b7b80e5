"""The curriculum's stage loop: which policy scores, what is sampled, what is logged."""

import numpy as np
import pytest

from cropi import curriculum
from cropi import gradients
from cropi import influence
from cropi import objectives
from cropi import projection
from cropi import selection
from tests.cropi import helpers

BETA = helpers.init_lm(0)
POOL = helpers.make_store(num_prompts=10, behaviour_params=BETA, degenerate=(1, 6))
VALID = helpers.make_store(num_prompts=5, seed=9, behaviour_params=BETA, degenerate=())
LOSS = objectives.make_prompt_loss(helpers.log_prob_fn)


class Trainer:
  """Moves the bias a little each stage and counts sampler calls, as a GRPO trainer would."""

  def __init__(self):
    self.sampler_calls = 0
    self.trained_on = []

  def train(self, state, ids, stage):
    self.sampler_calls += 1  # a real trainer samples fresh completions here
    self.trained_on.append(np.array(ids))
    params = dict(state)
    params["bias"] = params["bias"] + 0.5 * (stage + 1)
    return params


def _recording_scorer(trainer, seen):
  def score(params):
    before = trainer.sampler_calls
    seen.append(np.asarray(params["bias"]))
    scores = np.linspace(0.0, 1.0, POOL.num_prompts)[:, None] + 0.1 * len(seen)
    assert trainer.sampler_calls == before  # no sampling while scoring
    return scores
  return score


def test_stage_scores_with_its_policy():
  trainer, seen = Trainer(), []
  state, logs = curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=trainer.train,
                               num_stages=3, select_ratio=0.3, score_fn=_recording_scorer(trainer, seen))
  assert len(seen) == 3
  np.testing.assert_array_equal(seen[0], BETA["bias"])  # stage 0 scores with beta
  np.testing.assert_allclose(seen[1], BETA["bias"] + 0.5)
  np.testing.assert_allclose(seen[2], BETA["bias"] + 1.5)
  np.testing.assert_allclose(state["bias"], BETA["bias"] + 3.0)
  assert [log.store_hash for log in logs] == [POOL.content_hash] * 3
  assert [len(log.selected) for log in logs] == [3, 3, 3]
  assert logs[0].overlap is None
  assert logs[1].overlap == selection.overlap(logs[0].selected, logs[1].selected)
  for log, ids in zip(logs, trainer.trained_on):
    np.testing.assert_array_equal(log.selected, ids)


@pytest.mark.parametrize("rule", ["learnability", "pass_rate", "random", "random_per_stage"])
def test_rules_without_scores_never_call_the_scorer(rule):
  def score(params):
    raise AssertionError("the scorer ran")

  trainer = Trainer()
  _, logs = curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=trainer.train,
                           num_stages=2, select_ratio=0.2, rule=rule, score_fn=score, seed=3)
  assert all(log.scoring_seconds == 0.0 and log.histograms == () for log in logs)
  if rule in ("learnability", "pass_rate"):
    assert all(np.all((POOL.pass_rates[log.selected] > 0) & (POOL.pass_rates[log.selected] < 1))
               for log in logs)


def test_static_influence_scores_once_and_keeps_its_selection():
  trainer, seen = Trainer(), []
  _, logs = curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=trainer.train,
                           num_stages=3, select_ratio=0.3, rule="static_influence",
                           score_fn=_recording_scorer(trainer, seen))
  assert len(seen) == 1
  assert all(np.array_equal(log.selected, logs[0].selected) for log in logs)
  with pytest.raises(ValueError, match="needs the stage-0 static_scores"):
    curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=trainer.train, num_stages=3,
                   rule="static_influence", score_fn=lambda p: None, start_stage=1)


def test_resume_runs_remaining_stages():
  trainer = Trainer()
  first, logs = curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=trainer.train,
                               num_stages=4, select_ratio=0.3, rule="random_per_stage")
  resumed_trainer = Trainer()
  half, head = curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=resumed_trainer.train,
                              num_stages=2, select_ratio=0.3, rule="random_per_stage")
  final, tail = curriculum.run(half, store=POOL, params_fn=lambda s: s,
                               train_fn=resumed_trainer.train, num_stages=4, select_ratio=0.3,
                               rule="random_per_stage", start_stage=2, previous=head[-1].selected)
  np.testing.assert_allclose(final["bias"], first["bias"])
  assert [log.overlap for log in head + tail] == [log.overlap for log in logs]
  for a, b in zip(head + tail, logs):
    np.testing.assert_array_equal(a.selected, b.selected)


class _ChangingStore:
  """Quacks like an OfflineStore whose content changes after the first stage."""

  num_prompts = POOL.num_prompts
  rewards = POOL.rewards
  pass_rates = POOL.pass_rates

  def __init__(self):
    self.reads = 0

  @property
  def content_hash(self):
    self.reads += 1
    return "a" if self.reads <= 2 else "b"


def test_curriculum_stops_on_changed_store():
  with pytest.raises(RuntimeError, match="changed before stage 1"):
    curriculum.run(BETA, store=_ChangingStore(), params_fn=lambda s: s, train_fn=Trainer().train,
                   num_stages=3, rule="random")


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="invalid rule 'best'"):
    curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=Trainer().train, num_stages=1,
                   rule="best")
  with pytest.raises(ValueError, match="needs a score_fn"):
    curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=Trainer().train, num_stages=1)
  with pytest.raises(ValueError, match="invalid start_stage 5"):
    curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=Trainer().train, num_stages=2,
                   rule="random", start_stage=5)


def test_influence_scorer_matches_scores_built_by_hand():
  d = gradients.flat_size(BETA)
  projector = projection.make_projector(d, 16, kind="gaussian", seed=2)
  scorer = curriculum.make_influence_scorer(LOSS, POOL, [VALID, VALID], projector, chunk_size=4)
  scores = scorer(BETA)
  assert scores.shape == (POOL.num_prompts, 2)
  assert np.all(np.isnan(scores[[1, 6]]))  # degenerate groups have no score
  matrix = np.asarray(projector.materialize())
  train = np.asarray(gradients.per_example_grads(LOSS, BETA, POOL.examples())) @ matrix
  valid = np.asarray(gradients.per_example_grads(LOSS, BETA, VALID.examples())) @ matrix
  target = valid[np.any(valid != 0, axis=1)].mean(axis=0)
  with np.errstate(invalid="ignore"):  # the zero rows divide 0 by 0
    expected = train @ target / (np.linalg.norm(train, axis=1) * np.linalg.norm(target))
  eligible = ~np.isnan(scores[:, 0])
  np.testing.assert_allclose(scores[eligible, 0], expected[eligible], rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(scores[:, 0], scores[:, 1])
  np.testing.assert_array_equal(eligible, influence.is_eligible(train))


def test_curriculum_with_influence_scorer():
  d = gradients.flat_size(BETA)
  projector = projection.make_projector(d, 32, kind="sparse", seed=0)
  scorer = curriculum.make_influence_scorer(LOSS, POOL, [VALID], projector, chunk_size=5)
  trainer = Trainer()
  _, logs = curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=trainer.train,
                           num_stages=2, select_ratio=0.3, score_fn=scorer)
  assert logs[0].num_eligible == POOL.num_prompts - 2
  assert all(1 not in log.selected and 6 not in log.selected for log in logs)
  counts, _ = logs[0].histograms[0]
  assert int(np.sum(counts)) == POOL.num_prompts - 2


def test_select_stage_matches_the_stage_loop():
  trainer, seen = Trainer(), []
  _, logs = curriculum.run(BETA, store=POOL, params_fn=lambda s: s, train_fn=trainer.train,
                           num_stages=2, select_ratio=0.3, score_fn=_recording_scorer(trainer, seen))
  replay, replay_seen = Trainer(), []
  state, previous = BETA, None
  for stage in range(2):
    log, _ = curriculum.select_stage(stage, state, store=POOL, select_ratio=0.3,
                                     score_fn=_recording_scorer(replay, replay_seen),
                                     previous=previous)
    np.testing.assert_array_equal(log.selected, logs[stage].selected)
    assert log.overlap == logs[stage].overlap
    state, previous = replay.train(state, log.selected, stage), log.selected
  static_log, _ = curriculum.select_stage(3, BETA, store=POOL, rule="static_influence", select_ratio=0.3,
                                          static_scores=np.arange(10.0)[:, None])
  np.testing.assert_array_equal(static_log.selected, [9, 8, 7])
