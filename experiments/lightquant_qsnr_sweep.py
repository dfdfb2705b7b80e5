r"""Sweep the QSNR of INT and FP block formats over block size and rotation.

Usage:
  python -m experiments.lightquant_qsnr_sweep --out=DIR [--model_dir=DIR] \
      [--quick] [--skip_minilm] [--seed=N] [--formats=A,B] [--block_sizes=N,M]

A CPU-sized version of the tensor-level study in "INT v.s. FP: A Comprehensive
Study of Fine-Grained Low-bit Quantization Formats" (Chen et al., arXiv
2510.25602, Section 5.1, Table 2 and Figure 4). The tensors are synthetic
Gaussian and Student-t matrices and the 36 linear weight matrices of
all-MiniLM-L6-v2. Each tensor is quantized along its last axis (the input
features of a weight matrix) with each of the paper's 8 formats. The block
size runs over per-channel, 256, 128, 64, 32 and 16, and every measurement
is taken with and without a 32-point random Hadamard rotation along that axis.
NV formats keep their two-level E4M3 scale at every block size.

A full run took 48 s and --quick 15 s, including start-up, on a 2-core x86-64
Linux machine with jax 0.10.2 on CPU.

This module contains the flags, the tensors and the measurement loop.
lightquant_qsnr_report builds the Markdown tables and plots from the rows, and
experiments.outputs writes the files and the run record.

Files written to --out, each through a temporary file and os.replace:
  qsnr.csv               one row per (tensor, format, block size, rotation)
  results.md             mean QSNR, INT-vs-FP win rates, crest-factor
                         statistics and the synthetic tensors against theory
  qsnr_vs_crest.png      QSNR against mean block crest factor with theory
  int_vs_fp_winrate.png  INT win rate per INT/FP pair
  run_info.json          command line, git commit, versions and wall time

--formats and --block_sizes sweep a subset or other block sizes. The win
rates, crest-factor and theory tables and both plots need the default grid,
so a run on another grid writes only the mean QSNR tables in results.md, and
removes plots of an earlier run from --out.
"""

import argparse
import csv
import dataclasses
import io
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import lightquant
from lightquant import hadamard
from lightquant import theory
from experiments import lightquant_qsnr_report as report
from experiments import outputs
from experiments.data import minilm
from experiments.lightquant_qsnr_report import BLOCK_SIZES
from experiments.lightquant_qsnr_report import PAPER_FORMATS
from experiments.lightquant_qsnr_report import SOURCE_MINILM
from experiments.lightquant_qsnr_report import SOURCE_SYNTHETIC

# Module path for `python -m`, used in the usage line and in run_info.json.
MODULE = "experiments.lightquant_qsnr_sweep"
# Chen et al. rotate with 32 x 32 for every format in their tensor study.
HADAMARD_SIZE = 32
PER_CHANNEL = lightquant.PER_CHANNEL
# The --formats and --block_sizes defaults: the grid the report's tables lay out.
DEFAULT_FORMATS = ",".join(PAPER_FORMATS)
DEFAULT_BLOCK_SIZES = ",".join(map(str, BLOCK_SIZES))
PLOT_FILES = ("qsnr_vs_crest.png", "int_vs_fp_winrate.png")

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


@dataclasses.dataclass(frozen=True)
class TensorCase:
  """One 2-D float32 tensor of the sweep, quantized along its last axis."""

  source: str  # SOURCE_SYNTHETIC or SOURCE_MINILM
  name: str
  array: np.ndarray


# ---------------------------------------------------------------------------
# Command line


def parse_formats(text: str) -> tuple[str, ...]:
  """Parse comma-separated format names of PAPER_FORMATS; raises ValueError.

  Repeated names count once, and the order of the text is kept.
  """
  names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
  unknown = [name for name in names if name not in PAPER_FORMATS]
  if not names:
    raise ValueError(f"the formats list is empty; valid formats: {', '.join(PAPER_FORMATS)}")
  if unknown:
    raise ValueError(f"invalid formats {', '.join(map(repr, unknown))}; valid formats: "
                     f"{', '.join(PAPER_FORMATS)}")
  return tuple(names)


