r"""Sweep the QSNR of INT and FP block formats over block size and rotation.

Usage:
  python -m experiments.lightquant_qsnr_sweep --out=DIR [--model_dir=DIR] \
      [--quick] [--skip_minilm] [--seed=N]

A CPU-sized version of the tensor-level study in "INT v.s. FP: A Comprehensive
Study of Fine-Grained Low-bit Quantization Formats" (Chen et al., arXiv
2510.25602, Section 5.1, Table 2 and Figure 4). The tensors are synthetic
Gaussian and Student-t matrices and the 36 linear weight matrices of
all-MiniLM-L6-v2. Each tensor is quantized along its last axis (the input
features of a weight matrix) with each of the paper's 8 formats. The block
size runs over per-channel, 256, 128, 64, 32 and 16, and every measurement
is taken with and without a 32-point random Hadamard rotation along that axis.
NV formats keep their two-level E4M3 scale at every block size.

A full run took 88 s and --quick 28 s, including start-up, on a 2-core x86-64
Linux machine with jax 0.10.2 on CPU.

Files written to --out, each through a temporary file and os.replace:
  qsnr.csv               one row per (tensor, format, block size, rotation)
  results.md             mean QSNR, INT-vs-FP win rates, crest-factor
                         statistics and the synthetic tensors against theory
  qsnr_vs_crest.png      QSNR against mean block crest factor with theory
  int_vs_fp_winrate.png  INT win rate per INT/FP pair
  run_info.json          command line, git commit, versions and wall time
"""

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np
from tqdm import tqdm

import lightquant
from lightquant import hadamard
from lightquant import theory
from experiments.data import minilm

PER_CHANNEL = lightquant.PER_CHANNEL
BLOCK_SIZES = (PER_CHANNEL, 256, 128, 64, 32, 16)
# INT format first in each pair: mxint8, mxfp8, mxint6, ..., nvint4, nvfp4.
PAPER_FORMATS = tuple(name for pair in lightquant.PAPER_PAIRS for name in pair)
# Chen et al. rotate with 32 x 32 for every format in their tensor study.
HADAMARD_SIZE = 32

SYNTHETIC_SHAPE = (512, 4096)
# The --quick shape equals the MiniLM attention matrices, so the synthetic and
# MiniLM tensors share one compiled function per configuration.
QUICK_SYNTHETIC_SHAPE = (384, 384)
STUDENT_T_DEGREES_OF_FREEDOM = (3, 5, 10)
# --quick keeps the square attention matrices (query, key, value, attention
# output) of all layers and drops the two rectangular feed-forward ones.
QUICK_MINILM_LAYERS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
)

# Encoded-to-ideal scale ratio rho of the closed-form model. The UE8M0 ceil
# scale lies between 1 and 2 times the ideal scale, and Chen et al. take 1.5.
# The NV E4M3 block scale is within a few percent of it, modeled as 1.05.
MX_THEORY = {"rho": 1.5, "scale": "ue8m0"}
NV_THEORY = {"rho": 1.05, "scale": "e4m3"}

CSV_COLUMNS = (
    "source",
    "tensor",
    "rows",
    "cols",
    "format",
    "element",
    "block_size",
    "rotated",
    "qsnr_db",
    "mean_crest_factor",
    "theory_qsnr_db",
)

SOURCE_SYNTHETIC = "synthetic"
SOURCE_MINILM = "minilm"
KIND_COLORS = {"int": "tab:blue", "fp": "tab:orange"}
SOURCE_MARKERS = {SOURCE_SYNTHETIC: "s", SOURCE_MINILM: "o"}


@dataclasses.dataclass(frozen=True)
class TensorCase:
  """One 2-D float32 tensor of the sweep, quantized along its last axis."""

  source: str  # SOURCE_SYNTHETIC or SOURCE_MINILM
  name: str
  array: np.ndarray


# ---------------------------------------------------------------------------
# Command line


