"""CROPI against full-pool GRPO and the selection baselines on generated problems.

Command:
  python -m experiments.main --config=experiments/configs/cropi_grpo.py:cpu \
      --workdir=results/cropi_grpo

Warms up a plt baseline decoder on the pool's worked solutions, samples 8
offline completions per pool prompt and 32 per validation prompt, then runs
GRPO for each arm and seed with the same steps, batch and group size: the full
pool; 10% drawn at random each stage; the top 10% by learnability p(1 - p);
10% drawn among prompts with 0 < p < 1; influence scores computed once at the
behaviour policy; and CROPI, which rescores the pool off-policy at every stage.
"Data-Efficient RLVR via Off-Policy Influence Guidance" (arXiv 2510.26491)
reports CROPI reaching full GRPO's accuracy in 2.66x fewer steps. The table
gives each arm's steps to the full-pool run's best smoothed targeted accuracy.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = common.rlvr_config(preset)
  config.experiment = "cropi_grpo"  # which experiment the runner runs
  config.arms = "full,random,learnability,pass_rate,static_influence,cropi"  # arms to train
  config.seeds = "0" if preset == "smoke" else "0,1,2"  # GRPO seeds per arm
  config.lock()
  return config
