"""The experiment runner end to end: outputs, bad flags, resume checks, studies and sharding."""

import csv
import json
import os
import pathlib
import shlex
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
    ("--config.quant.format=mxint8 --config.quant.block_size=0", "invalid quant.block_size 0"),
    ("--config.quant.block_size=0", "invalid quant.block_size 0"),
    ("--config.quant.block_size=32", "quant.block_size=32 needs a quant.format"),
    ("--config.quant.hadamard_size=16", "quant.hadamard_size=16 needs a quant.format"),
    ("--config.quant.scale_arith=bf16", "quant.scale_arith='bf16' needs a quant.format"),
    ("--config.quant.format=mxint8 --config.quant.scale_rule=up",
     "invalid quant.scale_rule 'up'"),
    ("--config.quant.format=mxint8 --config.quant.hadamard_size=24",
     "invalid quant.hadamard_size 24"),
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


def _main(workdir, config, *overrides):
  """Run experiments.main with `config` and no schedule overrides."""
  command = [sys.executable, "-m", "experiments.main", f"--config={config}",
             f"--workdir={workdir}", *overrides]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def _single_error_line(result):
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("error: ")
  return lines[0]


def test_run_info_records_main_command(full_run):
  workdir, _ = full_run
  info = json.loads((workdir / "run_info.json").read_text())
  expected = ["python", "-m", "experiments.main", f"--config={CONFIG}", f"--workdir={workdir}",
              *SCHEDULE]
  assert info["command"] == shlex.join(expected)


def test_changed_model_rejected_on_resume(full_run):
  workdir, _ = full_run
  config_before = (workdir / "config.json").read_bytes()
  metrics_before = _metrics(workdir)
  result = _run(workdir, "--config.model.d_model=64", check=False)
  line = _single_error_line(result)
  assert "model.d_model is 64" in line
  assert "started with 32" in line
  assert "pick a new --workdir" in line
  assert (workdir / "config.json").read_bytes() == config_before
  assert _metrics(workdir) == metrics_before


def test_resume_may_extend_schedule(tmp_path):
  workdir = tmp_path / "extend"
  _run(workdir, "--config.train.steps=2")
  _run(workdir, "--config.train.steps=4", "--config.train.log_every=2",
       "--config.train.eval_batches=2", "--config.mesh.data=1")
  assert [row["step"] for row in _metrics(workdir)] == [1, 2, 4]
  config = json.loads((workdir / "config.json").read_text())
  assert config["train"]["steps"] == 4
  assert config["mesh"]["data"] == 1


def _fake_arm_run(workdir, config, arm):
  """Leave config.json and a checkpoint folder as a trained arm (seed 0) would."""
  from experiments import tables

  arm_dir = workdir / arm
  (arm_dir / "checkpoints" / "4").mkdir(parents=True)
  arm_config = tables.seeded_arm_config(config, arm, 0)
  (arm_dir / "config.json").write_text(json.dumps(arm_config.to_dict()))
  return arm_dir


def test_table_resume_compares_each_arm(tmp_path):
  from experiments import tables
  from experiments.configs import plt_table

  config = plt_table.get_config("smoke")
  _fake_arm_run(tmp_path, config, "plt2")
  # Other arms, the title and the mesh may change, but not the arm's own settings.
  changed = plt_table.get_config("smoke")
  changed.unlock()
  changed.arms = "plt2,plt3"
  changed.title = "another title"
  changed.mesh.fsdp = 2
  changed.arm_settings.plt3.model.window = 4
  tables.check_resume(changed, tmp_path)
  changed.arm_settings.plt2.model.window = 4
  with pytest.raises(ValueError, match=r"model.window is 4, but the run in .*plt2"):
    tables.check_resume(changed, tmp_path)
  changed = plt_table.get_config("smoke")
  changed.unlock()
  changed.train.learning_rate = 1e-3
  with pytest.raises(ValueError, match="train.learning_rate is 0.001"):
    tables.check_resume(changed, tmp_path)


def test_table_changed_arm_config_exits_2(tmp_path):
  from experiments.configs import lightquant_clipping

  arm_dir = _fake_arm_run(tmp_path, lightquant_clipping.get_config("smoke"), "bf16_sym_b32")
  config_before = (arm_dir / "config.json").read_bytes()
  result = _main(tmp_path, "experiments/configs/lightquant_clipping.py:smoke",
                 "--config.arms=bf16_sym_b32", "--config.model.d_model=64")
  line = _single_error_line(result)
  assert f"model.d_model is 64, but the run in {arm_dir} was started with 32" in line
  assert (arm_dir / "config.json").read_bytes() == config_before
  assert not (tmp_path / "bf16_sym_b32" / "metrics.jsonl").exists()


def test_missing_config_file_exits_2(tmp_path):
  result = _main(tmp_path / "new", "experiments/configs/nope.py:smoke")
  line = _single_error_line(result)
  assert line.startswith("error: config file not found: 'experiments/configs/nope.py'; "
                         "valid config files: ")
  assert "experiments/configs/plt_lm.py" in line
  assert "common.py" not in line
  assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("config, override, expected", [
    ("experiments/configs/plt_lm.py:smok", None,
     "error: invalid preset 'smok'; valid presets: smoke, cpu, paper"),
    (CONFIG, "--config.train.stepz=3",
     "error: invalid config override 'train.stepz'; did you mean 'train.steps'?"),
    (CONFIG, "--config.trainz.steps=3",
     "error: invalid config override 'trainz.steps'; did you mean 'train'?"),
    (CONFIG, "--config.train.steps.x=3",
     "error: invalid config override 'train.steps.x': train.steps is a value, not a section"),
])
def test_misspelled_flag_message(tmp_path, config, override, expected):
  result = _main(tmp_path / "new", config, *([override] if override else []))
  assert _single_error_line(result) == expected
  assert not (tmp_path / "new").exists()


