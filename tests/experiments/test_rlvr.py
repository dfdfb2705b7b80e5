"""The RLVR policy pieces and the CROPI GRPO study end to end at the smoke preset."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plt
from experiments import policy
from experiments import rlvr
from experiments.configs import cropi_grpo

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = plt.ModelConfig(vocab_size=12, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                         head_dim=8, ffn_dim=32, window=8)
PARAMS = plt.init_params(jax.random.key(0), CONFIG)
EOS, PAD = 2, 0
PROMPTS = np.array([[1, 5, 6, 0], [1, 7, 8, 9], [1, 4, 0, 0]], np.int32)
LENGTHS = np.array([3, 4, 2], np.int32)


@pytest.fixture(scope="module")
def samples():
  sampler = policy.make_sampler(CONFIG, max_new_tokens=6, temperature=0.7, eos_id=EOS, pad_id=PAD)
  keys = jax.random.split(jax.random.key(3), 3)
  return sampler(PARAMS, PROMPTS, LENGTHS, keys), sampler, keys


def test_sampler_repeats_from_keys(samples):
  (tokens, lengths, _), sampler, keys = samples
  again = sampler(PARAMS, PROMPTS, LENGTHS, keys)
  np.testing.assert_array_equal(tokens, again[0])
  other = sampler(PARAMS, PROMPTS, LENGTHS, jax.random.split(jax.random.key(4), 3))
  assert not np.array_equal(tokens, other[0])


def test_sampler_pads_after_the_end_token(samples):
  (tokens, lengths, log_probs), _, _ = samples
  tokens, lengths, log_probs = map(np.asarray, (tokens, lengths, log_probs))
  for row, length in zip(range(3), lengths):
    ended = np.flatnonzero(tokens[row] == EOS)
    expected = ended[0] + 1 if ended.size else 6
    assert length == expected
    assert np.all(tokens[row, length:] == PAD)
    assert np.all(log_probs[row, length:] == 0.0)


def test_sampler_log_probs_match_teacher_forcing(samples):
  (tokens, lengths, log_probs), _, _ = samples
  log_prob_fn = policy.make_log_prob_fn(CONFIG, temperature=0.7)
  for row in range(3):
    plen, clen = int(LENGTHS[row]), int(lengths[row])
    sequence = np.concatenate([PROMPTS[row, :plen], np.asarray(tokens[row, :clen])])
    forced = np.asarray(log_prob_fn(PARAMS, jnp.asarray(sequence[None])))[0, plen:]
    np.testing.assert_allclose(np.asarray(log_probs[row, :clen]), forced, rtol=1e-4, atol=1e-5)


def test_greedy_tokens_are_the_forward_argmax():
  tokens = np.asarray(policy.greedy(PARAMS, jnp.asarray(PROMPTS), jnp.asarray(LENGTHS), config=CONFIG,
                                    max_new_tokens=5, eos_id=EOS, pad_id=PAD))
  for row in range(3):
    plen = int(LENGTHS[row])
    sequence = list(PROMPTS[row, :plen])
    for token in tokens[row]:
      if sequence[-1] == EOS and len(sequence) > plen:
        assert token == PAD
        continue
      logits = plt.forward(PARAMS, jnp.asarray([sequence]), CONFIG)[0, -1]
      assert token == int(jnp.argmax(logits))
      sequence.append(int(token))


def test_supervised_rows_mask_only_the_solution():
  data = policy.SupervisedSequences(np.array([[1, 5, 6, 0]]), np.array([3]), np.array([[7, 8, 2, 0]]),
                                    np.array([3]), pad_id=PAD)
  batch = data.batch(np.array([0]))
  np.testing.assert_array_equal(batch["inputs"][0], [1, 5, 6, 7, 8, 2, 0])
  np.testing.assert_array_equal(batch["targets"][0], [5, 6, 7, 8, 2, 0, 0])
  np.testing.assert_array_equal(batch["mask"][0], [0, 0, 1, 1, 1, 0, 0])


def test_warmup_problems_avoid_every_split():
  setup = rlvr.build_setup(cropi_grpo.get_config("smoke"))
  problems = rlvr.warmup_problems(setup, 300, seed=0)
  taken = {p.prompt for p in setup.splits.pool}
  taken |= {p.prompt for v in setup.splits.valid.values() for p in v}
  taken |= {p.prompt for v in setup.splits.evaluation.values() for p in v}
  assert len(problems) == 300
  assert not {p.prompt for p in problems} & taken


def _main(workdir, *overrides):
  command = [sys.executable, "-m", "experiments.main", "--config=experiments/configs/cropi_grpo.py:smoke",
             f"--workdir={workdir}", *overrides]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cropi_grpo")
  result = _main(workdir, "--config.arms=full,learnability,cropi")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_study_writes_its_table_and_stage_logs(study):
  workdir, result = study
  assert "results.md" in result.stdout
  text = (workdir / "results.md").read_text()
  for arm in ("full", "learnability", "cropi"):
    assert f"| {arm} |" in text
  assert (workdir / "reward_vs_step.png").stat().st_size > 0
  summary = json.loads((workdir / "offline" / "summary.json").read_text())
  stages = [json.loads(line) for line in
            (workdir / "arms" / "cropi" / "seed_0" / "stages.jsonl").read_text().splitlines()]
  assert [s["stage"] for s in stages] == [0, 1, 2]  # 6 steps, 2 per stage
  assert {s["store_hash"] for s in stages} == {summary["pool_hash"]}
  assert all(len(s["selected"]) <= 3 for s in stages)  # 10% of 30 prompts
  rows = [json.loads(line) for line in
          (workdir / "arms" / "full" / "seed_0" / "metrics.jsonl").read_text().splitlines()]
  for key in ("train/loss", "train/reward", "train/grad_norm", "eval/targeted", "eval/untargeted"):
    assert key in rows[-1], key


def test_rerun_resumes_without_training_again(study):
  workdir, _ = study
  before = (workdir / "arms" / "cropi" / "seed_0" / "metrics.jsonl").read_text()
  result = _main(workdir, "--config.arms=full,learnability,cropi")
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "arms" / "cropi" / "seed_0" / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("override, message", [
    ("--config.arms=full,best", "invalid arms entries ['best']"),
    ("--config.cropi.steps_per_stage=3", "invalid cropi.steps_per_stage 3"),
    ("--config.task.targeted=mod,div", "invalid task.targeted entries ['div']"),
    ("--config.grpo.group_size=1", "invalid grpo.group_size 1"),
    ("--config.cropi.keep_ratio=0", "invalid cropi.keep_ratio 0"),
    ("--config.cropi.proj_dim=0", "invalid cropi.proj_dim 0"),
    ("--config.cropi.chunk_size=0", "invalid cropi.chunk_size 0"),
])
def test_bad_study_override_exits_2(tmp_path, override, message):
  result = _main(tmp_path / "bad", override)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert message in lines[0]
  assert not (tmp_path / "bad").exists()


def _probe(config_name, workdir, shared, *overrides):
  command = [sys.executable, "-m", "experiments.main",
             f"--config=experiments/configs/{config_name}.py:smoke", f"--workdir={workdir}",
             f"--config.shared_dir={shared}", *overrides]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_projection_probe_writes_its_grid(study, tmp_path):
  shared, _ = study
  result = _probe("cropi_projection", tmp_path / "e2", shared, "--config.probe.keep_ratios=1,0.5",
                  "--config.probe.kinds=gaussian,sparse")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "e2" / "rows.json").read_text())["rows"]
  assert [(r["keep_ratio"], r["kind"], r["dtype"]) for r in rows] == [
      (k, kind, d) for k in (1.0, 0.5) for kind in ("gaussian", "sparse")
      for d in ("float32", "float16")]
  assert all(0.0 <= r["precision_mean"] <= 1.0 for r in rows)
  assert (tmp_path / "e2" / "precision_vs_keep_ratio.png").stat().st_size > 0


def test_offpolicy_probe_is_exact_at_the_behaviour_policy(study, tmp_path):
  shared, _ = study
  result = _probe("cropi_offpolicy", tmp_path / "e1", shared)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "e1" / "rows.json").read_text())["rows"]
  assert rows[0]["step"] == 0
  assert rows[0]["kl_per_token"] == 0.0
  assert rows[0]["same_samples_cosine_min"] > 1 - 1e-5
  assert [r["step"] for r in rows[1:]] == [1, 2, 3, 4, 5, 6]


def test_projection_probe_rejects_bad_keep_ratio(tmp_path):
  result = _probe("cropi_projection", tmp_path / "bad", tmp_path / "shared",
                  "--config.probe.keep_ratios=1,1.5")
  assert result.returncode == 2
  assert "invalid probe.keep_ratios entry 1.5" in result.stderr


def test_study_runs_on_a_gsm8k_style_file(tmp_path):
  rng = np.random.default_rng(0)
  lines = []
  for _ in range(40):
    a, b = (int(x) for x in rng.integers(1, 50, 2))
    lines.append(json.dumps({"question": f"What is {a} plus {b}?",
                             "answer": f"{a}+{b}=<<{a}+{b}={a + b}>>{a + b}\n#### {a + b:,}"}))
  path = tmp_path / "math.jsonl"
  path.write_text("\n".join(lines) + "\n")
  workdir = tmp_path / "study"
  result = _main(workdir, f"--config.task.jsonl={path}", "--config.task.pool_size=20",
                 "--config.task.valid_size=5", "--config.task.eval_size=5",
                 "--config.task.max_new_tokens=20", "--config.arms=full,cropi")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "offline" / "summary.json").read_text())
  assert list(summary["families"]) == ["jsonl"]
  assert summary["pool_prompts"] == 20
  rows = [json.loads(line) for line in
          (workdir / "arms" / "cropi" / "seed_0" / "metrics.jsonl").read_text().splitlines()]
  assert "eval/jsonl" in rows[-1]


def test_jsonl_splits_leave_problems_for_warmup(tmp_path):
  path = tmp_path / "tiny.jsonl"
  path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"})
                            for i in range(10)) + "\n")
  config = cropi_grpo.get_config("smoke")
  config.task.jsonl = str(path)
  config.task.pool_size, config.task.valid_size, config.task.eval_size = 5, 2, 2
  splits, warmup = rlvr.jsonl_splits(config.task, seed=0)
  prompts = [p.prompt for p in splits.pool + splits.valid["jsonl"] + splits.evaluation["jsonl"]]
  assert len(set(prompts)) == 9
  assert len(warmup) == 1
  config.task.pool_size = 6
  with pytest.raises(ValueError, match="leaves none for warm-up"):
    rlvr.jsonl_splits(config.task, seed=0)


def test_shared_rollouts_with_other_settings_are_rejected(study, tmp_path):
  shared, _ = study
  result = _probe("cropi_projection", tmp_path / "e2", shared, "--config.offline.temperature=1.0")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: invalid offline settings")
  assert "pool.npz contains rollouts" in lines[0]
  assert not (tmp_path / "e2").exists()
