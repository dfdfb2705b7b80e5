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


def smooth(values: np.ndarray, window: int = 3) -> np.ndarray:
  """Trailing moving average over `window` evaluations (shorter at the start)."""
  values = np.asarray(values, float)
  out = np.empty_like(values)
  for i in range(len(values)):
    out[i] = np.mean(values[max(0, i - window + 1):i + 1])
  return out


def eval_curve(rows: list, key: str) -> tuple[np.ndarray, np.ndarray]:
  """Steps and values of an eval metric from metrics rows."""
  points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
  if not points:
    return np.zeros(0, int), np.zeros(0)
  steps, values = zip(*points)
  return np.asarray(steps), np.asarray(values, float)


def first_step_reaching(steps: np.ndarray, values: np.ndarray, target: float) -> float:
  """First step whose smoothed value reaches `target`, or inf if none does."""
  hits = np.flatnonzero(smooth(values) >= target - 1e-12)
  return float(steps[hits[0]]) if hits.size else float("inf")


def bootstrap_interval(samples: list, statistic, draws: int = 2000, seed: int = 0) -> tuple:
  """Percentile 95% interval of `statistic` over resampled seeds."""
  samples = list(samples)
  if len(samples) < 2:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  values = [statistic([samples[i] for i in rng.integers(0, len(samples), len(samples))])
            for _ in range(draws)]
  values = np.asarray([v for v in values if np.isfinite(v)])
  if values.size == 0:
    return (float("nan"), float("nan"))
  return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


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
  """Write results.md, reward_vs_step.png and return the numbers of the table."""
  key = "eval/targeted"
  full = rows.get("full", {})
  target = float("nan")
  if full:
    # R*: the best smoothed targeted reward of the full-pool run, averaged over seeds.
    target = float(np.mean([np.max(smooth(eval_curve(r, key)[1])) for r in full.values()]))
  result = {"target_reward": target, "summary": summary, "arms": {}}
  for arm, per_seed in rows.items():
    reach = {s: first_step_reaching(*eval_curve(r, key), target) for s, r in per_seed.items()}
    finals = {s: eval_curve(r, key)[1][-1] for s, r in per_seed.items()}
    untargeted = {s: eval_curve(r, "eval/untargeted")[1][-1] for s, r in per_seed.items()}
    stages = [st for s in per_seed for st in _stage_seconds(workdir, arm, s)]
    result["arms"][arm] = {
        "steps_to_target": reach, "final_targeted": finals, "final_untargeted": untargeted,
        "scoring_seconds_per_stage": float(np.mean([st["scoring_seconds"] for st in stages]))
        if stages else 0.0,
        "peak_rss_mib": float(max([st["peak_rss_mib"] for st in stages], default=0.0)),
    }
  seeds_full = result["arms"].get("full", {}).get("steps_to_target", {})
  for arm, entry in result["arms"].items():
    pairs = [(seeds_full.get(s, float("nan")), v) for s, v in entry["steps_to_target"].items()]

    def ratio(sample):
      full_steps = np.mean([p[0] for p in sample])
      arm_steps = np.mean([p[1] for p in sample])
      if not np.isfinite(full_steps):
        return float("nan")
      return full_steps / arm_steps if arm_steps > 0 else float("nan")  # never reached: 0

    entry["step_ratio"] = ratio(pairs) if pairs else float("nan")
    entry["step_ratio_interval"] = bootstrap_interval(pairs, ratio)

  lines = [
      "# CROPI study: GRPO arms on generated problems", "",
      f"Pool {summary['pool_prompts']} prompts; share with 0 < pass rate < 1 under the "
      f"behaviour policy: {summary['learnable_share']:.2f} (mean pass rate "
      f"{summary['mean_pass_rate']:.2f}). Targeted families: {config.task.targeted}. "
      f"Seeds: {config.seeds}. {config.train.steps} GRPO steps of {config.train.batch_size} "
      f"prompts x {config.grpo.group_size} samples; stages of {config.cropi.steps_per_stage} steps, "
      f"{config.cropi.select_ratio:.0%} of the pool per stage.", "",
      f"R* (best smoothed targeted greedy accuracy of full-pool GRPO): {target:.3f}", "",
      "| arm | final targeted | final untargeted | steps to R* (per seed) | step ratio vs full "
      "(95% interval) | scoring s/stage | paper |",
      "|---|---|---|---|---|---|---|",
  ]
  for arm, entry in result["arms"].items():
    reach = ", ".join("never" if not np.isfinite(v) else str(int(v))
                      for v in entry["steps_to_target"].values())
    low, high = entry["step_ratio_interval"]
    interval = "" if not np.isfinite(low) else f" ({low:.2f} to {high:.2f})"
    lines.append(
        f"| {arm} | {mean_interval(list(entry['final_targeted'].values()))} | "
        f"{mean_interval(list(entry['final_untargeted'].values()))} | {reach} | "
        f"{entry['step_ratio']:.2f}{interval} | {entry['scoring_seconds_per_stage']:.1f} | "
        f"{PAPER.get(arm, '')} |")
  lines += ["", "Accuracy is greedy-decoding exact match on held-out evaluation problems. "
            "Step ratio: the full-pool run's mean steps to R* divided by the arm's; above 1 means "
            "the arm gets there in fewer steps. An arm that never reaches R* has ratio 0."]
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
      length = min(len(c[0]) for c in curves)
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
