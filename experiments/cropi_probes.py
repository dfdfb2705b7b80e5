"""Two CROPI probes on the warmed-up policy: projection fidelity and off-policy gradient drift.

- `run_projection` measures precision at 10% of projected influence scores
  against exact (unprojected) ones, over keep ratios, projection kinds and
  float32 or float16 inputs.
- `run_offpolicy` measures the cosine between the off-policy (POPI) gradient
  from the stored trajectories and the on-policy gradient from fresh samples
  of checkpoints at growing distance from the behaviour policy, next to the
  ceiling of two independent on-policy draws.

Both reuse the warm-up and offline rollouts of `cropi_study.prepare_policy`.
"""

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import cropi
from experiments import checkpointing
from experiments import cropi_study
from experiments import loop
from experiments import metrics as metrics_lib
from experiments import outputs
from experiments import policy
from experiments import rlvr
from experiments import train

# Precision at 10% read off the 1.5B sparse-projection figure of "Data-Efficient
# RLVR via Off-Policy Influence Guidance" (arXiv 2510.26491), about +-2 points.
PAPER_PRECISION = {1.0: 13, 0.5: 23, 0.15: 77, 0.1: 70, 0.01: 51}


def _floats(text: str, name: str) -> list:
  values = []
  for item in rlvr.parse_list(text, name):
    try:
      values.append(float(item))
    except ValueError:
      raise ValueError(f"invalid {name} entry {item!r}; expected numbers") from None
  return values


def check_probe(probe: ml_collections.ConfigDict) -> None:
  """Validate the projection probe's grid; raises ValueError."""
  for keep in _floats(probe.keep_ratios, "probe.keep_ratios"):
    if not 0 < keep <= 1:
      raise ValueError(f"invalid probe.keep_ratios entry {keep}; expected values in (0, 1]")
  rlvr.parse_list(probe.kinds, "probe.kinds", cropi.PROJECTION_KINDS)
  rlvr.parse_list(probe.dtypes, "probe.dtypes", ("float32", "float16"))
  if probe.seeds < 1:
    raise ValueError(f"invalid probe.seeds {probe.seeds}; expected >= 1")


def exact_scores(policy_: cropi_study.Policy, config) -> tuple[np.ndarray, np.ndarray, list]:
  """Unprojected per-prompt gradients of the pool, and exact cosine scores per validation set."""
  loss = cropi.make_prompt_loss(policy.make_log_prob_fn(policy_.setup.model), eps=config.grpo.adv_eps)
  chunk = config.cropi.chunk_size
  train_grads = np.asarray(cropi.per_example_grads(loss, policy_.beta, policy_.pool.examples(),
                                                   chunk_size=chunk))
  valid_grads = [np.asarray(cropi.per_example_grads(loss, policy_.beta, store.examples(),
                                                    chunk_size=chunk))
                 for store in policy_.valid.values()
                 if np.any(~cropi.zero_variance_groups(store.rewards))]
  scores = cropi.influence_scores(train_grads, valid_grads, max_valid_prompts=config.cropi.max_valid_prompts,
                                  seed=config.cropi.proj_seed)
  return train_grads, np.asarray(scores), valid_grads


