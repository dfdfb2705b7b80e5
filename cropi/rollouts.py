"""Rollouts through a caller's sampler and verifier, and the immutable offline trajectory store.

Axis letters: N prompts, K completions per prompt, P prompt tokens, T
completion tokens, S = P + T sequence tokens, M = N * K rows.

The sampler contract: ``sampler(params, prompt_tokens_MxP, prompt_lengths_M,
keys_M) -> (completions_MxT, completion_lengths_M, log_probs_MxT)`` with one
PRNG key per row, right-padded prompts and completions, completion lengths
that count tokens up to and including the first end token, and the sampling
distribution's log-probabilities of the sampled tokens. The verifier
contract: ``verifier(prompt_ids_M, completions_MxT, completion_lengths_M) ->
M rewards`` in row order, 0 for a completion whose answer cannot be parsed.
"""

import dataclasses
import decimal
import hashlib
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Rollouts(NamedTuple):
  """K completions per prompt, rows in prompt-major order (p0 x K, p1 x K, ...)."""

  prompt_ids: np.ndarray  # [M] int64 pool ids
  group_ids: np.ndarray  # [M] int64 position of the prompt in this call, 0..N-1
  completions: np.ndarray  # [M, T] int32
  completion_lengths: np.ndarray  # [M] int32
  log_probs: np.ndarray  # [M, T] float32 sampling log-probs
  rewards: np.ndarray  # [M] float32
  num_zero_variance_groups: int  # groups whose K rewards are all equal


def sample_keys(base_key: jax.Array, num: int) -> jax.Array:
  """`num` distinct per-sample keys split from one base key (reproducible from it)."""
  if num < 1:
    raise ValueError(f"invalid num {num}; expected >= 1")
  return jax.random.split(base_key, num)


def zero_variance_groups(rewards_NxK: np.ndarray) -> np.ndarray:
  """[N] bool, True where all K rewards of a prompt are equal.

  Rule: such groups are kept, not resampled. Their advantages are exactly 0,
  so they add nothing to the GRPO gradient, and under the per-sequence mean
  they still count in the divisor. Callers report how many there were.
  """
  rewards = np.asarray(rewards_NxK)
  return rewards.max(axis=-1) == rewards.min(axis=-1)


def generate(sampler: Callable, verifier: Callable, params: Any, prompt_tokens_NxP: np.ndarray,
             prompt_lengths_N: np.ndarray, key: jax.Array, num_samples: int,
             prompt_ids_N: Optional[np.ndarray] = None) -> Rollouts:
  """Sample `num_samples` completions per prompt and score them with the verifier.

  Each row gets its own key from ``sample_keys(key, N * K)``, so the K samples
  of a prompt differ and the whole call repeats exactly from `key`.

  Args:
    sampler: see the module docstring.
    verifier: see the module docstring.
    params: the policy parameters handed to the sampler.
    prompt_tokens_NxP: [N, P] right-padded prompts.
    prompt_lengths_N: [N] prompt lengths.
    key: the base PRNG key.
    num_samples: K, completions per prompt.
    prompt_ids_N: pool ids of the prompts, passed on to the verifier;
      defaults to 0..N-1.

  Returns:
    `Rollouts` with M = N * K rows.
  """
  prompts = np.asarray(prompt_tokens_NxP)
  lengths = np.asarray(prompt_lengths_N)
  if prompts.ndim != 2 or lengths.shape != prompts.shape[:1]:
    raise ValueError(f"prompt_tokens shape {prompts.shape} and prompt_lengths shape "
                     f"{lengths.shape} must be [N, P] and [N]")
  if num_samples < 1:
    raise ValueError(f"invalid num_samples {num_samples}; expected >= 1")
  n = prompts.shape[0]
  ids = np.arange(n, dtype=np.int64) if prompt_ids_N is None else np.asarray(prompt_ids_N, np.int64)
  if ids.shape != (n,):
    raise ValueError(f"prompt_ids shape {ids.shape} must be [{n}]")
  rows = np.repeat(np.arange(n), num_samples)
  keys = sample_keys(key, n * num_samples)
  completions, completion_lengths, log_probs = sampler(
      params, jnp.asarray(prompts[rows]), jnp.asarray(lengths[rows]), keys)
  completions = np.asarray(completions, np.int32)
  completion_lengths = np.asarray(completion_lengths, np.int32)
  rewards = score(verifier, ids[rows], completions, completion_lengths)
  groups = rewards.reshape(n, num_samples)
  return Rollouts(ids[rows], rows.astype(np.int64), completions, completion_lengths,
                  np.asarray(log_probs, np.float32), rewards,
                  int(np.sum(zero_variance_groups(groups))))


