"""Tables and plots of the CROPI studies: steps to a target reward, final rewards, scoring cost."""

import json
import pathlib

import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import outputs

# The paper's reported figure per arm ("Data-Efficient RLVR via Off-Policy
# Influence Guidance", arXiv 2510.26491, main results table, Qwen2.5-1.5B at
# 1k steps, targeted GSM8K+MATH average).
PAPER = {
    "full": "69.42 (full GRPO)",
    "random": "not reported",
    "learnability": "69.07",
    "pass_rate": "69.26",
    "static_influence": "68.70",
    "cropi": "70.26; 2.66x fewer steps than full GRPO",
}


WINDOW = 3  # evaluations in the trailing moving average


def smooth(values: np.ndarray, window: int = WINDOW) -> np.ndarray:
  """Trailing moving average over `window` evaluations; NaN until a full window exists.

  Requiring a full window keeps one lucky early evaluation from counting as
  reaching the target.
  """
  values = np.asarray(values, float)
  out = np.full(values.shape, np.nan)
  for i in range(window - 1, len(values)):
    out[i] = np.mean(values[i - window + 1:i + 1])
  return out


def eval_curve(rows: list, key: str) -> tuple[np.ndarray, np.ndarray]:
  """Steps and values of an eval metric from metrics rows."""
  points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
  if not points:
    return np.zeros(0, int), np.zeros(0)
  steps, values = zip(*points)
  return np.asarray(steps), np.asarray(values, float)


def mean_curve(per_seed: list, key: str) -> tuple[np.ndarray, np.ndarray]:
  """Average an eval metric over seeds, at the steps every seed evaluated."""
  curves = [eval_curve(rows, key) for rows in per_seed]
  length = min(len(c[0]) for c in curves)
  return curves[0][0][:length], np.mean([c[1][:length] for c in curves], axis=0)


def first_step_reaching(steps: np.ndarray, values: np.ndarray, target: float) -> float:
  """First step whose smoothed value reaches `target`, or inf if none does."""
  smoothed = smooth(values)
  hits = np.flatnonzero(np.nan_to_num(smoothed, nan=-np.inf) >= target - 1e-12)
  return float(steps[hits[0]]) if hits.size else float("inf")


def step_ratio(full_runs: list, arm_runs: list, key: str) -> tuple[float, float, float, float]:
  """(R*, full's steps to R*, the arm's steps to R*, ratio) from seed-mean curves.

  R* is the best smoothed value of full-pool GRPO's seed-mean curve, so the
  full pool reaches it by construction. The ratio is full's steps over the
  arm's: above 1 is faster than the full pool, 0 means never reached.
  """
  steps, values = mean_curve(full_runs, key)
  target = float(np.nanmax(smooth(values)))
  full_steps = first_step_reaching(steps, values, target)
  arm_steps = first_step_reaching(*mean_curve(arm_runs, key), target)
  return target, full_steps, arm_steps, full_steps / arm_steps


def bootstrap_ratio(full_runs: list, arm_runs: list, key: str, draws: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
  """Percentile 95% interval of the step ratio, resampling each arm's seeds independently."""
  if len(full_runs) < 2 or len(arm_runs) < 2:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  ratios = []
  for _ in range(draws):
    full = [full_runs[i] for i in rng.integers(0, len(full_runs), len(full_runs))]
    arm = [arm_runs[i] for i in rng.integers(0, len(arm_runs), len(arm_runs))]
    ratios.append(step_ratio(full, arm, key)[3])
  return (float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5)))


def _last(values: np.ndarray) -> float:
  """Return the last value of a curve, or NaN for an empty one (no untargeted family)."""
  return float(values[-1]) if len(values) else float("nan")


def mean_interval(values: list) -> str:
  values = np.asarray(values, float)
  if values.size == 1:
    return f"{values[0]:.3f}"
  half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
  return f"{values.mean():.3f} ± {half:.3f}"


