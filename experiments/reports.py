"""results.md and plots of a training run, built from its metrics.jsonl."""

import pathlib

import ml_collections
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import metrics as metrics_lib
from experiments import outputs


def plot_losses(rows: list[dict]) -> Figure:
  """Train and eval loss against step."""
  fig = Figure(figsize=(6, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for key, label in (("train/loss", "train"), ("eval/loss", "eval")):
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    if points:
      steps, values = zip(*points)
      ax.plot(steps, values, marker="o" if key.startswith("eval") else None, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats per token)")
  ax.legend()
  return fig


def write_lm_report(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                    final: dict[str, float]) -> None:
  """Write results.md (final metrics and settings) and loss.png."""
  rows = metrics_lib.MetricsLog(workdir / "metrics.jsonl").read()
  m = config.model
  lines = [
      "# Language-model run",
      "",
      f"Model: {m.variant}, L={m.num_loops}, d={m.d_model}, {m.num_layers} layers, "
      f"window {m.window}; quantization: {config.quant.format}; "
      f"{config.train.steps} steps of {config.train.batch_size} x {config.data.seq_len} tokens.",
      "",
      "| metric | value |",
      "|---|---|",
  ]
  lines += [f"| {k} | {v:.4f} |" for k, v in sorted(final.items()) if isinstance(v, float)]
  lines += ["", "![loss](loss.png)", ""]
  outputs.write_text(workdir / "results.md", "\n".join(lines))
  outputs.write_figure(workdir / "loss.png", plot_losses(rows))


def write_table_report(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                       rows: dict[str, dict]) -> None:
  """Write results.md (one row per arm beside the paper's direction) and a bar plot."""
  base = rows.get(config.reference_arm)
  lines = [
      f"# {config.title}",
      "",
      f"{config.train.steps} steps of {config.train.batch_size} x {config.data.seq_len} byte "
      f"tokens per arm, seeds {config.seeds}. Decode latency: median jitted step at batch 1 "
      f"with a {config.data.seq_len}-token cache (prefill excluded). KV bytes at context "
      f"{config.data.seq_len}, relative to the {config.reference_arm} arm.",
      "",
      "Eval loss is the mean over seeds; the spread is max - min over seeds.",
      "",
      "| arm | seeds | eval loss | spread | vs reference | decode ms/token | KV bytes (ratio) "
      "| paper's direction |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for arm, row in rows.items():
    delta = f"{row['eval/loss'] - base['eval/loss']:+.4f}" if base else "-"
    kv_ratio = f"{row['kv_bytes'] / base['kv_bytes']:.3f}" if base else "-"
    lines.append(f"| {arm} | {row['seeds']} | {row['eval/loss']:.4f} | "
                 f"{row['eval/loss_spread']:.4f} | {delta} | {row['decode_ms']:.2f} | "
                 f"{row['kv_bytes']} ({kv_ratio}) | {config.arm_notes[arm]} |")
  lines += ["", "![eval loss per arm](eval_loss.png)", ""]
  outputs.write_text(workdir / "results.md", "\n".join(lines))

  fig = Figure(figsize=(7, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  names = list(rows)
  ax.bar(names, [rows[a]["eval/loss"] for a in names])
  low = min(rows[a]["eval/loss"] for a in names)
  high = max(rows[a]["eval/loss"] for a in names)
  ax.set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
  ax.set_ylabel("eval loss (nats per byte)")
  ax.tick_params(axis="x", rotation=30)
  fig.tight_layout()
  outputs.write_figure(workdir / "eval_loss.png", fig)