class _ArgumentParser(argparse.ArgumentParser):
  """An argparse parser that reports a usage error in one line."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> _ArgumentParser:
  parser = _ArgumentParser(
      prog="python -m experiments.lightquant_qsnr_sweep",
      description=(
          "Measure the QSNR of the MX/NV INT and FP formats on synthetic "
          "tensors and MiniLM weights, by block size and Hadamard rotation."
      ),
  )
  parser.add_argument(
      "--out", required=True, type=pathlib.Path,
      help="output folder, created if missing; existing result files are replaced",
  )
  parser.add_argument(
      "--model_dir", type=pathlib.Path, default=None,
      help=(
          "folder that contains the all-MiniLM-L6-v2 model.safetensors "
          f"(default: the installed {minilm.PACKAGE_NAME} package)"
      ),
  )
  parser.add_argument(
      "--quick", action="store_true",
      help=(
          f"use {QUICK_SYNTHETIC_SHAPE[0]}x{QUICK_SYNTHETIC_SHAPE[1]} synthetic "
          "tensors and only the 24 MiniLM attention matrices (for tests)"
      ),
  )
  parser.add_argument(
      "--skip_minilm", action="store_true",
      help="sweep only the synthetic tensors",
  )
  parser.add_argument(
      "--seed", type=int, default=0,
      help="seed of the synthetic tensors and of the Hadamard signs",
  )
  return parser


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _build_parser()
  args = parser.parse_args(argv)
  if args.out.exists() and not args.out.is_dir():
    parser.error(f"invalid --out {str(args.out)!r}: it exists and is not a folder")
  if args.skip_minilm and args.model_dir is not None:
    parser.error("--skip_minilm and --model_dir exclude each other; pass one")
  if not args.skip_minilm:
    try:
      args.model_dir = minilm.find_model_dir(args.model_dir)
    except FileNotFoundError as error:
      parser.error(f"{error}, or pass --skip_minilm")
  return args


# ---------------------------------------------------------------------------
# Tensors


def synthetic_tensors(shape: tuple[int, int], seed: int) -> list[TensorCase]:
  """Draw a Gaussian N(0, 1) tensor and Student-t tensors of several dof."""
  rng = np.random.default_rng(seed)
  cases = [TensorCase(SOURCE_SYNTHETIC, "gaussian",
                      rng.standard_normal(shape).astype(np.float32))]
  for dof in STUDENT_T_DEGREES_OF_FREEDOM:
    cases.append(TensorCase(SOURCE_SYNTHETIC, f"student_t{dof}",
                            rng.standard_t(dof, shape).astype(np.float32)))
  return cases


def minilm_tensors(model_dir: pathlib.Path, quick: bool) -> list[TensorCase]:
  """Load the MiniLM linear weights, [out_features, in_features] each."""
  matrices = minilm.linear_weights(minilm.load_weights(model_dir))
  if quick:
    matrices = {
        name: value for name, value in matrices.items()
        if name.endswith(QUICK_MINILM_LAYERS)
    }
  return [TensorCase(SOURCE_MINILM, name, value) for name, value in matrices.items()]


# ---------------------------------------------------------------------------
# Measurement


def sweep_format(name: str, block_size: int) -> lightquant.Format:
  """Return the registered format with only its block size changed."""
  return dataclasses.replace(lightquant.get_format(name), block_size=block_size)


def _rotate_if(x: jax.Array, signs: jax.Array | None) -> jax.Array:
  return x if signs is None else hadamard.rotate(x, signs, axis=-1)


def _make_qsnr_fn(fmt: lightquant.Format, signs: jax.Array | None) -> Callable:
  """Build a jitted x -> QSNR (dB) of `fmt` along the last axis, after the rotation.

  The QSNR is taken against the rotated tensor. The rotation is orthogonal,
  so this equals the QSNR of the unrotated reconstruction up to float32
  rounding.
  """

  def measure(x):
    x = _rotate_if(x, signs)
    return lightquant.qsnr(x, lightquant.fake_quant(x, fmt, axis=-1))

  return jax.jit(measure)


def _block_crest_factors(x: jax.Array, block_size: int) -> jax.Array:
  """Crest factor of every block along the last axis, flattened.

  lightquant.crest_factor zero-pads a ragged last block and counts the padding
  in its RMS. The quantizer's scale depends only on the block max, so here a
  ragged tail is measured over its real elements instead.
  """
  n = x.shape[-1]
  if block_size == PER_CHANNEL or n % block_size == 0:
    return lightquant.crest_factor(x, block_size, axis=-1).ravel()
  full = n - n % block_size
  parts = []
  if full:
    parts.append(lightquant.crest_factor(x[..., :full], block_size, axis=-1).ravel())
  parts.append(lightquant.crest_factor(x[..., full:], PER_CHANNEL, axis=-1).ravel())
  return jnp.concatenate(parts)


def _make_crest_fn(block_size: int, signs: jax.Array | None) -> Callable:
  """Build a jitted x -> mean block crest factor, after the rotation.

  All-zero blocks have no crest factor and are left out of the mean.
  """

  def mean_crest(x):
    return jnp.nanmean(_block_crest_factors(_rotate_if(x, signs), block_size))

  return jax.jit(mean_crest)


def theory_qsnr(fmt: lightquant.Format, kappa: float, axis_length: int) -> float:
  """Closed-form QSNR (dB) of `fmt` for Gaussian blocks of crest factor kappa.

  Per-channel blocks span the whole axis of `axis_length` elements. Returns
  NaN for a non-finite or non-positive kappa.
  """
  if not (math.isfinite(kappa) and kappa > 0):
    return math.nan
  block_size = fmt.block_size if fmt.block_size > 0 else axis_length
  params = NV_THEORY if fmt.scale_rule == "nv" else MX_THEORY
  elem = fmt.elem
  if elem.kind == "int":
    return theory.int_qsnr(kappa, elem.bits, block_size=block_size, **params)
  return theory.fp_qsnr(kappa, elem.ebits, elem.mbits, block_size=block_size,
                        **params)


def run_sweep(cases: Sequence[TensorCase], signs: jax.Array,
              progress: bool = True) -> list[dict]:
  """Measure every (tensor, format, block size, rotation); one dict per row.

  One function is jitted per (format, block size, rotation). jax.jit caches
  its compilation per input shape, so tensors of one shape share it.
  """
  rotations = {False: None, True: signs}
  device_arrays = [jnp.asarray(case.array) for case in cases]

  crest = {}  # (tensor index, block size, rotated) -> mean crest factor
  for block_size in BLOCK_SIZES:
    for rotated, rotation_signs in rotations.items():
      crest_fn = _make_crest_fn(block_size, rotation_signs)
      for index, x in enumerate(device_arrays):
        crest[index, block_size, rotated] = float(crest_fn(x))

  rows = []
  total = len(PAPER_FORMATS) * len(BLOCK_SIZES) * len(rotations) * len(cases)
  with tqdm(total=total, desc="QSNR sweep", unit="tensor", disable=not progress,
            file=sys.stderr) as bar:
    for name in PAPER_FORMATS:
      for block_size in BLOCK_SIZES:
        fmt = sweep_format(name, block_size)
        for rotated, rotation_signs in rotations.items():
          qsnr_fn = _make_qsnr_fn(fmt, rotation_signs)
          for index, (case, x) in enumerate(zip(cases, device_arrays)):
            kappa = crest[index, block_size, rotated]
            rows.append({
                "source": case.source,
                "tensor": case.name,
                "rows": case.array.shape[0],
                "cols": case.array.shape[1],
                "format": name,
                "element": fmt.element,
                "block_size": block_size,
                "rotated": int(rotated),
                "qsnr_db": float(qsnr_fn(x)),
                "mean_crest_factor": kappa,
                "theory_qsnr_db": theory_qsnr(fmt, kappa, case.array.shape[1]),
            })
            bar.update()
  return rows


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
# Report


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
    header = ["format"] + [_block_label(b) for b in BLOCK_SIZES]
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
      "The theory (lightquant.theory) assumes i.i.d. Gaussian blocks and is "
      "evaluated at the measured mean crest factor, with rho = 1.5 and a UE8M0 "
      "scale for MX and rho = 1.05 and an E4M3 scale for NV. Heavy-tailed "
      "tensors are not Gaussian, so larger gaps are expected there. Every "
      "block size is in qsnr.csv (theory_qsnr_db).",
      "",
      _markdown_table(header, body),
      "",
  ]


def _source_text(source: str) -> str:
  if source == SOURCE_MINILM:
    return "MiniLM weights"
  return "synthetic tensors (MiniLM skipped)"


def build_markdown(rows, source, settings: dict) -> str:
  """Build results.md from the measured rows."""
  tensor_count = len(_tensor_names(rows, source))
  source_text = _source_text(source)

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
      f"{HADAMARD_SIZE}-point random Hadamard rotation along that axis with "
      f"signs from jax.random.PRNGKey({settings['seed']}).",
      "- NV formats keep their two-level E4M3 scale at every block size.",
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


def build_csv(rows: Sequence[dict]) -> str:
  """Serialize the rows with CSV_COLUMNS as the header."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({
        key: f"{value:.6g}" if isinstance(value, float) else value
        for key, value in row.items()
    })
  return buffer.getvalue()


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
    kappas = [row["mean_crest_factor"] for row in selected]
    kappa_grid = np.linspace(0.9 * min(kappas), 1.1 * max(kappas), 200)

    for name in (int_name, fp_name):
      fmt = lightquant.get_format(name)
      color = KIND_COLORS[fmt.elem.kind]
      theory_curve = [theory_qsnr(fmt, float(k), block_size) for k in kappa_grid]
      ax.plot(kappa_grid, theory_curve, color=color)
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


