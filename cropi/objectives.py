"""GRPO objectives: group advantages, the clipped surrogate, k3 KL, loss aggregation and POPI.

Axis letters: N completions in storage order, P prompts, K completions of one
prompt (a group), T tokens, V vocabulary.

Reimplements the objectives of "Data-Efficient RLVR via Off-Policy Influence
Guidance" (Zhu et al., arXiv 2510.26491) and of GRPO ("DeepSeekMath", Shao et
al., arXiv 2402.03300). Per-token log-probability arrays are aligned with their
token arrays: ``log_probs[..., t] = log pi(tokens[t] | tokens[<t])``; entries
outside the mask are ignored, whatever their value.
"""

from typing import Optional

import jax
import jax.numpy as jnp

# Ways to reduce per-token losses to one scalar; see `aggregate`.
AGGREGATIONS = ("seq_mean_token_mean", "token_mean")


def _check_aggregation(mode: str) -> None:
  if mode not in AGGREGATIONS:
    raise ValueError(f"invalid aggregation {mode!r}; valid values: {AGGREGATIONS}")


def _check_std_args(std_ddof: int, eps: float, std_floor: float) -> None:
  if std_ddof not in (0, 1):
    raise ValueError(f"invalid std_ddof {std_ddof}; valid values: 0 (population), 1 (Bessel)")
  if eps < 0 or std_floor < 0:
    raise ValueError(f"invalid eps {eps} or std_floor {std_floor}; both must be >= 0")


def group_advantages(rewards_N: jax.Array, group_ids_N: jax.Array, *, num_groups: Optional[int] = None,
                     std_ddof: int = 1, eps: float = 1e-4, std_floor: float = 0.0) -> jax.Array:
  """GRPO advantages, normalised within the completions that share a prompt id.

  ``A_i = (r_i - mean_g) / (max(std_g, std_floor) + eps)`` where g is the group
  of completion i. Groups are found by id, so the storage order is free: an
  interleaved batch [p0, p1, p0, p1] gets the same advantages as a sorted one.

  A group whose rewards are all equal gets advantages of exactly 0. This is
  tested on the rewards themselves, not on ``r - mean``: float32 cannot store
  0.35, and the mean of eight copies of float32(0.35) need not equal it.

  Args:
    rewards_N: [N] rewards in storage order.
    group_ids_N: [N] integer group ids in [0, num_groups).
    num_groups: number of groups; static under jit. Defaults to
      ``max(group_ids) + 1``, which needs concrete ids.
    std_ddof: 1 for Bessel's correction (the CROPI influence loss), 0 for the
      population std.
    eps: added to the std. 1e-4 in CROPI's code.
    std_floor: lower bound on the std before eps is added.

  Returns:
    [N] float32 advantages. A group of one completion gets 0.

  Example:
    >>> adv = group_advantages(jnp.array([1., 1., 0., 1.]), jnp.array([0, 1, 0, 1]))
    >>> [round(a, 3) for a in adv.tolist()]
    [0.707, 0.0, -0.707, 0.0]
  """
  _check_std_args(std_ddof, eps, std_floor)
  rewards_N = jnp.asarray(rewards_N, jnp.float32)
  group_ids_N = jnp.asarray(group_ids_N)
  if rewards_N.ndim != 1 or rewards_N.shape != group_ids_N.shape:
    raise ValueError(f"rewards shape {rewards_N.shape} and group_ids shape {group_ids_N.shape} "
                     "must be equal and 1-D")
  if not jnp.issubdtype(group_ids_N.dtype, jnp.integer):
    raise ValueError(f"invalid group_ids dtype {group_ids_N.dtype}; expected integers")
  if num_groups is None:
    num_groups = int(jnp.max(group_ids_N)) + 1 if group_ids_N.size else 0

  def per_group(values, op=jax.ops.segment_sum):
    return op(values, group_ids_N, num_segments=num_groups)

  counts = per_group(jnp.ones_like(rewards_N))
  mean = per_group(rewards_N) / jnp.maximum(counts, 1.0)
  centered = rewards_N - mean[group_ids_N]
  dof = jnp.maximum(counts - std_ddof, 1.0)
  std = jnp.sqrt(per_group(jnp.square(centered)) / dof)
  equal = per_group(rewards_N, jax.ops.segment_max) == per_group(rewards_N, jax.ops.segment_min)
  advantages = centered / (jnp.maximum(std, std_floor)[group_ids_N] + eps)
  return jnp.where(equal[group_ids_N], 0.0, advantages)


