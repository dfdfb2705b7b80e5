"""The experiment runner end to end: outputs, bad overrides, resume and sharding."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/plt_lm.py:smoke"
# Twelve steps, every one logged and evaluated, a checkpoint every two.
SCHEDULE = ["--config.train.steps=12", "--config.train.log_every=1", "--config.train.eval_every=1",
            "--config.train.checkpoint_every=2", "--config.train.warmup_steps=2"]
# Keys that depend on the machine's speed, not on the computation.
TIMING_KEYS = {"train/tokens_per_second"}


def _command(workdir, *overrides):
  return [sys.executable, "-m", "experiments.main", f"--config={CONFIG}",
          f"--workdir={workdir}", *SCHEDULE, *overrides]


def _run(workdir, *overrides, env=None, check=True):
  result = subprocess.run(_command(workdir, *overrides), cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def _metrics(workdir):
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  result = _run(workdir)
  return workdir, result


def test_run_writes_outputs(full_run):
  workdir, result = full_run
  for name in ("config.json", "metrics.jsonl", "results.md", "loss.png", "run_info.json"):
    assert (workdir / name).is_file(), name
  assert "results.md" in result.stdout
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  rows = _metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, 13))
  for key in ("train/loss", "train/grad_norm", "train/param_norm", "train/update_norm",
              "eval/loss"):
    assert key in rows[-1], key
  assert rows[-1]["train/loss"] < rows[0]["train/loss"]


def test_rerun_of_finished_run_changes_nothing(full_run, tmp_path):
  workdir, _ = full_run
  before = _metrics(workdir)
  _run(workdir)
  assert _metrics(workdir) == before


@pytest.mark.parametrize("override, message", [
    ("--config.train.stpes=3", "stpes"),
    ("--config.model.num_loops=0", "invalid num_loops 0"),
    ("--config.quant.format=mxint8 --config.quant.block_size=0", "invalid block_size 0"),
    ("--config.quant.format=mxfp5", "unknown format 'mxfp5'"),
    ("--config.data.tokenizer=words", "invalid data.tokenizer 'words'"),
    ("--config.data.tokenizer=minilm", "needs at least 30522"),
    ("--config.model.variant=plt --config.model.num_loops=2 --config.model.window=64",
     "invalid model.window 64"),
])
def test_bad_override_exits_2(tmp_path, override, message):
  result = _run(tmp_path / "bad", *override.split(), check=False)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert message in lines[0]
  assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_killed_run_resumes_to_identical_metrics(full_run, tmp_path):
  workdir = tmp_path / "killed"
  process = subprocess.Popen(_command(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  checkpoints = workdir / "checkpoints"
  deadline = time.time() + 300
  # Kill once a checkpoint beyond the first exists, mid-run.
  while time.time() < deadline and process.poll() is None:
    steps = [p.name for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
    if any(int(s) >= 4 for s in steps):
      break
    time.sleep(0.05)
  assert process.poll() is None, "the run finished before it could be killed; slow it down"
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  partial = _metrics(workdir)
  assert 4 <= len(partial) < 12

  _run(workdir)
  assert _metrics(workdir) == _metrics(full_run[0])


def test_four_fake_devices_match_one(full_run, tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  workdir = tmp_path / "four"
  _run(workdir, "--config.mesh.data=2", "--config.mesh.fsdp=2", env=env)
  info = json.loads((workdir / "config.json").read_text())
  assert info["mesh"]["fsdp"] == 2
  for sharded, single in zip(_metrics(workdir), _metrics(full_run[0])):
    assert sharded["train/loss"] == pytest.approx(single["train/loss"], abs=1e-5)
    assert sharded["eval/loss"] == pytest.approx(single["eval/loss"], abs=1e-5)


def test_table_experiment_smoke(tmp_path):
  workdir = tmp_path / "table"
  command = [sys.executable, "-m", "experiments.main",
             "--config=experiments/configs/plt_table.py:smoke", f"--workdir={workdir}",
             "--config.arms=baseline,loop2,plt2"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((workdir / "rows.json").read_text())
  assert list(rows) == ["baseline", "loop2", "plt2"]
  assert rows["loop2"]["kv_bytes"] == 2 * rows["baseline"]["kv_bytes"]
  # PLT-2 keeps loop 1's cache plus one window-8 ring: 1 + 8/32 of the baseline.
  assert rows["plt2"]["kv_bytes"] == rows["baseline"]["kv_bytes"] * (1 + 8 / 32)
  text = (workdir / "results.md").read_text()
  assert "| plt2 | 1 |" in text
  assert (workdir / "eval_loss.png").is_file()


def test_table_rejects_unknown_arm(tmp_path):
  command = [sys.executable, "-m", "experiments.main",
             "--config=experiments/configs/plt_table.py:smoke", f"--workdir={tmp_path}",
             "--config.arms=baseline,plt9"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2
  assert "invalid arm 'plt9'" in result.stderr


def test_non_finite_loss_stops_the_run(tmp_path):
  workdir = tmp_path / "diverge"
  command = [sys.executable, "-m", "experiments.main", f"--config={CONFIG}",
             f"--workdir={workdir}", "--config.train.steps=40", "--config.train.warmup_steps=1",
             "--config.train.learning_rate=1e30", "--config.train.grad_clip=1e30"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-2000:]
  message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(message) == 1, result.stderr[-2000:]
  assert "non-finite loss" in message[0]
  assert "at step" in message[0]


def test_checkpoint_holds_step_and_root_key(full_run):
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  workdir, _ = full_run
  seed = json.loads((workdir / "config.json").read_text())["seed"]
  manager = ocp.CheckpointManager((workdir / "checkpoints").absolute())
  restored = manager.restore(12, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore()))
  manager.close()
  state = restored.state
  # Without a target, orbax returns the TrainState NamedTuple as a dict of its fields.
  step, rng = state["step"], state["rng"]
  assert int(step) == 12
  expected = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
  np.testing.assert_array_equal(np.asarray(rng), np.asarray(expected))
  assert restored.extra["data_step"] >= 12