def score(verifier: Callable, prompt_ids_M, completions_MxT, completion_lengths_M) -> np.ndarray:
  """Call the verifier and check that it returns one finite reward per row, in order."""
  m = len(completions_MxT)
  rewards = np.asarray(verifier(prompt_ids_M, completions_MxT, completion_lengths_M), np.float32)
  if rewards.shape != (m,):
    raise ValueError(f"the verifier returned rewards of shape {rewards.shape}; expected ({m},), "
                     "one per completion in order")
  if not np.all(np.isfinite(rewards)):
    raise ValueError(f"the verifier returned non-finite rewards at rows "
                     f"{np.flatnonzero(~np.isfinite(rewards)).tolist()}")
  return rewards


# Digits with optional comma grouping in threes and an optional fraction, or a bare fraction.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")


def extract_answer(text: str, marker: str = "Answer:") -> Optional[str]:
  """The final answer of a completion: the text after the last `marker`, or None.

  The answer ends at the first newline. Surrounding spaces are dropped. An
  absent marker or an empty answer gives None (unparseable).
  """
  at = text.rfind(marker)
  if at < 0:
    return None
  answer = text[at + len(marker):].split("\n", 1)[0].strip()
  return answer or None


def canonical_number(text: Optional[str]) -> Optional[str]:
  """Write a number in one canonical form, or return None if `text` is not one number.

  Surrounding spaces, dollar signs and thousands separators are dropped, and
  whole values lose any fraction, so "1,200", "$1200" and "1200.0" all give
  "1200". Other values keep their significant digits ("0.50" gives "0.5").
  Decimal arithmetic keeps every digit, however long the number.
  """
  if text is None:
    return None
  cleaned = text.replace("$", "").strip()
  if not _NUMBER.fullmatch(cleaned):
    return None
  value = decimal.Decimal(cleaned.replace(",", ""))
  if value == value.to_integral_value():
    return str(int(value))
  return format(value.normalize(), "f")


def exact_match_reward(completion: str, reference: Optional[str], *, marker: str = "Answer:",
                       normalize: Callable[[Optional[str]], Optional[str]] = lambda s: s) -> float:
  """1.0 if the completion's final answer equals the reference after `normalize`, else 0.0.

  An unparseable completion scores 0, and so does every completion against an
  unparseable reference (`normalize` returns None): None never matches.
  """
  answer = normalize(extract_answer(completion, marker))
  expected = normalize(reference)
  return float(answer is not None and expected is not None and answer == expected)


