"""RL with verifiable rewards on generated problems: warm-up, offline rollouts and GRPO arms.

The pieces of the CROPI study ("Data-Efficient RLVR via Off-Policy Influence
Guidance", Zhu et al., arXiv 2510.26491) at CPU scale:

1. `build_setup`: the task splits, the tokenizer and the policy config.
2. `warm_up`: supervised training of a plt baseline decoder on worked
   solutions, through the shared training loop, so that many pool prompts
   get a pass rate strictly between 0 and 1.
3. `collect_offline`: K samples per pool prompt and K_v per validation
   prompt from the warmed-up behaviour policy, stored once as cropi
   `OfflineStore`s.
4. `GrpoTask`: GRPO on the pool or on a selected subset. The subset is
   chosen again at every stage by one of the selection rules, and the task
   plugs into the shared loop of `experiments.loop`.

Axis letters: N prompts, K samples per prompt, M = N * K rows, P prompt
tokens, T new tokens, S = P + T.
"""

import dataclasses
import pathlib
import resource
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import cropi
import plt
from experiments import metrics as metrics_lib
from experiments import policy
from experiments.data import tasks

# Arm name -> cropi selection rule; "full" trains on the whole pool.
ARM_RULES = {
    "full": None,
    "random": "random_per_stage",
    "learnability": "learnability",
    "pass_rate": "pass_rate",
    "static_influence": "static_influence",
    "cropi": "valid_uniform",
}


def parse_list(text: str, name: str, valid: Optional[tuple] = None) -> tuple[str, ...]:
  """Split a comma-separated config string; ValueError for empty or unknown entries."""
  items = tuple(item.strip() for item in text.split(",") if item.strip())
  if not items:
    raise ValueError(f"invalid {name} {text!r}; expected a comma-separated list")
  if valid is not None:
    bad = [item for item in items if item not in valid]
    if bad:
      raise ValueError(f"invalid {name} entries {bad}; valid values: {', '.join(valid)}")
  return items