def parse_block_sizes(text: str) -> tuple[int, ...]:
  """Parse comma-separated block sizes (positive ints, or -1 for per-channel); raises ValueError.

  Repeated sizes count once, and the order of the text is kept.
  """
  entries = [entry.strip() for entry in text.split(",") if entry.strip()]
  sizes, bad = [], []
  for entry in entries:
    try:
      size = int(entry)
    except ValueError:
      bad.append(entry)
      continue
    if size > 0 or size == PER_CHANNEL:
      sizes.append(size)
    else:
      bad.append(entry)
  valid = f"positive ints and {PER_CHANNEL} (per-channel), such as {DEFAULT_BLOCK_SIZES}"
  if not entries:
    raise ValueError(f"the block sizes list is empty; valid values: {valid}")
  if bad:
    raise ValueError(f"invalid block sizes {', '.join(map(repr, bad))}; valid values: {valid}")
  return tuple(dict.fromkeys(sizes))


class _ArgumentParser(argparse.ArgumentParser):
  """An argparse parser that reports a usage error in one line."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> _ArgumentParser:
  parser = _ArgumentParser(
      prog=f"python -m {MODULE}",
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
  parser.add_argument(
      "--formats", default=DEFAULT_FORMATS,
      help=f"comma-separated formats to sweep (default: the paper's 8, {DEFAULT_FORMATS})",
  )
  parser.add_argument(
      "--block_sizes", default=DEFAULT_BLOCK_SIZES,
      help=f"comma-separated block sizes, -1 for per-channel (default: {DEFAULT_BLOCK_SIZES})",
  )
  return parser


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _build_parser()
  args = parser.parse_args(argv)
  if not str(args.out).strip() or args.out == pathlib.Path("."):
    parser.error(f"invalid --out {str(args.out)!r}: name a results folder such as results/qsnr_sweep")
  if args.seed < 0:
    parser.error(f"invalid --seed {args.seed}: expected a non-negative integer")
  if args.out.exists() and not args.out.is_dir():
    parser.error(f"invalid --out {str(args.out)!r}: it exists and is not a folder")
  if args.skip_minilm and args.model_dir is not None:
    parser.error("--skip_minilm and --model_dir exclude each other; pass one")
  try:
    args.formats = parse_formats(args.formats)
    args.block_sizes = parse_block_sizes(args.block_sizes)
  except ValueError as error:
    parser.error(str(error))
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


def _make_crest_fn(block_size: int, signs: jax.Array | None) -> Callable:
  """Build a jitted x -> mean block crest factor, after the rotation.

  A ragged last block counts as one block, with its RMS over its real
  elements. All-zero blocks have no crest factor and are left out of the mean.
  """

  def mean_crest(x):
    crest = lightquant.crest_factor(_rotate_if(x, signs), block_size, axis=-1)
    return jnp.nanmean(crest)

  return jax.jit(mean_crest)


def theory_qsnr(fmt: lightquant.Format, kappa: float, axis_length: int) -> float:
  """Closed-form QSNR (dB) of `fmt` for Gaussian blocks of crest factor kappa.

  Per-channel blocks span the whole axis of `axis_length` elements. Returns
  NaN for a non-finite or non-positive kappa, such as the mean crest factor
  of an all-zero tensor, where lightquant.theory.format_qsnr raises.
  """
  if not (math.isfinite(kappa) and kappa > 0):
    return math.nan
  return float(theory.format_qsnr(fmt, kappa, axis_length=axis_length))


def run_sweep(cases: Sequence[TensorCase], signs: jax.Array, progress: bool = True,
              formats: Sequence[str] = PAPER_FORMATS,
              block_sizes: Sequence[int] = BLOCK_SIZES) -> list[dict]:
  """Measure every (tensor, format, block size, rotation); one dict per row.

  One function is jitted per (format, block size, rotation). jax.jit caches
  its compilation per input shape, so tensors of one shape share it.
  """
  rotations = {False: None, True: signs}
  device_arrays = [jnp.asarray(case.array) for case in cases]

  crest = {}  # (tensor index, block size, rotated) -> mean crest factor
  for block_size in block_sizes:
    for rotated, rotation_signs in rotations.items():
      crest_fn = _make_crest_fn(block_size, rotation_signs)
      for index, x in enumerate(device_arrays):
        crest[index, block_size, rotated] = float(crest_fn(x))

  rows = []
  total = len(formats) * len(block_sizes) * len(rotations) * len(cases)
  # Redraw at most every 30 s when stderr is a log file, not a terminal.
  interval = 0.1 if sys.stderr.isatty() else 30.0
  with tqdm(total=total, desc="QSNR sweep", unit="tensor", disable=not progress,
            file=sys.stderr, mininterval=interval) as bar:
    for name in formats:
      for block_size in block_sizes:
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
# Output


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


def _block_label(block_size: int) -> str:
  return "per-channel" if block_size == PER_CHANNEL else str(block_size)


def build_subset_markdown(rows: Sequence[dict], source: str, settings: dict,
                          formats: Sequence[str], block_sizes: Sequence[int]) -> str:
  """Build results.md of a sweep on a grid other than the default one.

  It has only the mean QSNR tables, because the report's other tables need
  the default grid. `settings` has the keys of report.build_markdown.
  """
  source_text = report.source_description(source)
  synthetic = ", ".join(dict.fromkeys(
      row["tensor"] for row in rows if row["source"] == SOURCE_SYNTHETIC))
  minilm_text = (f"{settings['minilm_count']} linear weight matrices of all-MiniLM-L6-v2"
                 if settings["minilm_count"] else "skipped (--skip_minilm)")
  lines = [
      "# QSNR of INT and FP block formats on a chosen grid",
      "",
      f"- Formats: {', '.join(name.upper() for name in formats)}. Block sizes: "
      f"{', '.join(map(_block_label, block_sizes))}.",
      f"- Synthetic tensors ({settings['synthetic_shape']}, seed {settings['seed']}): "
      f"{synthetic}. MiniLM: {minilm_text}.",
      "- Every tensor is quantized along its last axis. RHT is a "
      f"{settings['hadamard_size']}-point random Hadamard rotation along that axis.",
      "- The INT-vs-FP, crest-factor and theory tables and the plots need the "
      f"default grid (formats {DEFAULT_FORMATS}, block sizes {DEFAULT_BLOCK_SIZES}), "
      "so this run has only the mean QSNR tables. Every row is in qsnr.csv.",
      "",
      f"## Mean QSNR (dB) on {source_text}",
      "",
  ]
  header = ["format \\ block size", *map(_block_label, block_sizes)]
  for rotated, title in ((0, "Without rotation"), (1, "With the random Hadamard rotation")):
    lines += [f"{title}:", "",
              "| " + " | ".join(header) + " |",
              "|" + "|".join("---" for _ in header) + "|"]
    for name in formats:
      values = [f"{report.mean_qsnr(rows, source, name, b, rotated):.2f}" for b in block_sizes]
      lines.append("| " + " | ".join([name.upper(), *values]) + " |")
    lines.append("")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None, command: Sequence[str] | None = None) -> int:
  """Run the sweep and write its files; see the module docstring.

  Args:
    argv: the flags, sys.argv[1:] if None.
    command: the command line that run_info.json records; None records
      `python -m` this module with `argv`.
  """
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
  rows = run_sweep(cases, signs, formats=args.formats, block_sizes=args.block_sizes)
  default_grid = (set(args.formats) == set(PAPER_FORMATS)
                  and set(args.block_sizes) == set(BLOCK_SIZES))

  source = SOURCE_MINILM if minilm_cases else SOURCE_SYNTHETIC
  source_text = report.source_description(source)
  settings = {"synthetic_shape": f"{shape[0]}x{shape[1]}", "seed": args.seed,
              "minilm_count": len(minilm_cases), "hadamard_size": HADAMARD_SIZE}
  outputs.write_text(out / "qsnr.csv", build_csv(rows))
  if default_grid:
    outputs.write_text(out / "results.md", report.build_markdown(rows, source, settings))
    outputs.write_figure(out / "qsnr_vs_crest.png", report.plot_qsnr_vs_crest(rows))
    outputs.write_figure(out / "int_vs_fp_winrate.png",
                         report.plot_int_win_rate(rows, source, source_text))
  else:
    outputs.write_text(out / "results.md", build_subset_markdown(
        rows, source, settings, args.formats, args.block_sizes))
    # Plots of an earlier run in --out would not match this run's results.md.
    for name in PLOT_FILES:
      (out / name).unlink(missing_ok=True)

  wall_time_s = time.perf_counter() - start
  extra = {
      "quick": args.quick,
      "seed": args.seed,
      "model_dir": None if args.model_dir is None else str(args.model_dir),
      "synthetic_tensors": len(cases) - len(minilm_cases),
      "minilm_tensors": len(minilm_cases),
      "csv_rows": len(rows),
      "formats": list(args.formats),
      "block_sizes": list(args.block_sizes),
  }
  command = ["python", "-m", MODULE, *argv] if command is None else list(command)
  outputs.write_run_info(out, outputs.run_info(command, wall_time_s, extra))

  print(f"Wrote {out / 'results.md'} and {out / 'qsnr.csv'}")
  if default_grid:
    print(f"Plots: {out / 'qsnr_vs_crest.png'}, {out / 'int_vs_fp_winrate.png'}")
    print("\n".join(report.summary_lines(rows, source)))
  print(f"Wall time: {wall_time_s:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
