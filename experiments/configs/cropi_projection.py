"""Precision of projected influence scores against exact ones, over keep ratios and kinds.

Command:
  python -m experiments.main --config=experiments/configs/cropi_projection.py:cpu \
      --workdir=results/cropi_projection

Computes every pool prompt's exact per-prompt gradient at the warmed-up
behaviour policy, scores it against each validation set by cosine, and
compares the top 10% with the top 10% of the same scores after coordinate
dropout (keep ratio q) and a random projection, for Gaussian, Rademacher and
sparse matrices, on float32 inputs and on inputs rounded to float16. The paper
("Data-Efficient RLVR via Off-Policy Influence Guidance", arXiv 2510.26491)
reports about 13% precision at q = 1 and 70-82% at q = 0.1-0.15 with float16
CUDA projections; in float32 dropout is expected not to help.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = common.rlvr_config(preset)
  config.experiment = "cropi_projection"  # which experiment the runner runs
  config.probe = ml_collections.ConfigDict()
  config.probe.keep_ratios = "1,0.5,0.15,0.1,0.01"  # coordinate dropout keep ratios q
  config.probe.kinds = "gaussian,rademacher,sparse"  # projection matrices
  config.probe.dtypes = "float32,float16"  # input precision before projection
  config.probe.seeds = 1 if preset == "smoke" else 3  # projection seeds per cell
  config.lock()
  return config
