"""Cosine of off-policy (POPI) and on-policy gradients as GRPO moves away from the behaviour policy.

Command:
  python -m experiments.main --config=experiments/configs/cropi_offpolicy.py:cpu \
      --workdir=results/cropi_offpolicy

Trains full-pool GRPO from the warmed-up behaviour policy, keeping every
checkpoint. At each checkpoint it computes, for 50 pool prompts with unequal
stored rewards, the POPI gradient from the stored trajectories and the
on-policy gradient from fresh samples, twice, so the cosine of the two fresh
draws gives the noise ceiling. A review of "Data-Efficient RLVR via
Off-Policy Influence Guidance" (arXiv 2510.26491) quotes a cosine above 0.6
for about 40 of 50 prompts. At step 0 on the stored samples it is exactly 1.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = common.rlvr_config(preset)
  config.experiment = "cropi_offpolicy"  # which experiment the runner runs
  config.train.checkpoint_every = max(1, config.train.steps // 6)  # the probed checkpoints
  config.train.keep_checkpoints = 100  # keep them all
  config.cropi.steps_per_stage = config.train.checkpoint_every  # unused by the full pool
  config.probe = ml_collections.ConfigDict()
  config.probe.prompts = 6 if preset == "smoke" else 50  # pool prompts probed
  config.probe.fresh_samples = 4 if preset == "smoke" else 32  # fresh samples per prompt and draw
  config.lock()
  return config