# ---------------------------------------------------------------------------
# Output files


def _current_umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def write_atomic(path: pathlib.Path, write: Callable[[str], None]) -> None:
  """Call write(temp_path) on a temporary file next to `path`, then rename it.

  Readers see either the old file or the complete new one. mkstemp creates
  the file with mode 0600, so it gets the usual umask-based mode before the
  rename.
  """
  fd, temp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=".tmp")
  os.close(fd)
  try:
    write(temp_path)
    os.chmod(temp_path, 0o666 & ~_current_umask())
    os.replace(temp_path, path)
  except BaseException:
    os.unlink(temp_path)
    raise


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  write_atomic(path, lambda temp: pathlib.Path(temp).write_text(text, encoding="utf-8"))


def write_figure_atomic(path: pathlib.Path, figure: Figure) -> None:
  FigureCanvasAgg(figure)
  write_atomic(path, lambda temp: figure.savefig(temp, format="png", dpi=120))


def _git_commit() -> tuple[str | None, bool | None]:
  """Return (commit hash, whether the work tree has changes), or Nones."""
  repo_root = pathlib.Path(__file__).resolve().parent.parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root,
                            capture_output=True, text=True, check=True,
                            timeout=30).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo_root,
                            capture_output=True, text=True, check=True,
                            timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return None, None
  return commit, bool(status.strip())