def prompt_advantages(rewards_PxK: jax.Array, *, std_ddof: int = 1, eps: float = 1e-4,
                      std_floor: float = 0.0) -> jax.Array:
  """`group_advantages` for rewards laid out as one row of K completions per prompt.

  Args:
    rewards_PxK: [..., K] rewards; the last axis is the group.

  Returns:
    float32 advantages of the same shape.
  """
  _check_std_args(std_ddof, eps, std_floor)
  rewards = jnp.asarray(rewards_PxK, jnp.float32)
  k = rewards.shape[-1]
  mean = jnp.mean(rewards, axis=-1, keepdims=True)
  centered = rewards - mean
  std = jnp.sqrt(jnp.sum(jnp.square(centered), axis=-1, keepdims=True) / max(k - std_ddof, 1))
  equal = jnp.max(rewards, axis=-1, keepdims=True) == jnp.min(rewards, axis=-1, keepdims=True)
  return jnp.where(equal, 0.0, centered / (jnp.maximum(std, std_floor) + eps))


def weighted_prompt_advantages(rewards_PxK: jax.Array, weights_PxK: jax.Array, *,
                               eps: float = 1e-4) -> jax.Array:
  """Advantages from importance-weighted group statistics (CROPI's "accurate" variant).

  ``mu = sum w r / sum w``, ``sigma = sqrt(sum w (r - mu)^2 / sum w)`` and
  ``A = (r - mu) / (sigma + eps)``. With equal weights this is the
  population-std (std_ddof=0) version of `prompt_advantages`. The weights
  carry no gradient. All-equal rewards give exactly 0.

  Args:
    rewards_PxK: [..., K] rewards.
    weights_PxK: [..., K] positive weights, for example length-normalised
      sequence ratios to the behaviour policy.
  """
  rewards = jnp.asarray(rewards_PxK, jnp.float32)
  weights = jax.lax.stop_gradient(jnp.asarray(weights_PxK, jnp.float32))
  total = jnp.sum(weights, axis=-1, keepdims=True)
  mean = jnp.sum(weights * rewards, axis=-1, keepdims=True) / total
  std = jnp.sqrt(jnp.sum(weights * jnp.square(rewards - mean), axis=-1, keepdims=True) / total)
  equal = jnp.max(rewards, axis=-1, keepdims=True) == jnp.min(rewards, axis=-1, keepdims=True)
  return jnp.where(equal, 0.0, (rewards - mean) / (std + eps))


def sequence_log_probs(logits_BxTxV: jax.Array, tokens_BxT: jax.Array,
                       temperature: float = 1.0) -> jax.Array:
  """Per-token log-probabilities of `tokens` under next-token `logits`.

  ``out[b, t] = log softmax(logits[b, t - 1] / temperature)[tokens[b, t]]`` for
  t >= 1, and 0 at t = 0, which has no prediction. Computed in float32.

  Args:
    logits_BxTxV: [..., T, V] logits where position t predicts token t + 1.
    tokens_BxT: [..., T] token ids.
    temperature: divides the logits; 1 is the model's own distribution.

  Returns:
    [..., T] float32 log-probabilities aligned with `tokens`.
  """
  if not temperature > 0:
    raise ValueError(f"invalid temperature {temperature}; expected > 0")
  logits = jnp.asarray(logits_BxTxV, jnp.float32)
  logp = jax.nn.log_softmax(logits / temperature)
  # Position t's token is predicted at t - 1. Rolling the one-hot targets
  # instead of slicing the logits, and selecting with a product instead of a
  # gather, keeps the backward pass free of scatters, which are slow under
  # vmap on CPU.
  targets = jax.nn.one_hot(jnp.roll(tokens_BxT, -1, axis=-1), logits.shape[-1], dtype=logp.dtype)
  picked = jnp.sum(logp * targets, axis=-1)  # [..., T], position t scores token t + 1
  return jnp.roll(picked, 1, axis=-1).at[..., 0].set(0.0)