@dataclasses.dataclass(frozen=True)
class Encoded:
  """A list of problems as token arrays and reference answers."""

  problems: tuple
  prompts: np.ndarray  # [N, P] int32, BOS first, right-padded
  prompt_lengths: np.ndarray  # [N] int32
  answers: tuple  # N canonical answer strings

  @classmethod
  def build(cls, problems, tokenizer: tasks.CharTokenizer, prompt_len: int) -> "Encoded":
    prompts, lengths = tokenizer.encode_prompts([p.prompt for p in problems], prompt_len)
    return cls(tuple(problems), prompts, lengths, tuple(p.answer for p in problems))

  def __len__(self) -> int:
    return len(self.problems)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything an RLVR run derives from its config before touching devices."""

  tokenizer: tasks.CharTokenizer
  splits: tasks.TaskSplits
  model: plt.ModelConfig
  pool: Encoded
  valid: dict  # target family -> Encoded
  evaluation: dict  # family -> Encoded
  prompt_len: int
  max_new_tokens: int
  warmup: tuple = ()  # warm-up problems of a loaded file; generated ones are drawn later


def jsonl_splits(task: ml_collections.ConfigDict, seed: int) -> tuple[tasks.TaskSplits, tuple]:
  """Split a GSM8K-style file into evaluation, validation, pool and warm-up problems.

  The problems are shuffled with `seed`, then taken in that order: eval_size
  for evaluation, valid_size for validation (the influence target), pool_size
  for the pool, and the rest for supervised warm-up.
  """
  problems = tasks.load_jsonl(task.jsonl)
  order = np.random.default_rng(seed).permutation(len(problems))
  shuffled = [problems[i] for i in order]
  sizes = (task.eval_size, task.valid_size, task.pool_size)
  if sum(sizes) >= len(shuffled):
    raise ValueError(f"task.jsonl {task.jsonl!r} has {len(shuffled)} problems; eval_size + "
                     f"valid_size + pool_size = {sum(sizes)} leaves none for warm-up")
  evaluation, valid, pool = (tuple(shuffled[sum(sizes[:i]):sum(sizes[:i + 1])]) for i in range(3))
  family = tasks.JSONL_FAMILY
  splits = tasks.TaskSplits(pool=pool, valid={family: valid}, evaluation={family: evaluation},
                            targeted=(family,), untargeted=())
  return splits, tuple(shuffled[sum(sizes):])


def reward(problem: tasks.Problem, completion: str) -> float:
  """Exact match for generated problems; numeric match for loaded math problems."""
  if problem.family == tasks.JSONL_FAMILY:
    return tasks.numeric_reward(completion, problem.answer)
  return tasks.reward(completion, problem.answer)


def build_setup(config: ml_collections.ConfigDict) -> Setup:
  """Generate (or load) the splits and encode them; raises ValueError on bad task or model values."""
  task = config.task
  warmup = ()
  if task.jsonl:
    splits, warmup = jsonl_splits(task, config.seed)
  else:
    families = parse_list(task.families, "task.families", tasks.FAMILIES)
    targeted = parse_list(task.targeted, "task.targeted", families)
    difficulties = tuple(int(d) for d in parse_list(task.difficulties, "task.difficulties"))
    splits = tasks.make_splits(pool_size=task.pool_size, valid_size=task.valid_size,
                               eval_size=task.eval_size, families=families, targeted=targeted,
                               difficulties=difficulties, seed=config.seed)
  tokenizer = tasks.CharTokenizer()
  every = list(splits.pool) + list(warmup) + [p for v in splits.valid.values() for p in v]
  every += [p for v in splits.evaluation.values() for p in v]
  prompt_len = max(len(tokenizer.encode(p.prompt)) for p in every) + 1  # + BOS
  longest = max(len(tokenizer.encode(p.solution)) for p in every) + 1  # + EOS
  if task.max_new_tokens < longest:
    raise ValueError(f"invalid task.max_new_tokens {task.max_new_tokens}; the longest solution "
                     f"needs {longest}")
  model = plt.ModelConfig(**{**config.model.to_dict(), "vocab_size": tokenizer.vocab_size})
  if model.variant != "baseline":
    raise ValueError(f"invalid model.variant {model.variant!r}; the RLVR policy is 'baseline'")
  return Setup(
      tokenizer=tokenizer, splits=splits, model=model,
      pool=Encoded.build(splits.pool, tokenizer, prompt_len),
      valid={f: Encoded.build(v, tokenizer, prompt_len) for f, v in splits.valid.items()},
      evaluation={f: Encoded.build(v, tokenizer, prompt_len) for f, v in splits.evaluation.items()},
      prompt_len=prompt_len, max_new_tokens=task.max_new_tokens, warmup=warmup)


def warmup_problems(setup: Setup, count: int, seed: int) -> list:
  """`count` generated problems outside every split, for supervised warm-up.

  Warming up on the pool itself would memorise it, leaving every pool prompt
  at pass rate 1 and nothing for GRPO or the selection rules to act on. The
  draws repeat problems where a family's space is small. A loaded file
  supplies its own warm-up problems: those left after the splits.
  """
  if setup.warmup:
    return [setup.warmup[i % len(setup.warmup)] for i in range(count)]
  taken = {p.prompt for p in setup.splits.pool}
  taken |= {p.prompt for v in setup.splits.valid.values() for p in v}
  taken |= {p.prompt for v in setup.splits.evaluation.values() for p in v}
  families = sorted({p.family for p in setup.splits.pool})
  difficulties = sorted({p.difficulty for p in setup.splits.pool})
  rng = np.random.default_rng([seed, 7])
  problems = []
  attempts = 0
  while len(problems) < count:
    attempts += 1
    if attempts > 100 * count:
      raise ValueError(f"could not draw {count} warm-up problems outside the splits; "
                       "lower task.pool_size, task.valid_size or task.eval_size")
    family = families[len(problems) % len(families)]
    difficulty = difficulties[int(rng.integers(len(difficulties)))]
    problem = tasks.generate_problem(family, difficulty, rng)
    if problem.prompt not in taken:
      problems.append(problem)
  return problems


def supervised_data(setup: Setup, problems) -> policy.SupervisedSequences:
  """Prompt + worked solution rows for the warm-up loop."""
  encoded = Encoded.build(problems, setup.tokenizer, setup.prompt_len)
  solutions, lengths = setup.tokenizer.encode_solutions([p.solution for p in problems],
                                                        setup.max_new_tokens)
  return policy.SupervisedSequences(encoded.prompts, encoded.prompt_lengths, solutions, lengths,
                                    setup.tokenizer.pad_id)


def make_verifier(setup: Setup, problems: dict):
  """A cropi verifier: the decoded completion scored against its problem's reference answer."""

  def verifier(prompt_ids, completions, lengths):
    return [reward(problems[int(i)], setup.tokenizer.decode(row[:n]))
            for i, row, n in zip(prompt_ids, completions, lengths)]

  return verifier