def run_projection(config: ml_collections.ConfigDict, workdir) -> dict:
  """Precision at 10% of projected against exact scores, over the configured grid."""
  workdir = pathlib.Path(workdir)
  policy_ = cropi_study.prepare_policy(config, workdir)
  train_grads, exact, valid_grads = exact_scores(policy_, config)
  d = train_grads.shape[1]
  k = min(config.cropi.proj_dim, d)
  probe = config.probe
  rows = []
  for keep in _floats(probe.keep_ratios, "probe.keep_ratios"):
    for kind in rlvr.parse_list(probe.kinds, "probe.kinds", cropi.PROJECTION_KINDS):
      for dtype in rlvr.parse_list(probe.dtypes, "probe.dtypes", ("float32", "float16")):
        precisions, errors = [], []
        start = time.perf_counter()
        for seed in range(probe.seeds):
          projector = cropi.make_projector(d, k, kind=kind, keep_ratio=keep, seed=seed,
                                           input_dtype=dtype).dense()
          projected = np.asarray(projector(jnp.asarray(train_grads)))
          projected_valid = [np.asarray(projector(jnp.asarray(v))) for v in valid_grads]
          scores = np.asarray(cropi.influence_scores(
              projected, projected_valid, max_valid_prompts=config.cropi.max_valid_prompts,
              seed=config.cropi.proj_seed))
          per_set = [cropi.diagnostics.precision_at_fraction(scores[:, j], exact[:, j], 0.1)
                     for j in range(exact.shape[1])]
          precisions.append(float(np.mean(per_set)))
          finite = np.isfinite(scores) & np.isfinite(exact)
          errors.append(float(np.median(np.abs(scores[finite] - exact[finite]))))
        rows.append({"keep_ratio": keep, "kind": kind, "dtype": dtype, "proj_dim": k,
                     "precision_mean": float(np.mean(precisions)),
                     "precision_std": float(np.std(precisions)),
                     "median_abs_score_error": float(np.mean(errors)),
                     "seconds_per_seed": (time.perf_counter() - start) / probe.seeds})
  finite = exact[np.all(np.isfinite(exact), axis=1)]
  result = {"parameters": d, "proj_dim": k, "eligible_prompts": int(len(finite)),
            "exact_score_std": float(np.std(finite)), "rows": rows}
  outputs.write_json(workdir / "rows.json", result)
  _write_projection_report(workdir, config, result)
  return result


def _random_precision(eligible: int, fraction: float = 0.1) -> float:
  """Expected precision of a random ranking: m / N for the top m = max(1, floor(fraction N))."""
  return max(1, int(fraction * eligible)) / eligible if eligible else float("nan")


def _write_projection_report(workdir: pathlib.Path, config, result: dict) -> None:
  lines = [
      "# CROPI probe: projected against exact influence scores", "",
      f"{result['eligible_prompts']} eligible pool prompts, {result['parameters']} parameters "
      f"projected to k = {result['proj_dim']}; {config.probe.seeds} projection seeds per cell. "
      f"Spread of the exact cosine scores: std {result['exact_score_std']:.4f}. A random "
      f"ranking scores about {_random_precision(result['eligible_prompts']):.2f}.", "",
      "| keep ratio | kind | input | precision@10% | median abs score error | paper (1.5B, %) |",
      "|---|---|---|---|---|---|",
  ]
  for row in result["rows"]:
    paper = PAPER_PRECISION.get(row["keep_ratio"], "")
    lines.append(f"| {row['keep_ratio']:g} | {row['kind']} | {row['dtype']} | "
                 f"{row['precision_mean']:.3f} ± {row['precision_std']:.3f} | "
                 f"{row['median_abs_score_error']:.4f} | {paper} |")
  outputs.write_text(workdir / "results.md", "\n".join(lines) + "\n")
  figure = Figure(figsize=(6, 4))
  FigureCanvasAgg(figure)
  axis = figure.add_subplot(1, 1, 1)
  series = {}
  for row in result["rows"]:
    series.setdefault((row["kind"], row["dtype"]), []).append((row["keep_ratio"], row["precision_mean"]))
  for (kind, dtype), points in series.items():
    points.sort()
    axis.plot(*zip(*points), marker="o", label=f"{kind}, {dtype}")
  axis.set_xscale("log")
  axis.set_xlabel("keep ratio q")
  axis.set_ylabel("precision@10%")
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7)
  figure.tight_layout()
  outputs.write_figure(workdir / "precision_vs_keep_ratio.png", figure)
  print(f"results: {workdir / 'results.md'}\nplots: {workdir / 'precision_vs_keep_ratio.png'}")


