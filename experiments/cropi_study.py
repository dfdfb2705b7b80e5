"""The CROPI study end to end: warm-up, offline rollouts, then GRPO arms over seeds.

Every stage is resumable: the warm-up is a run of the shared loop in
``<shared>/warmup``, the offline stores are .npz files in ``<shared>/offline``
written once, and every arm and seed is its own loop run in
``<workdir>/arms/<arm>/seed_<s>``. ``<shared>`` is config.shared_dir, or the
workdir when that is empty, so several studies can share one behaviour policy.
"""

import json
import pathlib
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

import cropi
from experiments import loop
from experiments import metrics as metrics_lib
from experiments import outputs
from experiments import rlvr
from experiments import train


class Policy(NamedTuple):
  """The behaviour policy and its offline trajectories."""

  setup: rlvr.Setup
  beta: Any  # parameters of the warmed-up behaviour policy
  pool: cropi.OfflineStore
  valid: dict  # target family -> OfflineStore
  summary: dict  # pass-rate statistics of the stores


def shared_dir(config: ml_collections.ConfigDict, workdir) -> pathlib.Path:
  return pathlib.Path(config.shared_dir or workdir)


def _identity(config: ml_collections.ConfigDict, sections: tuple) -> ml_collections.ConfigDict:
  """Copy only `sections` of the config: the keys that define one sub-run."""
  sub = ml_collections.ConfigDict()
  for name in sections:
    value = config[name]
    sub[name] = ml_collections.ConfigDict(value.to_dict()) if hasattr(value, "to_dict") else value
  return sub


def warmup_config(config: ml_collections.ConfigDict, setup: rlvr.Setup) -> ml_collections.ConfigDict:
  """Build the shared loop's config of the supervised warm-up."""
  sub = _identity(config, ("seed", "task", "model", "mesh", "warmup_problems"))
  sub.train = ml_collections.ConfigDict(config.warmup.to_dict())
  sub.data = ml_collections.ConfigDict({"seq_len": setup.prompt_len + setup.max_new_tokens - 1})
  return sub


def prepare_policy(config: ml_collections.ConfigDict, workdir) -> Policy:
  """Warm up the behaviour policy and collect its offline rollouts, or load both.

  The warm-up trains on generated problems outside the pool and the held-out
  sets, so the pool's pass rates measure generalisation, not memory.
  """
  setup = rlvr.build_setup(config)
  root = shared_dir(config, workdir)
  warm_cfg = warmup_config(config, setup)
  problems = rlvr.warmup_problems(setup, config.warmup_problems, config.seed)
  exp = train.Experiment(setup.model, None, rlvr.supervised_data(setup, problems),
                         rlvr.supervised_data(setup, [p for v in setup.splits.valid.values() for p in v]))
  train.check_resume(warm_cfg, root / "warmup")
  logging.info("Warm-up: supervised training on problems outside every split")
  beta = train.run(warm_cfg, root / "warmup", exp).params

  offline = root / "offline"
  offline.mkdir(parents=True, exist_ok=True)
  o = config.offline
  key = jax.random.key(config.seed)
  pool = rlvr.load_or_collect(offline / "pool.npz", lambda: rlvr.collect_store(
      beta, setup, setup.pool, o.num_samples, o.temperature, jax.random.fold_in(key, 0),
      o.tempered_behaviour))
  valid = {}
  for i, (family, encoded) in enumerate(setup.valid.items()):
    valid[family] = rlvr.load_or_collect(offline / f"valid_{family}.npz", lambda e=encoded, i=i: (
        rlvr.collect_store(beta, setup, e, o.num_samples_valid, o.temperature,
                           jax.random.fold_in(key, i + 1), o.tempered_behaviour)))
  summary = store_summary(setup, pool, valid)
  outputs.write_json(offline / "summary.json", summary)
  return Policy(setup, beta, pool, valid, summary)


def store_summary(setup: rlvr.Setup, pool: cropi.OfflineStore, valid: dict) -> dict:
  """Pass-rate statistics: the share of prompts with 0 < p < 1 decides what GRPO can learn."""
  rates = pool.pass_rates
  learnable = (rates > 0) & (rates < 1)
  families = {}
  for family in sorted({p.family for p in setup.pool.problems}):
    rows = np.array([p.family == family for p in setup.pool.problems])
    families[family] = {"learnable_share": float(np.mean(learnable[rows])),
                        "mean_pass_rate": float(np.mean(rates[rows]))}
  return {
      "pool_prompts": pool.num_prompts, "pool_hash": pool.content_hash,
      "learnable_share": float(np.mean(learnable)), "mean_pass_rate": float(np.mean(rates)),
      "families": families,
      "valid": {f: {"prompts": s.num_prompts, "learnable_share": float(np.mean(
          (s.pass_rates > 0) & (s.pass_rates < 1))), "hash": s.content_hash} for f, s in valid.items()},
  }


def arm_config(config: ml_collections.ConfigDict, arm: str, seed: int) -> ml_collections.ConfigDict:
  """Build the config of one GRPO arm and seed, checked when its workdir is resumed."""
  sub = _identity(config, ("task", "model", "warmup", "warmup_problems", "offline", "grpo", "cropi",
                           "train", "mesh"))
  sub.seed = seed
  sub.arm = arm
  return sub