def accuracy(params, setup: Setup, encoded: Encoded, batch: int = 256) -> float:
  """Greedy-decoding accuracy (exact match) on a set of problems."""
  if len(encoded) == 0:
    return float("nan")
  correct = 0.0
  for start in range(0, len(encoded), batch):
    stop = min(start + batch, len(encoded))
    prompts = np.zeros((batch, setup.prompt_len), np.int32)
    lengths = np.ones((batch,), np.int32)
    prompts[:stop - start] = encoded.prompts[start:stop]
    lengths[:stop - start] = encoded.prompt_lengths[start:stop]
    tokens = np.asarray(policy.greedy(params, jnp.asarray(prompts), jnp.asarray(lengths),
                                      config=setup.model, max_new_tokens=setup.max_new_tokens,
                                      eos_id=setup.tokenizer.eos_id, pad_id=setup.tokenizer.pad_id))
    for row, problem in zip(tokens[:stop - start], encoded.problems[start:stop]):
      correct += reward(problem, setup.tokenizer.decode(row))
  return correct / len(encoded)


def evaluate(params, setup: Setup) -> dict[str, float]:
  """Greedy accuracy per family, and the means over targeted and untargeted families."""
  values = {f"eval/{family}": accuracy(params, setup, enc) for family, enc in setup.evaluation.items()}
  for group, families in (("targeted", setup.splits.targeted), ("untargeted", setup.splits.untargeted)):
    scores = [values[f"eval/{f}"] for f in families]
    values[f"eval/{group}"] = float(np.mean(scores)) if scores else float("nan")
  return values


def collect_store(params, setup: Setup, encoded: Encoded, num_samples: int, temperature: float,
                  key: jax.Array, tempered_behaviour: bool, chunk: int = 64) -> cropi.OfflineStore:
  """Sample, score and store `num_samples` completions per prompt from the behaviour policy.

  The behaviour log-probs are recomputed by teacher forcing at temperature 1,
  as CROPI's code does, or at the sampling temperature with
  `tempered_behaviour`.
  """
  sampler = policy.make_sampler(setup.model, setup.max_new_tokens, temperature,
                                setup.tokenizer.eos_id, setup.tokenizer.pad_id)
  verifier = make_verifier(setup, dict(enumerate(encoded.problems)))
  parts = []
  for start in range(0, len(encoded), chunk):
    stop = min(start + chunk, len(encoded))
    parts.append(cropi.generate(sampler, verifier, params, encoded.prompts[start:stop],
                                encoded.prompt_lengths[start:stop], jax.random.fold_in(key, start),
                                num_samples, prompt_ids_N=np.arange(start, stop)))
  rollouts = cropi.Rollouts(*[np.concatenate([getattr(p, f) for p in parts])
                              for f in cropi.Rollouts._fields[:-1]],
                            sum(p.num_zero_variance_groups for p in parts))
  store = cropi.build_store(rollouts, encoded.prompts, encoded.prompt_lengths, num_samples,
                            metadata={"temperature": float(temperature),
                                      "tempered_behaviour": bool(tempered_behaviour)})
  behaviour_fn = policy.make_log_prob_fn(setup.model, temperature if tempered_behaviour else 1.0)
  return dataclasses.replace(store, behaviour_log_probs=cropi.teacher_forced_log_probs(
      behaviour_fn, params, store))


def save_store(store: cropi.OfflineStore, path: pathlib.Path) -> None:
  """Write the store's arrays atomically as one .npz file."""
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, **store.to_arrays())
  tmp.replace(path)