def test_unknown_override_lists_section_keys(tmp_path):
  result = _main(tmp_path / "new", CONFIG, "--config.train.qqqqqq=3")
  line = _single_error_line(result)
  assert line.startswith("error: invalid config override 'train.qqqqqq'; valid keys: ")
  assert "train.steps" in line
  assert "train.batch_size" in line


def _minilm_missing() -> bool:
  from experiments.data import minilm

  try:
    minilm.find_model_dir()
  except FileNotFoundError:
    return True
  return False


def _read_csv(path):
  with open(path, newline="") as file:
    return list(csv.DictReader(file))


def test_qsnr_sweep_on_subset_grid(tmp_path):
  workdir = tmp_path / "qsnr"
  workdir.mkdir()
  (workdir / "qsnr_vs_crest.png").write_bytes(b"plot of an earlier run")
  config = "experiments/configs/lightquant_qsnr.py:smoke"
  overrides = ["--config.skip_minilm=true", "--config.formats=mxint8,mxfp8",
               "--config.block_sizes=32,-1,8"]
  result = _main(workdir, config, *overrides)
  assert result.returncode == 0, result.stderr[-3000:]

  rows = _read_csv(workdir / "qsnr.csv")
  # 4 synthetic tensors x 2 formats x 3 block sizes x rotation off/on.
  assert len(rows) == 48
  assert {row["format"] for row in rows} == {"mxint8", "mxfp8"}
  assert {row["block_size"] for row in rows} == {"32", "-1", "8"}
  text = (workdir / "results.md").read_text()
  assert "| format \\ block size | 32 | per-channel | 8 |" in text
  assert "| MXINT8 |" in text
  assert not (workdir / "qsnr_vs_crest.png").exists()
  assert not (workdir / "int_vs_fp_winrate.png").exists()

  saved = json.loads((workdir / "config.json").read_text())
  assert saved["experiment"] == "qsnr_sweep"
  assert saved["formats"] == "mxint8,mxfp8"
  info = json.loads((workdir / "run_info.json").read_text())
  assert info["command"] == shlex.join(["python", "-m", "experiments.main", f"--config={config}",
                                        f"--workdir={workdir}", *overrides])


def test_qsnr_config_defaults_match_sweep():
  from experiments import lightquant_qsnr_sweep as sweep
  from experiments.configs import lightquant_qsnr

  config = lightquant_qsnr.get_config()
  assert sweep.parse_formats(config.formats) == sweep.PAPER_FORMATS
  assert sweep.parse_block_sizes(config.block_sizes) == sweep.BLOCK_SIZES


@pytest.mark.parametrize("override, expected", [
    ("--config.formats=mxint8,mxfp5,int9",
     "error: invalid formats 'mxfp5', 'int9'; valid formats: mxint8, mxfp8, mxint6, mxfp6, "
     "mxint4, mxfp4, nvint4, nvfp4"),
    ("--config.formats=,", "error: the formats list is empty; valid formats: "),
    ("--config.block_sizes=32,0,abc", "error: invalid block sizes '0', 'abc'; valid values: "),
])
def test_qsnr_bad_grid_exits_2(tmp_path, override, expected):
  result = _main(tmp_path / "new", "experiments/configs/lightquant_qsnr.py:smoke", override)
  assert _single_error_line(result).startswith(expected)
  assert not (tmp_path / "new").exists()


@pytest.mark.skipif(_minilm_missing(), reason="the all-MiniLM-L6-v2 files are not installed")
def test_direct_cast_on_format_subset(tmp_path):
  workdir = tmp_path / "direct_cast"
  config = "experiments/configs/lightquant_direct_cast.py:smoke"
  result = _main(workdir, config, "--config.formats=mxint8,mxfp8")
  assert result.returncode == 0, result.stderr[-3000:]

  rows = _read_csv(workdir / "qsnr.csv")
  assert {row["format"] for row in rows} == {"mxint8", "mxfp8"}
  text = (workdir / "results.md").read_text()
  assert "| MXINT8 | none |" in text
  assert "| MXFP8 | h=32 |" in text
  assert not (workdir / "qsnr_bars.png").exists()
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["experiment"] == "direct_cast"
  info = json.loads((workdir / "run_info.json").read_text())
  assert info["command"].startswith(f"python -m experiments.main --config={config} ")


@pytest.mark.parametrize("module_name", ["plt_table", "lightquant_clipping"])
def test_smoke_preset_runs_few_arms(module_name):
  import importlib

  from experiments import tables

  module = importlib.import_module(f"experiments.configs.{module_name}")
  smoke = tables.arm_names(module.get_config("smoke"))
  assert 2 <= len(smoke) <= 3
  assert smoke[0] == module.get_config("smoke").reference_arm
  for preset in ("cpu", "paper"):
    assert tables.arm_names(module.get_config(preset)) == list(module.ARMS)
