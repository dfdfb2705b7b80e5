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