def load_or_collect(path: pathlib.Path, collect) -> cropi.OfflineStore:
  """Load a stored .npz if present, otherwise collect and save it."""
  if path.exists():
    with np.load(path) as data:
      return cropi.OfflineStore.from_arrays(data)
  store = collect()
  save_store(store, path)
  return store


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class GrpoTask:
  """GRPO on the pool, or on a subset re-selected at every stage, for the shared loop.

  The data state saved with each checkpoint is the current stage and its
  selection, so a run resumed mid-stage keeps the selection made with the
  stage's starting policy instead of rescoring with a later one. A stage
  whose rule finds no eligible prompt trains on the whole pool and logs a
  selection of 0.
  """

  unit = "prompts"

  def __init__(self, setup: Setup, config: ml_collections.ConfigDict, arm: str, seed: int,
               beta_params, pool_store: cropi.OfflineStore, scorer,
               stage_log: metrics_lib.MetricsLog):
    if arm not in ARM_RULES:
      raise ValueError(f"invalid arm {arm!r}; valid values: {', '.join(ARM_RULES)}")
    self.setup, self.config, self.arm, self.seed = setup, config, arm, seed
    self.rule = ARM_RULES[arm]
    self.beta = beta_params
    self.store, self.scorer, self.stage_log = pool_store, scorer, stage_log
    grpo = config.grpo
    self.sampler = policy.make_sampler(setup.model, setup.max_new_tokens, grpo.temperature,
                                       setup.tokenizer.eos_id, setup.tokenizer.pad_id)
    self.verifier = make_verifier(setup, dict(enumerate(setup.pool.problems)))
    self.log_prob_fn = policy.make_log_prob_fn(setup.model)
    self.ref_log_probs = jax.jit(self.log_prob_fn)
    self.units_per_step = config.train.batch_size
    self.stage, self.last_step = -1, 0
    self.selected = np.zeros((0,), np.int64)
    self.static_selected = None

  # -- the shared loop's interface

  def data_state(self) -> dict:
    return {"step": self.last_step, "stage": int(self.stage), "selected": self.selected.tolist(),
            "static_selected": self.static_selected}

  def restore(self, data_state: dict) -> None:
    self.last_step = data_state["step"]
    self.stage = data_state["stage"]
    self.selected = np.asarray(data_state["selected"], np.int64)
    self.static_selected = data_state["static_selected"]
    self.stage_log.truncate(self.last_step)  # stages selected after the checkpoint run again

  def init_params(self, key):
    del key
    return jax.tree.map(jnp.array, self.beta)  # every arm starts at the behaviour policy

  def loss(self, params, batch, key):
    del key
    grpo = self.config.grpo
    log_probs = self.log_prob_fn(params, batch["tokens"])
    clip = None if grpo.clip_low < 0 else grpo.clip_low
    clip_high = None if clip is None else grpo.clip_high
    loss, metrics = cropi.grpo_loss(
        log_probs, jax.lax.stop_gradient(log_probs), batch["advantages"], batch["mask"],
        ref_log_probs_BxT=batch["ref_log_probs"] if grpo.kl_coef else None,
        kl_coef=grpo.kl_coef, clip_low=clip, clip_high=clip_high, aggregation=grpo.aggregation)
    return loss, {f"train/{k}": v for k, v in metrics.items()}

  def next_batch(self, step: int, params, key) -> tuple[dict, dict]:
    """Select the stage's prompts if a stage starts, then sample, score and pack one GRPO batch."""
    grpo = self.config.grpo
    self.last_step = step
    host_metrics = {}
    stage = (step - 1) // self.config.cropi.steps_per_stage if self.rule else 0
    if self.rule and stage != self.stage:
      host_metrics.update(self._select(stage, step, params))

    subset = self.selected if self.rule else np.arange(len(self.setup.pool))
    if subset.size == 0:
      # No eligible prompt (every group degenerate): the stage falls back to
      # the whole pool, and train/selected records a selection of 0.
      subset = np.arange(len(self.setup.pool))
    host_metrics["train/selected"] = float(self.selected.size if self.rule else subset.size)

    rng = np.random.default_rng([self.seed, step])
    count = self.config.train.batch_size
    ids = rng.choice(subset, count, replace=len(subset) < count)
    rollouts = cropi.generate(self.sampler, self.verifier, params, self.setup.pool.prompts[ids],
                              self.setup.pool.prompt_lengths[ids], key, grpo.group_size,
                              prompt_ids_N=ids)
    advantages = cropi.group_advantages(rollouts.rewards, rollouts.group_ids,
                                        num_groups=len(ids), eps=grpo.adv_eps)

    # Rows are relabelled 0..n-1 because a resampled batch can repeat a prompt,
    # and a store needs unique prompt ids.
    temporary = cropi.build_store(
        rollouts._replace(prompt_ids=np.repeat(np.arange(len(ids)), grpo.group_size)),
        self.setup.pool.prompts[ids], self.setup.pool.prompt_lengths[ids], grpo.group_size)
    examples = temporary.examples()
    tokens = examples["tokens"].reshape(-1, examples["tokens"].shape[-1])
    batch = {"tokens": tokens, "mask": examples["mask"].reshape(tokens.shape),
             "advantages": np.asarray(advantages)}
    if grpo.kl_coef:
      batch["ref_log_probs"] = self.ref_log_probs(self.beta, jnp.asarray(tokens))

    host_metrics.update({
        "train/reward": float(np.mean(rollouts.rewards)),
        "train/zero_variance_groups": rollouts.num_zero_variance_groups / len(ids),
        "train/completion_tokens": float(np.mean(rollouts.completion_lengths)),
        "train/stage": stage,
    })
    return batch, host_metrics

  def evaluate(self, params) -> dict:
    return evaluate(params, self.setup)

  # -- the curriculum

  def _select(self, stage: int, step: int, params) -> dict:
    previous = self.selected if self.selected.size else None
    if self.rule == "static_influence" and self.static_selected is not None:
      log = cropi.curriculum.StageLog(stage, self.rule, np.asarray(self.static_selected, np.int64),
                                      0, (), None if previous is None else
                                      cropi.selection.overlap(previous, self.static_selected),
                                      self.store.content_hash, 0.0)
    else:
      log, _ = cropi.select_stage(stage, params, store=self.store, rule=self.rule,
                                  select_ratio=self.config.cropi.select_ratio, score_fn=self.scorer,
                                  seed=self.seed, previous=previous)
      if self.rule == "static_influence":
        self.static_selected = log.selected.tolist()
    self.stage, self.selected = stage, np.asarray(log.selected, np.int64)
    record = {
        "stage": stage, "rule": self.rule, "selected": self.selected.tolist(),
        "num_eligible": log.num_eligible, "overlap": log.overlap,
        "scoring_seconds": log.scoring_seconds, "peak_rss_mib": peak_rss_mib(),
        "store_hash": log.store_hash,
        "families": _family_counts(self.setup.pool, self.selected),
        "histograms": [{"counts": c.tolist(), "edges": e.tolist()} for c, e in log.histograms],
    }
    self.stage_log.write(step, record)  # keyed by the stage's first step, so resume truncates it
    return {"train/scoring_seconds": log.scoring_seconds,
            "train/selected_pass_rate": float(np.mean(self.store.pass_rates[self.selected]))
            if self.selected.size else float("nan")}