def run_arms(config: ml_collections.ConfigDict, workdir, policy: Policy) -> dict:
  """Train every arm for every seed; return arm -> seed -> metrics rows."""
  arms = rlvr.parse_list(config.arms, "arms", tuple(rlvr.ARM_RULES))
  seeds = [int(s) for s in rlvr.parse_list(config.seeds, "seeds")]
  scorer = None
  if any(rlvr.ARM_RULES[a] in cropi.curriculum.INFLUENCE_RULES for a in arms):
    scorer = rlvr.make_scorer(policy.setup, config, policy.pool, policy.valid, policy.beta)
  rows = {}
  for arm in arms:
    rows[arm] = {}
    for seed in seeds:
      directory = pathlib.Path(workdir) / "arms" / arm / f"seed_{seed}"
      sub = arm_config(config, arm, seed)
      train.check_resume(sub, directory)
      directory.mkdir(parents=True, exist_ok=True)
      logging.info("GRPO arm %s, seed %d", arm, seed)
      task = rlvr.GrpoTask(policy.setup, sub, arm, seed, policy.beta, policy.pool, scorer,
                           metrics_lib.MetricsLog(directory / "stages.jsonl"))
      loop.run(task, sub, directory)
      rows[arm][seed] = metrics_lib.MetricsLog(directory / "metrics.jsonl").read()
  return rows


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validate the study's config before any work; raises ValueError."""
  rlvr.build_setup(config)
  _arms(config)
  if config.experiment == "cropi_projection":
    from experiments import cropi_probes  # pylint: disable=g-import-not-at-top
    cropi_probes.check_probe(config.probe)
  for seed in _seeds(config):
    if not seed.isdigit():
      raise ValueError(f"invalid seeds entry {seed!r}; expected non-negative integers")
  c = config.cropi
  for name in ("proj_dim", "chunk_size", "max_valid_prompts", "steps_per_stage"):
    if c[name] < 1:
      raise ValueError(f"invalid cropi.{name} {c[name]}; expected a positive int")
  if not 0 < c.keep_ratio <= 1:
    raise ValueError(f"invalid cropi.keep_ratio {c.keep_ratio}; expected a value in (0, 1]")
  if not 0 < config.offline.temperature:
    raise ValueError(f"invalid offline.temperature {config.offline.temperature}; expected > 0")
  for name in ("num_samples", "num_samples_valid"):
    if config.offline[name] < 2:
      raise ValueError(f"invalid offline.{name} {config.offline[name]}; a group needs >= 2")
  if not 0 < c.select_ratio <= 1:
    raise ValueError(f"invalid cropi.select_ratio {c.select_ratio}; expected a value in (0, 1]")
  if c.steps_per_stage < 1 or c.steps_per_stage % config.train.checkpoint_every:
    raise ValueError(f"invalid cropi.steps_per_stage {c.steps_per_stage}; expected a positive "
                     f"multiple of train.checkpoint_every {config.train.checkpoint_every}, so a "
                     "resumed run restarts each stage from its own checkpoint")
  if c.proj_type not in cropi.PROJECTION_KINDS:
    raise ValueError(f"invalid cropi.proj_type {c.proj_type!r}; valid values: "
                     f"{', '.join(cropi.PROJECTION_KINDS)}")
  if config.grpo.aggregation not in cropi.AGGREGATIONS:
    raise ValueError(f"invalid grpo.aggregation {config.grpo.aggregation!r}; valid values: "
                     f"{', '.join(cropi.AGGREGATIONS)}")
  if config.grpo.group_size < 2:
    raise ValueError(f"invalid grpo.group_size {config.grpo.group_size}; GRPO needs >= 2")


def _arms(config) -> tuple:
  if "arms" not in config:
    return ("full",)  # the probes train one full-pool run
  return rlvr.parse_list(config.arms, "arms", tuple(rlvr.ARM_RULES))


def _seeds(config) -> tuple:
  return rlvr.parse_list(config.seeds, "seeds") if "seeds" in config else (str(config.seed),)


def check_offline(config: ml_collections.ConfigDict, workdir) -> None:
  """Raise ValueError if stored offline rollouts were sampled with other offline settings."""
  o = config.offline
  offline = shared_dir(config, workdir) / "offline"
  for path in sorted(offline.glob("*.npz")) if offline.is_dir() else []:
    with np.load(path) as data:
      samples = data["completions"].shape[1]
      temperature = float(data["meta/temperature"])
      tempered = bool(data["meta/tempered_behaviour"])
    expected = o.num_samples if path.name == "pool.npz" else o.num_samples_valid
    stored = (samples, temperature, tempered)
    requested = (expected, float(o.temperature), bool(o.tempered_behaviour))
    if stored != requested:
      raise ValueError(
          f"invalid offline settings: {path} contains rollouts with (samples, temperature, "
          f"tempered_behaviour) = {stored}, but the config expects {requested}; pick another "
          "shared_dir or workdir")


def check_resume(config: ml_collections.ConfigDict, workdir) -> None:
  """Raise ValueError if any sub-run in the workdirs was started with another config."""
  setup = rlvr.build_setup(config)
  train.check_resume(warmup_config(config, setup), shared_dir(config, workdir) / "warmup")
  check_offline(config, workdir)
  if "arms" not in config:
    train.check_resume(arm_config(config, "full", config.seed), pathlib.Path(workdir) / "grpo")
    return
  for arm in _arms(config):
    for seed in _seeds(config):
      directory = pathlib.Path(workdir) / "arms" / arm / f"seed_{seed}"
      train.check_resume(arm_config(config, arm, int(seed)), directory)


def run(config: ml_collections.ConfigDict, workdir) -> dict:
  """Run the GRPO comparison: every arm and seed, then the step-ratio table and plots."""
  start = time.perf_counter()
  policy = prepare_policy(config, workdir)
  rows = run_arms(config, workdir, policy)
  from experiments import cropi_reports  # pylint: disable=g-import-not-at-top
  result = cropi_reports.write_grpo_report(pathlib.Path(workdir), config, rows, policy.summary)
  result["seconds"] = time.perf_counter() - start
  outputs.write_json(pathlib.Path(workdir) / "rows.json", json.loads(json.dumps(result, default=float)))
  return result