def _on_policy_store(params, policy_: cropi_study.Policy, rows: np.ndarray, num_samples: int,
                     temperature: float, key) -> cropi.OfflineStore:
  """Fresh samples of `params` for the pool rows, with their own log-probs as behaviour."""
  setup = policy_.setup
  encoded = rlvr.Encoded(tuple(setup.pool.problems[i] for i in rows), setup.pool.prompts[rows],
                         setup.pool.prompt_lengths[rows], tuple(setup.pool.answers[i] for i in rows))
  return rlvr.collect_store(params, setup, encoded, num_samples, temperature, key,
                            tempered_behaviour=False)


def run_offpolicy(config: ml_collections.ConfigDict, workdir) -> dict:
  """Cosine of POPI and on-policy gradients along a full-pool GRPO run."""
  workdir = pathlib.Path(workdir)
  policy_ = cropi_study.prepare_policy(config, workdir)
  probe = config.probe
  grpo_dir = workdir / "grpo"
  sub = cropi_study.arm_config(config, "full", config.seed)
  train.check_resume(sub, grpo_dir)
  grpo_dir.mkdir(parents=True, exist_ok=True)
  task = rlvr.GrpoTask(policy_.setup, sub, "full", config.seed, policy_.beta, policy_.pool, None,
                       metrics_lib.MetricsLog(grpo_dir / "stages.jsonl"))
  loop.run(task, sub, grpo_dir)

  rates = policy_.pool.pass_rates
  learnable = np.flatnonzero((rates > 0) & (rates < 1))
  rows = np.sort(np.random.default_rng(config.seed).choice(
      learnable, min(probe.prompts, learnable.size), replace=False))
  pool_rows = dataclasses.replace(
      policy_.pool, **{name: getattr(policy_.pool, name)[rows] for name in (
          "prompt_ids", "prompt_tokens", "prompt_lengths", "completions", "completion_lengths",
          "rewards", "behaviour_log_probs")})
  log_prob_fn = policy.make_log_prob_fn(policy_.setup.model)
  popi = cropi.make_prompt_loss(log_prob_fn, eps=config.grpo.adv_eps)
  onpolicy = cropi.make_prompt_loss(log_prob_fn, off_policy=False, eps=config.grpo.adv_eps)

  checkpointer = checkpointing.Checkpointer(grpo_dir / "checkpoints", config.train.keep_checkpoints)
  steps = [0] + sorted(checkpointer.manager.all_steps())
  results = []
  for step in steps:
    params = policy_.beta if step == 0 else _restore_params(checkpointer, step, policy_.beta, sub)
    g_off = np.asarray(cropi.per_example_grads(popi, params, pool_rows.examples(),
                                               chunk_size=config.cropi.chunk_size))
    draws = []
    for draw in range(2):
      key = jax.random.fold_in(jax.random.key(config.seed + 1000), step * 2 + draw)
      fresh = _on_policy_store(params, policy_, rows, probe.fresh_samples,
                               config.offline.temperature, key)
      draws.append((fresh, np.asarray(cropi.per_example_grads(
          onpolicy, params, fresh.examples(), chunk_size=config.cropi.chunk_size))))
    (fresh, g_on), (_, g_on2) = draws
    usable = np.any(g_off != 0, axis=1) & np.any(g_on != 0, axis=1) & np.any(g_on2 != 0, axis=1)
    cos = ceiling = np.zeros(0)
    if usable.any():
      cos = np.atleast_1d(cropi.diagnostics.gradient_cosine(g_off[usable], g_on[usable]))
      ceiling = np.atleast_1d(cropi.diagnostics.gradient_cosine(g_on[usable], g_on2[usable]))
    kl = _token_kl(params, policy_.beta, fresh, log_prob_fn)
    same = np.asarray(cropi.per_example_grads(onpolicy, params, pool_rows.examples(),
                                              chunk_size=config.cropi.chunk_size))
    same_rows = np.any(g_off != 0, axis=1)
    exact_same = None
    if step == 0 and same_rows.any():
      exact_same = cropi.diagnostics.gradient_cosine(g_off[same_rows], same[same_rows])
    results.append({
        "step": step, "kl_per_token": kl, "prompts": int(usable.sum()),
        "median_cosine": float(np.median(cos)) if cos.size else float("nan"),
        "share_above_0.6": float(np.mean(cos > 0.6)) if cos.size else float("nan"),
        "median_ceiling": float(np.median(ceiling)) if ceiling.size else float("nan"),
        "same_samples_cosine_min": None if exact_same is None else float(np.min(exact_same)),
    })
  checkpointer.close()
  result = {"rows": results, "prompts": int(len(rows)), "fresh_samples": probe.fresh_samples}
  outputs.write_json(workdir / "rows.json", result)
  _write_offpolicy_report(workdir, config, result)
  return result