def _family_counts(encoded: Encoded, ids) -> dict:
  counts = {}
  for i in np.asarray(ids).tolist():
    family = encoded.problems[i].family
    counts[family] = counts.get(family, 0) + 1
  return counts


def make_scorer(setup: Setup, config: ml_collections.ConfigDict, pool_store, valid_stores, params):
  """CROPI's influence scorer over the pool against each target family's validation set."""
  c = config.cropi
  loss = cropi.make_prompt_loss(policy.make_log_prob_fn(setup.model), eps=config.grpo.adv_eps)
  dim = cropi.flat_size(params)
  projector = cropi.make_projector(dim, min(c.proj_dim, dim), kind=c.proj_type,
                                   keep_ratio=c.keep_ratio, seed=c.proj_seed)
  if c.dense_projection:
    projector = projector.dense()
  # A validation set whose every group is degenerate has a zero mean gradient
  # and no direction to score against. Rewards are fixed, so this is known now.
  usable = [store for store in valid_stores.values()
            if np.any(~cropi.zero_variance_groups(store.rewards))]
  if not usable:
    return lambda params: np.full((pool_store.num_prompts, 1), np.nan, np.float32)
  return cropi.make_influence_scorer(loss, pool_store, usable, projector,
                                     chunk_size=c.chunk_size, max_valid_prompts=c.max_valid_prompts,
                                     seed=c.proj_seed)


