"""Markdown tables, PNG plots and a console summary of the QSNR sweep rows.

The input is the list of row dicts that lightquant_qsnr_sweep.run_sweep
returns, one per (tensor, format, block size, rotation), with the
lightquant_qsnr_sweep.CSV_COLUMNS keys. Every function here expects the full
grid of BLOCK_SIZES x PAPER_FORMATS x rotation off/on for each tensor, and
raises KeyError when a configuration is missing.
"""

import math
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np

import lightquant
from lightquant import theory

# The sweep grid and the tensor sources. They live here, not in
# lightquant_qsnr_sweep, because the sweep imports this module and the tables
# lay out exactly this grid.
PER_CHANNEL = lightquant.PER_CHANNEL
BLOCK_SIZES = (PER_CHANNEL, 256, 128, 64, 32, 16)
# INT format first in each pair: mxint8, mxfp8, mxint6, ..., nvint4, nvfp4.
PAPER_FORMATS = tuple(name for pair in lightquant.PAPER_PAIRS for name in pair)
SOURCE_SYNTHETIC = "synthetic"
SOURCE_MINILM = "minilm"

KIND_COLORS = {"int": "tab:blue", "fp": "tab:orange"}
SOURCE_MARKERS = {SOURCE_SYNTHETIC: "s", SOURCE_MINILM: "o"}
# Block sizes of the median crest factors in the console summary.
SUMMARY_CREST_BLOCK_SIZES = (PER_CHANNEL, 32, 16)


# ---------------------------------------------------------------------------
# Aggregation


def _native_block(name: str) -> int:
  """Return the format's registered block size: 32 for MX, 16 for NV."""
  return lightquant.get_format(name).block_size


def _block_label(block_size: int) -> str:
  return "per-channel" if block_size == PER_CHANNEL else str(block_size)


def _pair_label(int_name: str, fp_name: str) -> str:
  return f"{int_name.upper()} vs {fp_name.upper()}"


def _index_rows(rows: Sequence[dict], source: str) -> dict:
  """Map (tensor, format, block size, rotated) -> row for one source."""
  return {
      (row["tensor"], row["format"], row["block_size"], row["rotated"]): row
      for row in rows
      if row["source"] == source
  }


def _tensor_names(rows: Sequence[dict], source: str) -> list[str]:
  return list(dict.fromkeys(row["tensor"] for row in rows if row["source"] == source))


def mean_qsnr(rows, source, name, block_size, rotated) -> float:
  """Mean QSNR in dB of one configuration over the tensors of `source`."""
  index = _index_rows(rows, source)
  values = [index[tensor, name, block_size, rotated]["qsnr_db"]
            for tensor in _tensor_names(rows, source)]
  return float(np.mean(values))


def pair_stats(rows, source, int_name, fp_name, block_size, rotated) -> dict:
  """INT and FP mean QSNR and the share of tensors where INT has the higher QSNR."""
  index = _index_rows(rows, source)
  int_values, fp_values = [], []
  for tensor in _tensor_names(rows, source):
    int_values.append(index[tensor, int_name, block_size, rotated]["qsnr_db"])
    fp_values.append(index[tensor, fp_name, block_size, rotated]["qsnr_db"])
  int_values, fp_values = np.array(int_values), np.array(fp_values)
  return {
      "int_mean": float(int_values.mean()),
      "fp_mean": float(fp_values.mean()),
      "int_win_rate": float(np.mean(int_values > fp_values)),
  }


def crest_stats(rows, source, block_size, rotated) -> dict:
  """Min, quartiles and max of the per-tensor mean crest factor."""
  index = _index_rows(rows, source)
  values = [index[tensor, PAPER_FORMATS[0], block_size, rotated]["mean_crest_factor"]
            for tensor in _tensor_names(rows, source)]
  quantiles = np.percentile(values, [0, 25, 50, 75, 100])
  return dict(zip(("min", "q1", "median", "q3", "max"), map(float, quantiles)))


# ---------------------------------------------------------------------------
# Markdown