def _restore_params(checkpointer, step: int, beta, sub):
  optimizer = loop.make_optimizer(sub.train)
  state = loop.TrainState(beta, optimizer.init(beta), jnp.zeros((), jnp.int32),
                          jnp.zeros((2,), jnp.uint32))
  restored, _ = checkpointer.restore(step, checkpointing.abstract_like(state))
  return restored.params


def _token_kl(params, beta, store: cropi.OfflineStore, log_prob_fn) -> float:
  """Mean per-token log pi(o) - log beta(o) over the fresh samples.

  NOTE: the samples come from pi at the offline temperature, not from pi
  itself, so this is a drift measure that can be slightly negative, not an
  unbiased KL(pi || beta).
  """
  examples = store.examples()
  tokens = jnp.asarray(examples["tokens"].reshape(-1, examples["tokens"].shape[-1]))
  mask = examples["mask"].reshape(tokens.shape)
  delta = np.asarray(jax.jit(log_prob_fn)(params, tokens) - jax.jit(log_prob_fn)(beta, tokens))
  return float(np.sum(delta * mask) / np.sum(mask))


def _write_offpolicy_report(workdir: pathlib.Path, config, result: dict) -> None:
  lines = [
      "# CROPI probe: off-policy (POPI) against on-policy gradients", "",
      f"{result['prompts']} pool prompts with 0 < pass rate < 1; on-policy gradients from "
      f"{result['fresh_samples']} fresh samples per prompt at temperature "
      f"{config.offline.temperature}; checkpoints of a full-pool GRPO run.", "",
      "| GRPO step | log pi - log beta per token | prompts | median cos(POPI, on-policy) | share > 0.6 "
      "| median cos of two on-policy draws |",
      "|---|---|---|---|---|---|",
  ]
  for row in result["rows"]:
    lines.append(f"| {row['step']} | {row['kl_per_token']:.4f} | {row['prompts']} | "
                 f"{row['median_cosine']:.3f} | {row['share_above_0.6']:.2f} | "
                 f"{row['median_ceiling']:.3f} |")
  first = result["rows"][0]
  if first["same_samples_cosine_min"] is not None:
    lines += ["", "At step 0 on the stored samples, the smallest cosine between POPI and the "
              f"on-policy gradient is {first['same_samples_cosine_min']:.6f} (exactly 1 in "
              "exact arithmetic, because every ratio is 1)."]
  outputs.write_text(workdir / "results.md", "\n".join(lines) + "\n")
  figure = Figure(figsize=(6, 4))
  FigureCanvasAgg(figure)
  axis = figure.add_subplot(1, 1, 1)
  kls = [r["kl_per_token"] for r in result["rows"]]
  axis.plot(kls, [r["median_cosine"] for r in result["rows"]], marker="o", label="POPI vs on-policy")
  axis.plot(kls, [r["median_ceiling"] for r in result["rows"]], marker="s", label="two on-policy draws")
  axis.set_xlabel("mean log pi - log beta per token (fresh samples)")
  axis.set_ylabel("median cosine")
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  outputs.write_figure(workdir / "cosine_vs_kl.png", figure)
  print(f"results: {workdir / 'results.md'}\nplots: {workdir / 'cosine_vs_kl.png'}")