def clipped_surrogate(log_probs_BxT: jax.Array, old_log_probs_BxT: jax.Array, advantages_B: jax.Array,
                      *, clip_low: Optional[float] = 0.2,
                      clip_high: Optional[float] = 0.2) -> jax.Array:
  """Per-token PPO/GRPO loss ``-min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)``.

  ``rho = exp(log_probs - old_log_probs)`` per token; the old log-probs are
  constants. Separate bounds give DAPO's clip-higher ("DAPO", Yu et al., arXiv
  2503.14476). With both bounds None the loss is the unclipped ``-rho A``. A
  token whose ratio has left the interval in the advantage's direction gets
  zero gradient.

  Args:
    log_probs_BxT: [B, T] current log-probs.
    old_log_probs_BxT: [B, T] log-probs of the policy that sampled the tokens.
    advantages_B: [B] one advantage per sequence (or [B, T] per token).

  Returns:
    [B, T] float32 per-token losses (unmasked).
  """
  if (clip_low is None) != (clip_high is None):
    raise ValueError(f"clip_low {clip_low} and clip_high {clip_high} must both be set or both None")
  if clip_low is not None and not (0 <= clip_low < 1 and clip_high >= 0):
    raise ValueError(f"invalid clip_low {clip_low} / clip_high {clip_high}; expected "
                     "0 <= clip_low < 1 and clip_high >= 0")
  advantages = jnp.asarray(advantages_B, jnp.float32)
  if advantages.ndim == log_probs_BxT.ndim - 1:
    advantages = advantages[..., None]
  ratio = jnp.exp(log_probs_BxT - jax.lax.stop_gradient(old_log_probs_BxT))
  unclipped = ratio * advantages
  if clip_low is None:
    return -unclipped
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
  return -jnp.minimum(unclipped, clipped)


def k3_kl(log_probs_BxT: jax.Array, ref_log_probs_BxT: jax.Array) -> jax.Array:
  """Per-token k3 estimate of KL(pi || ref): ``exp(d) - d - 1`` with ``d = ref - log_probs``.

  Non-negative, unbiased for samples of pi, and low-variance (J. Schulman,
  "Approximating KL divergence", 2020). The reference is a constant.
  """
  delta = jax.lax.stop_gradient(ref_log_probs_BxT) - log_probs_BxT
  return jnp.exp(delta) - delta - 1.0


def aggregate(per_token_BxT: jax.Array, mask_BxT: jax.Array, mode: str = "seq_mean_token_mean", *,
              num_sequences: Optional[jax.Array] = None,
              num_tokens: Optional[jax.Array] = None) -> jax.Array:
  """Reduce masked per-token losses to a scalar.

  - ``seq_mean_token_mean``: the token mean inside each sequence, then the
    sum over sequences divided by `num_sequences` (GRPO's sample-level
    mean, used by CROPI's influence loss).
  - ``token_mean``: the sum over all masked tokens divided by `num_tokens`
    (DAPO's token-level mean, verl's ``token-mean``).

  The divisors default to this batch's sequence and token counts. Pass the
  counts of the whole batch when summing micro-batch losses: the sum then
  equals the whole-batch loss however the batch is split. A sequence with no
  masked token contributes 0 and still counts in `num_sequences`.

  Args:
    per_token_BxT: [B, T] losses.
    mask_BxT: [B, T] 1 for tokens that count, 0 for prompt and padding.
    mode: one of `AGGREGATIONS`.
    num_sequences: divisor of ``seq_mean_token_mean``.
    num_tokens: divisor of ``token_mean``.

  Example:
    >>> losses = jnp.array([[1., 0, 0], [1., 1., 1.]])
    >>> mask = jnp.array([[1., 0, 0], [1., 1., 0.]])
    >>> float(aggregate(losses, mask, "token_mean")), float(aggregate(losses, mask))
    (1.0, 1.0)
  """
  _check_aggregation(mode)
  mask = jnp.asarray(mask_BxT, jnp.float32)
  masked = jnp.where(mask > 0, per_token_BxT, 0.0) * mask
  if mode == "token_mean":
    total = jnp.sum(mask) if num_tokens is None else num_tokens
    return jnp.sum(masked) / jnp.maximum(total, 1.0)
  lengths = jnp.sum(mask, axis=-1)
  per_sequence = jnp.sum(masked, axis=-1) / jnp.maximum(lengths, 1.0)
  count = per_sequence.size if num_sequences is None else num_sequences
  return jnp.sum(per_sequence) / jnp.maximum(count, 1)