def run_info(argv: Sequence[str], args: argparse.Namespace, wall_time_s: float,
             counts: dict) -> dict:
  """Describe the run: command line, code version, software and hardware."""
  commit, dirty = _git_commit()
  return {
      "command": shlex.join(["python", "-m", "experiments.lightquant_qsnr_sweep",
                             *argv]),
      "git_commit": commit,
      "git_dirty": dirty,
      "jax_version": jax.__version__,
      "jax_backend": jax.default_backend(),
      "devices": [str(device) for device in jax.devices()],
      "python_version": platform.python_version(),
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "wall_time_s": round(wall_time_s, 1),
      "quick": args.quick,
      "seed": args.seed,
      "model_dir": None if args.model_dir is None else str(args.model_dir),
      **counts,
  }


# ---------------------------------------------------------------------------
# Entry point


def _print_summary(rows, source, source_text, out: pathlib.Path, wall_time_s: float):
  print(f"Wrote {out / 'results.md'} and {out / 'qsnr.csv'}")
  print(f"Plots: {out / 'qsnr_vs_crest.png'}, {out / 'int_vs_fp_winrate.png'}")
  print(f"Mean QSNR (dB) on {source_text}, INT / FP, and INT win rate:")
  for int_name, fp_name in lightquant.PAPER_PAIRS:
    block_size = _native_block(int_name)
    parts = []
    for rotated, label in ((0, "no rotation"), (1, "RHT")):
      stats = pair_stats(rows, source, int_name, fp_name, block_size, rotated)
      parts.append(f"{label} {stats['int_mean']:.2f} / {stats['fp_mean']:.2f}, "
                   f"INT wins {_percent(stats['int_win_rate'])}")
    print(f"  {_pair_label(int_name, fp_name)} (block {block_size}): {'; '.join(parts)}")
  medians = []
  for block_size in (PER_CHANNEL, 32, 16):
    plain = crest_stats(rows, source, block_size, 0)["median"]
    rotated = crest_stats(rows, source, block_size, 1)["median"]
    medians.append(f"{_block_label(block_size)} {plain:.2f} / {rotated:.2f}")
  print(f"Median crest factor, no rotation / RHT: {', '.join(medians)}")
  print(f"Wall time: {wall_time_s:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
  """Run the sweep and write its files; see the module docstring."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = _parse_args(argv)
  start = time.perf_counter()
  out = args.out
  out.mkdir(parents=True, exist_ok=True)

  shape = QUICK_SYNTHETIC_SHAPE if args.quick else SYNTHETIC_SHAPE
  cases = synthetic_tensors(shape, args.seed)
  minilm_cases = [] if args.skip_minilm else minilm_tensors(args.model_dir, args.quick)
  cases += minilm_cases
  signs = hadamard.random_signs(jax.random.PRNGKey(args.seed), HADAMARD_SIZE)
  rows = run_sweep(cases, signs)

  source = SOURCE_MINILM if minilm_cases else SOURCE_SYNTHETIC
  source_text = _source_text(source)
  settings = {"synthetic_shape": f"{shape[0]}x{shape[1]}", "seed": args.seed,
              "minilm_count": len(minilm_cases)}
  write_text_atomic(out / "qsnr.csv", build_csv(rows))
  write_text_atomic(out / "results.md", build_markdown(rows, source, settings))
  write_figure_atomic(out / "qsnr_vs_crest.png", plot_qsnr_vs_crest(rows))
  write_figure_atomic(out / "int_vs_fp_winrate.png",
                      plot_int_win_rate(rows, source, source_text))

  wall_time_s = time.perf_counter() - start
  counts = {"synthetic_tensors": len(cases) - len(minilm_cases),
            "minilm_tensors": len(minilm_cases), "csv_rows": len(rows)}
  info = run_info(argv, args, wall_time_s, counts)
  write_text_atomic(out / "run_info.json", json.dumps(info, indent=2) + "\n")
  _print_summary(rows, source, source_text, out, wall_time_s)
  return 0


if __name__ == "__main__":
  sys.exit(main())