def _markdown_table(header: Sequence[str], body: Sequence[Sequence]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
  return "\n".join(lines)


def _db(value: float) -> str:
  return f"{value:.2f}"


def _percent(value: float) -> str:
  return f"{100 * value:.1f} %"


def _mean_qsnr_section(rows, source, source_text) -> list[str]:
  lines = [f"## Mean QSNR (dB) on {source_text}", ""]
  for rotated, title in ((0, "Without rotation"), (1, "With the random Hadamard rotation")):
    header = ["format \\ block size"] + [_block_label(b) for b in BLOCK_SIZES]
    body = [[name.upper()] + [_db(mean_qsnr(rows, source, name, b, rotated))
                              for b in BLOCK_SIZES]
            for name in PAPER_FORMATS]
    lines += [f"{title}:", "", _markdown_table(header, body), ""]
  return lines


def _pair_row(rows, source, int_name, fp_name, block_size) -> list[str]:
  plain = pair_stats(rows, source, int_name, fp_name, block_size, 0)
  rotated = pair_stats(rows, source, int_name, fp_name, block_size, 1)
  return [_pair_label(int_name, fp_name), _block_label(block_size),
          _db(plain["fp_mean"]), _db(plain["int_mean"]), _percent(plain["int_win_rate"]),
          _db(rotated["fp_mean"]), _db(rotated["int_mean"]),
          _percent(rotated["int_win_rate"])]


def _pair_section(rows, source, source_text, tensor_count) -> list[str]:
  header = ["pair", "block", "FP mean", "INT mean", "INT wins",
            "RHT FP mean", "RHT INT mean", "RHT INT wins"]
  native = [_pair_row(rows, source, i, f, _native_block(i))
            for i, f in lightquant.PAPER_PAIRS]
  every = [_pair_row(rows, source, i, f, b)
           for i, f in lightquant.PAPER_PAIRS for b in BLOCK_SIZES]
  return [
      f"## INT vs FP on {source_text}",
      "",
      f"Mean QSNR in dB over the {tensor_count} tensors, and the share of "
      "tensors where the INT format has the higher QSNR. RHT columns use the "
      "random Hadamard rotation.",
      "",
      "At the registered block size (32 for MX, 16 for NV):",
      "",
      _markdown_table(header, native),
      "",
      "At every block size:",
      "",
      _markdown_table(header, every),
      "",
  ]


def _crest_section(rows, source, source_text) -> list[str]:
  keys = ("min", "q1", "median", "q3", "max")
  header = (["block", "min", "Q1", "median", "Q3", "max"]
            + ["RHT " + key for key in ("min", "Q1", "median", "Q3", "max")])
  body = []
  for block_size in BLOCK_SIZES:
    plain = crest_stats(rows, source, block_size, 0)
    rotated = crest_stats(rows, source, block_size, 1)
    body.append([_block_label(block_size)]
                + [f"{plain[key]:.2f}" for key in keys]
                + [f"{rotated[key]:.2f}" for key in keys])
  return [
      f"## Crest factor statistics on {source_text}",
      "",
      "Each tensor's crest factor max|x| / RMS(x) is averaged over its blocks; "
      "the columns are quantiles of that mean over the tensors.",
      "",
      _markdown_table(header, body),
      "",
  ]


def _theory_section(rows) -> list[str]:
  index = _index_rows(rows, SOURCE_SYNTHETIC)
  header = ["tensor", "format", "block", "rotation", "mean crest factor",
            "measured dB", "theory dB", "measured - theory"]
  body = []
  for tensor in _tensor_names(rows, SOURCE_SYNTHETIC):
    for name in PAPER_FORMATS:
      block_size = _native_block(name)
      for rotated in (0, 1):
        row = index[tensor, name, block_size, rotated]
        body.append([tensor, name.upper(), block_size, "RHT" if rotated else "none",
                     f"{row['mean_crest_factor']:.3f}", _db(row["qsnr_db"]),
                     _db(row["theory_qsnr_db"]),
                     f"{row['qsnr_db'] - row['theory_qsnr_db']:+.2f}"])
  return [
      "## Synthetic tensors against the closed-form theory",
      "",
      "The theory (lightquant.theory.format_qsnr) assumes i.i.d. Gaussian blocks and is "
      "evaluated at the measured mean crest factor, with rho = 1.5 and a UE8M0 "
      "scale for MX and rho = 1.05 and an E4M3 scale for NV. Heavy-tailed "
      "tensors are not Gaussian, so larger gaps are expected there. Every "
      "block size is in qsnr.csv (theory_qsnr_db).",
      "",
      _markdown_table(header, body),
      "",
  ]


def source_description(source: str) -> str:
  """Name the tensors that the headline tables of `source` average over."""
  if source == SOURCE_MINILM:
    return "MiniLM weights"
  return "synthetic tensors (MiniLM skipped)"


def build_markdown(rows, source, settings: dict) -> str:
  """Build results.md from the measured rows.

  `source` selects the tensors of the headline tables. `settings` has the keys
  synthetic_shape (text such as "512x4096"), seed, minilm_count and
  hadamard_size.
  """
  tensor_count = len(_tensor_names(rows, source))
  source_text = source_description(source)

  synthetic = ", ".join(_tensor_names(rows, SOURCE_SYNTHETIC))
  if settings["minilm_count"]:
    minilm_line = (f"- MiniLM: {settings['minilm_count']} linear weight matrices "
                   "of all-MiniLM-L6-v2, [out_features, in_features].")
  else:
    minilm_line = "- MiniLM: skipped (--skip_minilm)."

  lines = [
      "# QSNR of INT and FP block formats",
      "",
      f"- Synthetic tensors ({settings['synthetic_shape']}, seed "
      f"{settings['seed']}): {synthetic}.",
      minilm_line,
      "- Every tensor is quantized along its last axis. RHT is a "
      f"{settings['hadamard_size']}-point random Hadamard rotation along that "
      f"axis with signs from jax.random.PRNGKey({settings['seed']}).",
      "- MX formats use the UE8M0 scale rounded up (the ceil rule) at every block "
      "size, per-channel included; NV formats keep their two-level E4M3 scale.",
      "- In qsnr.csv, block_size -1 means per-channel: one scale per row.",
      "- QSNR = -10 log10(||x - x_hat||^2 / ||x||^2) per tensor; means are "
      "taken over tensors in dB.",
      "",
  ]
  lines += _mean_qsnr_section(rows, source, source_text)
  lines += _pair_section(rows, source, source_text, tensor_count)
  lines += _crest_section(rows, source, source_text)
  lines += _theory_section(rows)
  lines += [
      "## Plots",
      "",
      "- [QSNR against crest factor](qsnr_vs_crest.png)",
      "- [INT win rate per pair](int_vs_fp_winrate.png)",
      "",
  ]
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Plots


def _crest_plot_legend_handles() -> list[Line2D]:
  """Build the legend shared by every panel: color = kind, marker = source."""
  return [
      Line2D([], [], color=KIND_COLORS["int"], label="INT format"),
      Line2D([], [], color=KIND_COLORS["fp"], label="FP format"),
      Line2D([], [], color="black", label="theory at that crest factor"),
      Line2D([], [], color="black", marker=SOURCE_MARKERS[SOURCE_SYNTHETIC],
             linestyle="none", fillstyle="none", label="synthetic tensor"),
      Line2D([], [], color="black", marker=SOURCE_MARKERS[SOURCE_MINILM],
             linestyle="none", fillstyle="none", label="MiniLM weight"),
      Line2D([], [], color="black", marker="o", linestyle="none",
             label="filled marker: with rotation"),
  ]


def plot_qsnr_vs_crest(rows: Sequence[dict]) -> Figure:
  """Plot QSNR against mean crest factor per pair at the registered block size."""
  figure = Figure(figsize=(12, 9.5), layout="constrained")
  axes = figure.subplots(2, 2).ravel()

  for ax, (int_name, fp_name) in zip(axes, lightquant.PAPER_PAIRS):
    block_size = _native_block(int_name)
    selected = [row for row in rows
                if row["format"] in (int_name, fp_name) and row["block_size"] == block_size]
    # An all-zero tensor has a NaN crest factor, which the theory rejects.
    kappas = [row["mean_crest_factor"] for row in selected
              if math.isfinite(row["mean_crest_factor"])]
    kappa_grid = np.linspace(0.9 * min(kappas, default=1.0),
                             1.1 * max(kappas, default=1.0), 200)

    for name in (int_name, fp_name):
      fmt = lightquant.get_format(name)
      color = KIND_COLORS[fmt.elem.kind]
      ax.plot(kappa_grid, theory.format_qsnr(fmt, kappa_grid), color=color)
      for row in selected:
        if row["format"] != name:
          continue
        ax.scatter(row["mean_crest_factor"], row["qsnr_db"],
                   marker=SOURCE_MARKERS[row["source"]], s=24,
                   facecolors=color if row["rotated"] else "none", edgecolors=color)

    ax.set_title(f"{_pair_label(int_name, fp_name)}, block {block_size}")
    ax.set_xlabel("mean block crest factor")
    ax.set_ylabel("QSNR (dB)")
    ax.grid(alpha=0.3)
  figure.legend(handles=_crest_plot_legend_handles(), loc="outside lower center",
                ncols=3)
  figure.suptitle("Measured QSNR (markers) and closed-form theory (lines)")
  return figure


def plot_int_win_rate(rows: Sequence[dict], source: str, source_text: str) -> Figure:
  """Plot the INT win rate per pair as bars, with and without rotation."""
  figure = Figure(figsize=(8, 5), layout="constrained")
  ax = figure.subplots()
  positions = np.arange(len(lightquant.PAPER_PAIRS))
  width = 0.38

  for offset, rotated, label in ((-width / 2, 0, "no rotation"),
                                 (width / 2, 1, "random Hadamard rotation")):
    rates = [100 * pair_stats(rows, source, i, f, _native_block(i), rotated)["int_win_rate"]
             for i, f in lightquant.PAPER_PAIRS]
    bars = ax.bar(positions + offset, rates, width, label=label)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)

  ax.set_xticks(positions, [f"{_pair_label(i, f)}\nblock {_native_block(i)}"
                            for i, f in lightquant.PAPER_PAIRS])
  ax.set_ylim(0, 110)
  ax.set_ylabel("INT win rate (% of tensors)")
  ax.set_title(f"INT win rate over FP on {source_text}")
  ax.legend()
  return figure