def grpo_loss(log_probs_BxT, old_log_probs_BxT, advantages_B, mask_BxT, *,
              ref_log_probs_BxT=None, kl_coef: float = 0.0, clip_low: Optional[float] = 0.2,
              clip_high: Optional[float] = 0.2, aggregation: str = "seq_mean_token_mean",
              num_sequences=None, num_tokens=None) -> tuple[jax.Array, dict]:
  """Compute the GRPO training loss: clipped surrogate plus an optional k3 KL penalty.

  ``loss = agg(-min(rho A, clip(rho) A) + kl_coef * k3(pi, ref))`` with the
  same aggregation for both terms (verl's ``use_kl_loss``).

  Returns:
    (scalar loss, metrics) where metrics contains the surrogate, the KL, the
    clipped-token fraction and the mean ratio, each aggregated the same way.
  """
  _check_aggregation(aggregation)
  surrogate = clipped_surrogate(log_probs_BxT, old_log_probs_BxT, advantages_B,
                                clip_low=clip_low, clip_high=clip_high)

  def agg(values):
    return aggregate(values, mask_BxT, aggregation, num_sequences=num_sequences,
                     num_tokens=num_tokens)

  loss = agg(surrogate)
  metrics = {"surrogate": loss}
  if ref_log_probs_BxT is not None:
    kl = agg(k3_kl(log_probs_BxT, ref_log_probs_BxT))
    loss = loss + kl_coef * kl
    metrics["kl"] = kl
  elif kl_coef:
    raise ValueError(f"kl_coef {kl_coef} needs ref_log_probs_BxT")
  ratio = jnp.exp(jax.lax.stop_gradient(log_probs_BxT - old_log_probs_BxT))
  metrics["ratio"] = agg(ratio)
  if clip_low is not None:
    outside = (ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)
    metrics["clip_fraction"] = agg(outside.astype(jnp.float32))
  return loss, metrics