def _readonly(array, dtype) -> np.ndarray:
  out = np.array(array, dtype=dtype, copy=True)
  out.setflags(write=False)
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class OfflineStore:
  """Trajectories of the behaviour policy, sampled once and never changed.

  The arrays are read-only copies. `content_hash` fingerprints all of them
  and the metadata, so a caller can prove that every curriculum stage scored
  the same trajectories. `to_arrays` and `from_arrays` give a flat dict of
  NumPy arrays for ``np.savez`` (no float goes through text).
  """

  prompt_ids: np.ndarray  # [N] int64 pool ids
  prompt_tokens: np.ndarray  # [N, P] int32, right-padded
  prompt_lengths: np.ndarray  # [N] int32
  completions: np.ndarray  # [N, K, T] int32, right-padded
  completion_lengths: np.ndarray  # [N, K] int32, up to and including the end token
  rewards: np.ndarray  # [N, K] float32
  behaviour_log_probs: np.ndarray  # [N, K, T] float32, aligned with completions
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # str/int/float/bool values

  def __post_init__(self):
    fields = {
        "prompt_ids": np.int64, "prompt_tokens": np.int32, "prompt_lengths": np.int32,
        "completions": np.int32, "completion_lengths": np.int32, "rewards": np.float32,
        "behaviour_log_probs": np.float32,
    }
    for name, dtype in fields.items():
      object.__setattr__(self, name, _readonly(getattr(self, name), dtype))
    n, p = self.prompt_tokens.shape if self.prompt_tokens.ndim == 2 else (None, None)
    if n is None or self.completions.ndim != 3:
      raise ValueError(f"prompt_tokens {self.prompt_tokens.shape} and completions "
                       f"{self.completions.shape} must be [N, P] and [N, K, T]")
    k, t = self.completions.shape[1:]
    expected = {"prompt_ids": (n,), "prompt_lengths": (n,), "completion_lengths": (n, k),
                "rewards": (n, k), "behaviour_log_probs": (n, k, t)}
    for name, shape in expected.items():
      if getattr(self, name).shape != shape:
        raise ValueError(f"{name} has shape {getattr(self, name).shape}; expected {shape}")
    if np.any(self.prompt_lengths < 1) or np.any(self.prompt_lengths > p):
      raise ValueError(f"prompt_lengths must lie in [1, {p}]")
    if np.any(self.completion_lengths < 1) or np.any(self.completion_lengths > t):
      raise ValueError(f"completion_lengths must lie in [1, {t}]")
    if len(np.unique(self.prompt_ids)) != n:
      raise ValueError("prompt_ids must be unique")
    for key, value in self.metadata.items():
      if not isinstance(value, (str, int, float, bool, np.generic)):
        raise ValueError(f"metadata[{key!r}] is a {type(value).__name__}; expected str, int, float "
                         "or bool")
    object.__setattr__(self, "metadata", dict(self.metadata))

  @property
  def num_prompts(self) -> int:
    return self.prompt_tokens.shape[0]

  @property
  def num_samples(self) -> int:
    return self.completions.shape[1]

  @property
  def pass_rates(self) -> np.ndarray:
    """[N] mean reward of each prompt's K stored completions."""
    return self.rewards.mean(axis=1)

  @property
  def content_hash(self) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, and the sorted metadata."""
    digest = hashlib.sha256()
    for name, array in sorted(self.to_arrays().items()):
      digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
      digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()

  def to_arrays(self) -> dict[str, np.ndarray]:
    """Return a flat dict of arrays, with metadata values as 0-d arrays under "meta/<key>"."""
    arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "metadata"}
    for key, value in self.metadata.items():
      arrays[f"meta/{key}"] = np.asarray(value)
    return arrays

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "OfflineStore":
    """Inverse of `to_arrays` (accepts an ``np.load`` result)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "metadata"]
    missing = [name for name in names if name not in arrays]
    if missing:
      raise ValueError(f"the arrays lack {missing}; an OfflineStore needs {names}")
    metadata = {key[len("meta/"):]: np.asarray(arrays[key]).item()
                for key in arrays if key.startswith("meta/")}
    return cls(**{name: np.asarray(arrays[name]) for name in names}, metadata=metadata)

  def examples(self, indices: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
    """Per-prompt training examples for `objectives.make_prompt_loss`, prompts on axis 0.

    Each completion is placed right after its prompt's real tokens, so the
    sequences are right-padded with no gap. The dict contains tokens [n, K, S],
    mask [n, K, S] over the completion tokens, behaviour_log_probs [n, K, S]
    at the same positions and rewards [n, K].

    Args:
      indices: store rows (not pool ids) to take; all by default.
    """
    rows = np.arange(self.num_prompts) if indices is None else np.asarray(indices, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= self.num_prompts):
      raise ValueError(f"indices must lie in [0, {self.num_prompts}); got {rows.min()}..{rows.max()}")
    p, (k, t) = self.prompt_tokens.shape[1], self.completions.shape[1:]
    s = p + t
    positions = np.arange(s)
    plen = self.prompt_lengths[rows][:, None, None]  # [n, 1, 1]
    clen = self.completion_lengths[rows][:, :, None]  # [n, K, 1]
    offset = positions[None, None, :] - plen  # index into the completion
    in_prompt = offset < 0
    in_completion = (offset >= 0) & (offset < clen)
    safe = np.clip(offset, 0, t - 1)
    completions = np.take_along_axis(self.completions[rows], np.broadcast_to(safe, (len(rows), k, s)), 2)
    behaviour = np.take_along_axis(self.behaviour_log_probs[rows],
                                   np.broadcast_to(safe, (len(rows), k, s)), 2)
    prompts = np.broadcast_to(self.prompt_tokens[rows][:, None, :], (len(rows), k, p))
    prompts = np.pad(prompts, ((0, 0), (0, 0), (0, t)))
    tokens = np.where(in_prompt, prompts, np.where(in_completion, completions, 0))
    return {
        "tokens": tokens.astype(np.int32),
        "mask": in_completion.astype(np.float32),
        "behaviour_log_probs": np.where(in_completion, behaviour, 0.0).astype(np.float32),
        "rewards": self.rewards[rows],
    }


def build_store(rollouts: Rollouts, prompt_tokens_NxP: np.ndarray, prompt_lengths_N: np.ndarray,
                num_samples: int, metadata: Optional[Mapping[str, Any]] = None) -> OfflineStore:
  """Build an `OfflineStore` from the prompt-major rows of `generate`."""
  n = len(prompt_lengths_N)
  t = rollouts.completions.shape[-1]
  if len(rollouts.rewards) != n * num_samples:
    raise ValueError(f"{len(rollouts.rewards)} rollout rows do not make {n} prompts x "
                     f"{num_samples} samples")
  return OfflineStore(
      prompt_ids=rollouts.prompt_ids.reshape(n, num_samples)[:, 0],
      prompt_tokens=prompt_tokens_NxP, prompt_lengths=prompt_lengths_N,
      completions=rollouts.completions.reshape(n, num_samples, t),
      completion_lengths=rollouts.completion_lengths.reshape(n, num_samples),
      rewards=rollouts.rewards.reshape(n, num_samples),
      behaviour_log_probs=rollouts.log_probs.reshape(n, num_samples, t),
      metadata=metadata or {})


def teacher_forced_log_probs(log_prob_fn: Callable, params: Any, store: OfflineStore) -> np.ndarray:
  """[N, K, T] log-probs of the stored completions under ``log_prob_fn(params, tokens_KxS)``.

  CROPI's code recomputes the behaviour log-probs this way, through the base
  model at temperature 1, although the samples were drawn at temperature
  0.5; pass a tempered `log_prob_fn` for the sampling distribution instead.
  Use the result with ``dataclasses.replace(store, behaviour_log_probs=...)``.
  Prompts run one at a time through `lax.map`, so memory is one prompt's.
  """
  examples = store.examples()
  per_prompt = jax.jit(lambda p, tokens: jax.lax.map(lambda x: log_prob_fn(p, x), tokens))
  sequence = np.asarray(per_prompt(params, jnp.asarray(examples["tokens"])), np.float32)  # [N, K, S]
  t = store.completions.shape[-1]
  index = store.prompt_lengths[:, None, None] + np.arange(t)[None, None, :]  # [N, 1, T]
  index = np.broadcast_to(np.minimum(index, sequence.shape[-1] - 1), store.completions.shape)
  picked = np.take_along_axis(sequence, index, axis=2)
  inside = np.arange(t)[None, None, :] < store.completion_lengths[:, :, None]
  return np.where(inside, picked, 0.0).astype(np.float32)