def _stage_seconds(workdir: pathlib.Path, arm: str, seed: int) -> list:
  path = workdir / "arms" / arm / f"seed_{seed}" / "stages.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_grpo_report(workdir: pathlib.Path, config: ml_collections.ConfigDict, rows: dict,
                      summary: dict) -> dict:
  """Write results.md and reward_vs_step.png; return the numbers of the table."""
  key = "eval/targeted"
  full = list(rows.get("full", {}).values())
  result = {"summary": summary, "arms": {}, "target_reward": float("nan")}
  for arm, per_seed in rows.items():
    runs = list(per_seed.values())
    first = {s: float(eval_curve(r, key)[1][0]) for s, r in per_seed.items()}
    stages = [st for s in per_seed for st in _stage_seconds(workdir, arm, s)]
    entry = {
        "initial_targeted": first,
        "final_targeted": {s: float(eval_curve(r, key)[1][-1]) for s, r in per_seed.items()},
        "final_untargeted": {s: _last(eval_curve(r, "eval/untargeted")[1])
                             for s, r in per_seed.items()},
        "best_smoothed_targeted": float(np.nanmax(smooth(mean_curve(runs, key)[1]))),
        "scoring_seconds_per_stage": float(np.mean([st["scoring_seconds"] for st in stages]))
        if stages else 0.0,
        "peak_rss_mib": float(max([st["peak_rss_mib"] for st in stages], default=0.0)),
    }
    if full:
      target, full_steps, arm_steps, ratio = step_ratio(full, runs, key)
      result["target_reward"] = target
      entry.update(steps_to_target=arm_steps, full_steps_to_target=full_steps, step_ratio=ratio,
                   step_ratio_interval=bootstrap_ratio(full, runs, key))
    result["arms"][arm] = entry

  target = result["target_reward"]
  lines = [
      "# CROPI study: GRPO arms on generated problems", "",
      f"Pool {summary['pool_prompts']} prompts; share with 0 < pass rate < 1 under the "
      f"behaviour policy: {summary['learnable_share']:.2f} (mean pass rate "
      f"{summary['mean_pass_rate']:.2f}). Targeted families: {config.task.targeted}. "
      f"Seeds: {config.seeds}. {config.train.steps} GRPO steps of {config.train.batch_size} "
      f"prompts x {config.grpo.group_size} samples; stages of {config.cropi.steps_per_stage} steps, "
      f"{config.cropi.select_ratio:.0%} of the pool per stage.", "",
      f"R* (best {WINDOW}-evaluation moving average of full-pool GRPO's seed-mean targeted "
      f"greedy accuracy): {target:.3f}", "",
      "| arm | first eval targeted | final targeted | best smoothed targeted | final untargeted "
      "| steps to R* | step ratio vs full (95% interval) | scoring s/stage | paper |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for arm, entry in result["arms"].items():
    steps = entry.get("steps_to_target", float("nan"))
    reach = "never" if steps == float("inf") else f"{steps:.0f}"
    low, high = entry.get("step_ratio_interval", (float("nan"), float("nan")))
    interval = "" if not np.isfinite(low) else f" ({low:.2f} to {high:.2f})"
    lines.append(
        f"| {arm} | {mean_interval(list(entry['initial_targeted'].values()))} | "
        f"{mean_interval(list(entry['final_targeted'].values()))} | "
        f"{entry['best_smoothed_targeted']:.3f} | "
        f"{mean_interval(list(entry['final_untargeted'].values()))} | {reach} | "
        f"{entry.get('step_ratio', float('nan')):.2f}{interval} | "
        f"{entry['scoring_seconds_per_stage']:.1f} | {PAPER.get(arm, '')} |")
  lines += ["", "Accuracy is greedy-decoding exact match on held-out evaluation problems, mean "
            "± 95% interval over seeds. Steps to R* are read from the seed-mean curve; the step "
            "ratio is the full pool's steps over the arm's (above 1: faster than the full pool, "
            "0: never reached), with a bootstrap interval over seeds."]
  outputs.write_text(workdir / "results.md", "\n".join(lines) + "\n")
  outputs.write_figure(workdir / "reward_vs_step.png", plot_curves(rows))
  print(f"results: {workdir / 'results.md'}\nplots: {workdir / 'reward_vs_step.png'}")
  return result


def plot_curves(rows: dict) -> Figure:
  """Targeted and untargeted accuracy against the step, mean over seeds per arm."""
  figure = Figure(figsize=(10, 4))
  FigureCanvasAgg(figure)
  for index, key in enumerate(("eval/targeted", "eval/untargeted")):
    axis = figure.add_subplot(1, 2, index + 1)
    for arm, per_seed in rows.items():
      curves = [eval_curve(r, key) for r in per_seed.values()]
      length = min(len(c[0]) for c in curves)  # 0 when the split has no untargeted family
      if length == 0:
        continue
      steps = curves[0][0][:length]
      mean = np.mean([c[1][:length] for c in curves], axis=0)
      axis.plot(steps, smooth(mean), label=arm)
    axis.set_xlabel("GRPO step")
    axis.set_ylabel(f"{key.split('/')[1]} accuracy (smoothed)")
    axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  return figure