def popi_loss(log_probs_KxT: jax.Array, behaviour_log_probs_KxT: jax.Array, rewards_K: jax.Array,
              mask_KxT: jax.Array, *, clip_eps: Optional[float] = None,
              importance_weighted: bool = False, eps: float = 1e-4, std_ddof: int = 1) -> jax.Array:
  """CROPI's per-prompt off-policy surrogate (POPI) on K stored completions.

  ``L = -(1/K) sum_k (1/|o_k|) sum_t rho_kt A_k`` with per-token ratios
  ``rho_kt = exp(log pi(o_kt) - log beta(o_kt))`` to the behaviour policy
  beta that sampled the completions, and group-normalised advantages
  ``A_k = (r_k - mean r) / (std r + eps)`` (Bessel's std by default). The
  ratios are per token; no sequence product is formed. At pi = beta every
  ratio is 1 and the gradient is GRPO's on-policy gradient on the same samples.

  Args:
    log_probs_KxT: [K, T] current-policy log-probs of the stored tokens.
    behaviour_log_probs_KxT: [K, T] behaviour-policy log-probs (constants).
    rewards_K: [K] rewards of the completions.
    mask_KxT: [K, T] completion tokens up to and including the first end
      token; prompt and padding are 0.
    clip_eps: PPO clipping of the ratio to [1 - eps, 1 + eps]; None (the
      released CROPI pipeline) disables it.
    importance_weighted: CROPI's "accurate gradient estimation" variant: the
      group statistics are weighted by the length-normalised sequence ratios
      ``w_k = exp(mean_t log rho_kt)`` with a population std; the weights
      carry no gradient.
    eps, std_ddof: as in `group_advantages`.

  Returns:
    scalar float32 loss. Its gradient is zero when all rewards are equal.
  """
  mask = jnp.asarray(mask_KxT, jnp.float32)
  log_ratio = jnp.where(mask > 0, log_probs_KxT - jax.lax.stop_gradient(behaviour_log_probs_KxT), 0.0)
  if importance_weighted:
    lengths = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    weights = jnp.exp(jnp.sum(log_ratio, axis=-1) / lengths)
    advantages = weighted_prompt_advantages(rewards_K, weights, eps=eps)
  else:
    advantages = prompt_advantages(rewards_K, std_ddof=std_ddof, eps=eps)
  per_token = clipped_surrogate(log_ratio, jnp.zeros_like(log_ratio), advantages,
                                clip_low=clip_eps, clip_high=clip_eps)
  return aggregate(per_token, mask, "seq_mean_token_mean")


def onpolicy_loss(log_probs_KxT: jax.Array, rewards_K: jax.Array, mask_KxT: jax.Array, *,
                  eps: float = 1e-4, std_ddof: int = 1) -> jax.Array:
  """Compute the on-policy GRPO surrogate, whose gradient is REINFORCE with a group baseline.

  Equal in value and gradient to `popi_loss` with the behaviour log-probs
  set to the current ones: ``-(1/K) sum_k (A_k/|o_k|) sum_t log pi(o_kt)``'s
  gradient. Used for diagnostics against fresh samples of the current policy.
  """
  return popi_loss(log_probs_KxT, jax.lax.stop_gradient(log_probs_KxT), rewards_K, mask_KxT,
                   eps=eps, std_ddof=std_ddof)


def make_prompt_loss(log_prob_fn, *, off_policy: bool = True, clip_eps: Optional[float] = None,
                     importance_weighted: bool = False, eps: float = 1e-4, std_ddof: int = 1):
  """Bind `popi_loss` (or `onpolicy_loss`) to a model through its log-prob function.

  The model enters only through ``log_prob_fn(params, tokens_KxS) -> [K, S]``
  aligned log-probs (see `sequence_log_probs`), so any JAX model can be scored.

  Args:
    log_prob_fn: the policy's teacher-forced log-probabilities.
    off_policy: True for POPI against the stored behaviour log-probs; False for
      the on-policy surrogate, which ignores them.
    clip_eps, importance_weighted, eps, std_ddof: as in `popi_loss`.

  Returns:
    ``loss(params, example)`` for one prompt, where `example` maps "tokens"
    [K, S] int, "mask" [K, S], "behaviour_log_probs" [K, S] and "rewards" [K].
    This is the per-example function that `cropi.per_example_grads` vmaps.
  """
  if not off_policy and (clip_eps is not None or importance_weighted):
    raise ValueError("clip_eps and importance_weighted apply to the off-policy loss only; "
                     f"got clip_eps={clip_eps}, importance_weighted={importance_weighted}")

  def loss(params, example):
    log_probs = log_prob_fn(params, example["tokens"])
    if off_policy:
      return popi_loss(log_probs, example["behaviour_log_probs"], example["rewards"], example["mask"],
                       clip_eps=clip_eps, importance_weighted=importance_weighted, eps=eps,
                       std_ddof=std_ddof)
    return onpolicy_loss(log_probs, example["rewards"], example["mask"], eps=eps, std_ddof=std_ddof)

  return loss
