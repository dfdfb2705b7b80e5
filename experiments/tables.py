"""Experiments made of several training runs ("arms") and one comparison table.

A table config names its arms in ``config.arms`` (comma-separated, so a subset
can be chosen from the command line) and gives each arm's changes in
``config.arm_settings.<arm>``, a subtree shaped like the config itself. Every
arm trains through the shared loop into ``workdir/<arm>`` and resumes there,
under the rule of train.check_resume: a resumed arm keeps its config except
for train.RESUMABLE_KEYS.
"""

import copy
import pathlib
import statistics
import time

import jax
import ml_collections

import plt
from experiments import outputs
from experiments import train


def arm_names(config: ml_collections.ConfigDict) -> list[str]:
  """Return the arms to run, validated against config.arm_settings."""
  names = [a.strip() for a in config.arms.split(",") if a.strip()]
  known = list(config.arm_settings.keys())
  for name in names:
    if name not in known:
      raise ValueError(f"invalid arm {name!r}; valid arms: {', '.join(known)}")
  if not names:
    raise ValueError(f"config.arms is empty; valid arms: {', '.join(known)}")
  return names


def arm_config(config: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
  """Build one arm's config: the shared settings with the arm's changes applied."""
  arm_cfg = copy.deepcopy(config)
  arm_cfg.unlock()
  for key, value in train.flatten(config.arm_settings[arm].to_dict()).items():
    node = arm_cfg
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  arm_cfg.lock()
  return arm_cfg


def seeded_arm_config(config: ml_collections.ConfigDict, arm: str,
                      seed: int) -> ml_collections.ConfigDict:
  """Build the config of one arm's run with one seed."""
  arm_cfg = arm_config(config, arm)
  arm_cfg.unlock()
  arm_cfg.seed = seed
  arm_cfg.lock()
  return arm_cfg


def arm_workdir(workdir: pathlib.Path, arm: str, seed: int, seeds: list[int]) -> pathlib.Path:
  """Return one arm's workdir: workdir/<arm>, or workdir/<arm>/seed<n> for several seeds."""
  return workdir / arm if len(seeds) == 1 else workdir / arm / f"seed{seed}"


def prepare(config: ml_collections.ConfigDict) -> dict[str, train.Experiment]:
  """Validate every arm before any training starts."""
  experiments = {}
  for arm in arm_names(config):
    try:
      experiments[arm] = train.build(arm_config(config, arm))
    except ValueError as error:
      raise ValueError(f"arm {arm!r}: {error}") from None
  return experiments


def check_resume(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  """Raise ValueError if an arm's run in workdir would resume with another config."""
  workdir = pathlib.Path(workdir)
  seeds = seed_list(config)
  for arm in arm_names(config):
    for seed in seeds:
      train.check_resume(seeded_arm_config(config, arm, seed),
                         arm_workdir(workdir, arm, seed, seeds))


def decode_latency_ms(model: plt.ModelConfig, params, context: int, steps: int = 30) -> float:
  """Median per-token decode latency at batch 1 (jitted step, prefill excluded)."""
  prompt = jax.numpy.zeros((1, context // 2), jax.numpy.int32)
  _, state = plt.prefill(params, prompt, model, context)
  token = prompt[:, -1]
  times = []
  for i in range(steps + 3):
    start = time.perf_counter()
    logits, state = plt.decode_step_jit(params, token, state, model)
    jax.block_until_ready(logits)
    if i >= 3:  # the first calls compile
      times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def seed_list(config: ml_collections.ConfigDict) -> list[int]:
  """Parse the seeds every arm runs with (config.seeds, comma-separated)."""
  try:
    seeds = [int(s) for s in config.seeds.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"invalid seeds {config.seeds!r}; expected integers such as 0,1") from None
  if not seeds:
    raise ValueError("config.seeds is empty; expected integers such as 0,1")
  return seeds


def run(experiments: dict[str, train.Experiment], config: ml_collections.ConfigDict,
        workdir: str | pathlib.Path) -> dict[str, dict]:
  """Train every arm with every seed, then measure latency and KV bytes.

  Returns one row per arm: the final metrics averaged over seeds, the eval
  loss spread (max - min over seeds), decode latency and KV bytes.
  """
  workdir = pathlib.Path(workdir)
  seeds = seed_list(config)
  rows = {}
  for arm, exp in experiments.items():
    finals = []
    for seed in seeds:
      arm_cfg = seeded_arm_config(config, arm, seed)
      arm_dir = arm_workdir(workdir, arm, seed, seeds)
      print(f"arm {arm}, seed {seed}: training into {arm_dir}")
      final, params = train.run(arm_cfg, arm_dir, exp)
      finals.append(final)
    context = config.data.seq_len
    losses = [f["eval/loss"] for f in finals]
    rows[arm] = {
        **{key: statistics.mean(f[key] for f in finals) for key in finals[0]},
        "eval/loss_spread": max(losses) - min(losses),
        "seeds": len(seeds),
        "decode_ms": decode_latency_ms(exp.model, params, context),
        "kv_bytes": plt.kv_cache_bytes(exp.model, 1, context),
    }
    outputs.write_json(workdir / "rows.json", rows)
  return rows