def summary_lines(rows: Sequence[dict], source: str) -> list[str]:
  """Build the console summary lines of the headline numbers.

  The lines give the INT/FP pairs at the registered block size and the median
  crest factors, each without and with the rotation.
  """
  lines = [f"Mean QSNR (dB) on {source_description(source)}, INT / FP, "
           "and INT win rate:"]
  for int_name, fp_name in lightquant.PAPER_PAIRS:
    block_size = _native_block(int_name)
    parts = []
    for rotated, label in ((0, "no rotation"), (1, "RHT")):
      stats = pair_stats(rows, source, int_name, fp_name, block_size, rotated)
      parts.append(f"{label} {stats['int_mean']:.2f} / {stats['fp_mean']:.2f}, "
                   f"INT wins {_percent(stats['int_win_rate'])}")
    lines.append(f"  {_pair_label(int_name, fp_name)} (block {block_size}): "
                 f"{'; '.join(parts)}")

  medians = []
  for block_size in SUMMARY_CREST_BLOCK_SIZES:
    plain = crest_stats(rows, source, block_size, 0)["median"]
    rotated = crest_stats(rows, source, block_size, 1)["median"]
    medians.append(f"{_block_label(block_size)} {plain:.2f} / {rotated:.2f}")
  lines.append(f"Median crest factor, no rotation / RHT: {', '.join(medians)}")
  return lines
