"""cropi: off-policy influence guided data selection for RL with verifiable rewards.

Reimplements "Data-Efficient RLVR via Off-Policy Influence Guidance" (Zhu et
al., arXiv 2510.26491) in JAX: GRPO objectives, the off-policy per-prompt
gradient (POPI) from an offline trajectory store, chunked per-example
gradients, blockwise sparse random projection with coordinate dropout,
cosine influence scores, selection rules and the multi-stage curriculum.
Everything takes a log-probability function and a parameter pytree, so any
JAX model can be scored.
"""

from cropi import curriculum
from cropi import diagnostics
from cropi import nn
from cropi.curriculum import make_influence_scorer
from cropi.curriculum import select_stage
from cropi.curriculum import StageLog
from cropi.gradients import flat_size
from cropi.gradients import flatten
from cropi.gradients import per_example_grads
from cropi.influence import cosine_scores
from cropi.influence import influence_scores
from cropi.influence import is_eligible
from cropi.influence import validation_target
from cropi.nn import log_prob_fn_from_nnx
from cropi.objectives import AGGREGATIONS
from cropi.objectives import aggregate
from cropi.objectives import clipped_surrogate
from cropi.objectives import group_advantages
from cropi.objectives import grpo_loss
from cropi.objectives import k3_kl
from cropi.objectives import make_prompt_loss
from cropi.objectives import onpolicy_loss
from cropi.objectives import popi_loss
from cropi.objectives import prompt_advantages
from cropi.objectives import sequence_log_probs
from cropi.objectives import weighted_prompt_advantages
from cropi.projection import make_projector
from cropi.projection import PROJECTION_KINDS
from cropi.projection import Projector
from cropi.rollouts import build_store
from cropi.rollouts import canonical_number
from cropi.rollouts import exact_match_reward
from cropi.rollouts import extract_answer
from cropi.rollouts import generate
from cropi.rollouts import OfflineStore
from cropi.rollouts import Rollouts
from cropi.rollouts import sample_keys
from cropi.rollouts import teacher_forced_log_probs
from cropi.rollouts import zero_variance_groups
from cropi.selection import learnability
from cropi.selection import num_selected
from cropi.selection import pass_rates
from cropi.selection import select
from cropi.selection import SELECTION_RULES
from cropi.selection import top_n

run_curriculum = curriculum.run
