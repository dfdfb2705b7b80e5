r"""Direct-cast inference of all-MiniLM-L6-v2 in the 8 MX/NV INT and FP formats.

Usage:
  python -m experiments.lightquant_direct_cast --out=DIR [--model_dir=DIR] \
      [--quick] [--seed=N] [--formats=A,B]

The direct-cast protocol of "INT v.s. FP: A Comprehensive Study of
Fine-Grained Low-bit Quantization Formats" (Chen et al., arXiv 2510.25602,
Section 5.2) on a real pretrained model. Only the forward GEMM of every linear
layer is quantized. Its activation X and weight W get the same format, in
blocks along the contraction axis, with scales computed anew in every call and
no calibration. Each of the 8 formats runs without and with a random Hadamard
rotation of both operands along the contraction axis, of size 32 for MX
formats and 16 for NV formats. Every one of the 36 linear layers gets its own
random signs.

Measurements, each against the unquantized float32 model:
  - QSNR of the last hidden states over the real (unpadded) tokens, for the
    whole batch and per sentence;
  - cosine similarity of the L2-normalized mean-pooled sentence embeddings;
  - tensor-level QSNR of every linear layer's weight and input activation
    (from the unquantized forward pass, real tokens only), each quantized
    alone along its contraction axis;
  - crest factors (max|x| / RMS per block) of those tensors per channel and
    in blocks of 32 and 16, without and with rotation.

The paper counts INT/FP wins among 12 LLMs. This study has one small encoder
and no language-model head, so its "win" is the higher hidden-state QSNR or
the higher embedding cosine, and the per-sentence win counts show how
consistent that is.

This module contains the flags, the forward passes, the tensor measurements
and the CSV rows. lightquant_direct_cast_report computes the statistics and
builds the Markdown tables, the plot and the console summary, and
experiments.outputs writes the files and the run record.

Files written to --out, each through a temporary file and os.replace:
  results.md       INT-vs-FP tables next to the paper's numbers
  qsnr.csv         one row per (tensor, format, rotation), model outputs
                   included
  qsnr_bars.png    hidden-state and mean tensor-level QSNR per format
  run_info.json    command line, git commit, versions, settings, wall time

--formats runs a subset of the 8 formats. The INT-vs-FP, crest-factor and
paper tables and the plot need all 8, so a subset run writes only the table
of every format in results.md, skips the crest factors and removes a
qsnr_bars.png of an earlier run from --out.

A full run (64 sentences, 947 real tokens) took 41 s and --quick 26 s,
including start-up, on a 2-core x86-64 Linux machine with jax 0.10.2 on CPU
that another benchmark was loading at the same time.
"""

import argparse
import csv
import dataclasses
import io
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lightquant
from lightquant import hadamard
from experiments import lightquant_direct_cast_report as report
from experiments import outputs
from experiments.data import minilm as minilm_data
from experiments.lightquant_direct_cast_report import CREST_BLOCK_SIZES
from experiments.lightquant_direct_cast_report import MX_HADAMARD_SIZE
from experiments.lightquant_direct_cast_report import NV_HADAMARD_SIZE
from experiments.lightquant_direct_cast_report import PAPER_FORMATS
from experiments.lightquant_direct_cast_report import ROLE_ACTIVATION
from experiments.lightquant_direct_cast_report import ROLE_WEIGHT
from experiments.lightquant_direct_cast_report import hadamard_size
from experiments.lightquant_qsnr_sweep import parse_formats  # the same 8 formats
from experiments.models import minilm as minilm_model

# Module path for `python -m`, used in the usage line and in run_info.json.
MODULE = "experiments.lightquant_direct_cast"
# The --formats default: the formats the report's tables lay out.
DEFAULT_FORMATS = ",".join(PAPER_FORMATS)
PLOT_FILE = "qsnr_bars.png"

ROLE_OUTPUT = "output"
SCOPE_MODEL = "model"
SCOPE_TENSOR = "tensor"
HIDDEN_STATE = "last_hidden_state"
SENTENCE_EMBEDDING = "sentence_embedding"

# --quick: the first sentences only, and the tensor-level study limited to the
# attention projections, whose inputs and weights all have 384 columns. That
# leaves 2 tensor shapes to compile per configuration instead of 5.
QUICK_SENTENCE_COUNT = 8
QUICK_TENSOR_LAYERS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
)

# 64 English sentences on varied topics, written for this study. Their order
# is fixed, because --quick takes the first QUICK_SENTENCE_COUNT.
SENTENCES = (
    "The bakery on the corner sells out of sourdough before nine every Saturday.",
    "Jupiter's Great Red Spot is a storm larger than the whole Earth.",
    "She tuned the old piano by ear, one string at a time.",
    "Interest rates rose for the third consecutive quarter, cooling the housing market.",
    "Please remember to water the tomatoes while I am away.",
    "The committee postponed its vote until the budget figures were audited.",
    "A hash table trades memory for constant-time lookups on average.",
    "Migrating geese fly in a V formation to save energy.",
    "The museum's new wing displays pottery from the Bronze Age.",
    "He missed the last train and walked home through the quiet city.",
    "Vaccines train the immune system to recognize a pathogen before infection.",
    "Our team won the regional final after a penalty shootout.",
    "Glaciers carve U-shaped valleys as they slowly advance and retreat.",
    "The recipe calls for two cups of flour, a pinch of salt and cold butter.",
    "Why does the moon look larger when it is near the horizon?",
    "The contract becomes void if either party fails to deliver on time.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "My grandmother still writes letters with a fountain pen.",
    "The compiler rejected the program because a variable was used before assignment.",
    "Coral reefs cover a tiny fraction of the ocean floor but shelter a quarter of marine species.",
    "The orchestra rehearsed the final movement until midnight.",
    "Heavy rain flooded the underpass, and traffic was diverted for hours.",
    "A good night's sleep improves memory and concentration.",
    "The startup raised twelve million dollars to build cheaper batteries.",
    "Shakespeare wrote both tragedies and comedies for the Globe Theatre.",
    "Dogs can learn to recognize dozens of spoken words.",
    "The bridge was closed for repairs after inspectors found cracked steel beams.",
    "Quantum computers exploit superposition to explore many states at once.",
    "She finished the marathon in just under four hours.",
    "The village holds a harvest festival at the end of every September.",
    "Antibiotics do not work against viral infections such as the common cold.",
    "The printer jammed again, so the report was handed in late.",
    "Volcanic ash can ground flights across an entire continent.",
    "The chess champion sacrificed her queen to force checkmate in five moves.",
    "Fresh basil loses its aroma quickly once it is chopped.",
    "The treaty ended a war that had lasted nearly thirty years.",
    "Solar panels generate less electricity on cloudy winter days.",
    "Can you recommend a quiet hotel near the train station?",
    "The river freezes solid in January, and children skate on it.",
    "Economists disagree about whether the minimum wage reduces employment.",
    "The detective noticed that the clock in the hallway had stopped at midnight.",
    "Honeybees communicate the location of flowers with a waggle dance.",
    "Regular backups protect a company against ransomware and hardware failure.",
    "The toddler stacked the wooden blocks and knocked them down, laughing.",
    "Light from the nearest star takes more than four years to reach us.",
    "The city council approved a new bicycle lane along the waterfront.",
    "Olive oil, garlic and lemon make a simple dressing for grilled fish.",
    "The surgeon explained the risks of the operation before the patient signed.",
    "Ancient Romans built aqueducts that carried water for many kilometres.",
    "The band's second album sold more copies than the first.",
    "Earthquakes occur where tectonic plates grind against each other.",
    "I left my umbrella on the bus this morning.",
    "The library extended its opening hours during the exam period.",
    "Machine translation has improved rapidly thanks to large neural networks.",
    "A gentle breeze carried the smell of pine across the campsite.",
    "The factory switched to recycled plastic for all of its packaging.",
    "Children who read for pleasure tend to build larger vocabularies.",
    "The pilot announced that we would land twenty minutes ahead of schedule.",
    "Salt lowers the freezing point of water, which is why roads are salted in winter.",
    "The gardener pruned the roses so that they would bloom again in spring.",
    "Stock prices fell sharply after the company lowered its earnings forecast.",
    "The lighthouse keeper logged every passing ship in a leather-bound book.",
    "Wolves were reintroduced to the park, and the elk population changed its habits.",
    "The debate over daylight saving time returns every spring.",
)

CSV_COLUMNS = (
    "scope",
    "tensor",
    "role",
    "rows",
    "cols",
    "format",
    "element",
    "rotated",
    "hadamard_size",
    "qsnr_db",
    "mean_cosine",
)


@dataclasses.dataclass(frozen=True)
class TensorCase:
  """One linear layer operand, 2-D, with the contraction axis last."""

  layer: str  # e.g. "encoder.layer.0.attention.self.query"
  role: str  # ROLE_WEIGHT or ROLE_ACTIVATION
  array: np.ndarray


@dataclasses.dataclass
class ModelResult:
  """Direct-cast model outputs of one (format, rotation) against the reference."""

  hidden_qsnr_db: float  # over all real tokens of the batch
  sentence_hidden_qsnr_db: np.ndarray  # [B], over each sentence's real tokens
  embedding_qsnr_db: float  # over the [B, 384] sentence embeddings
  cosines: np.ndarray  # [B] embedding cosine similarity per sentence


# ---------------------------------------------------------------------------
# Command line


class _ArgumentParser(argparse.ArgumentParser):
  """An argparse parser that reports a usage error in one line and exits with 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> _ArgumentParser:
  parser = _ArgumentParser(
      prog=f"python -m {MODULE}",
      description=(
          "Direct-cast all-MiniLM-L6-v2 in the 8 MX/NV INT and FP formats, "
          "without and with Hadamard rotation, and compare INT with FP."
      ),
  )
  parser.add_argument(
      "--out", required=True, type=pathlib.Path,
      help="output folder, created if missing; existing result files are replaced",
  )
  parser.add_argument(
      "--model_dir", type=pathlib.Path, default=None,
      help=(
          "folder that contains the all-MiniLM-L6-v2 model.safetensors and "
          f"tokenizer.json (default: the installed {minilm_data.PACKAGE_NAME} package)"
      ),
  )
  parser.add_argument(
      "--quick", action="store_true",
      help=(
          f"use the first {QUICK_SENTENCE_COUNT} sentences and only the attention "
          "projections in the tensor-level study (for tests)"
      ),
  )
  parser.add_argument(
      "--seed", type=int, default=0,
      help="seed of the random Hadamard signs",
  )
  parser.add_argument(
      "--formats", default=DEFAULT_FORMATS,
      help=f"comma-separated formats to run (default: the paper's 8, {DEFAULT_FORMATS})",
  )
  return parser


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = _build_parser()
  args = parser.parse_args(argv)
  if not str(args.out).strip() or args.out == pathlib.Path("."):
    parser.error(f"invalid --out {str(args.out)!r}: name a results folder such as "
                 "results/direct_cast")
  if args.out.exists() and not args.out.is_dir():
    parser.error(f"invalid --out {str(args.out)!r}: it exists and is not a folder")
  if args.seed < 0:
    parser.error(f"invalid --seed {args.seed}: expected a non-negative integer")
  try:
    args.formats = parse_formats(args.formats)
  except ValueError as error:
    parser.error(str(error))
  try:
    args.model_dir = minilm_data.find_model_dir(args.model_dir)
    args.tokenizer = minilm_data.load_tokenizer(args.model_dir)
  except FileNotFoundError as error:
    parser.error(str(error))
  return args


# ---------------------------------------------------------------------------
# Direct-cast forward passes


def direct_cast_dot_generals(name: str, rotated: bool,
                             key: jax.Array) -> dict[str, Callable]:
  """Build one forward-only quantized dot_general per linear layer.

  With rotation, layer i's signs come from ``fold_in(key, i)``, so every
  layer rotates with its own random signs.
  """
  size = hadamard_size(name) if rotated else None
  config = lightquant.DotGeneralConfig.forward_only(name, size)
  return {
      layer: lightquant.make_dot_general(config, key=jax.random.fold_in(key, index))
      for index, layer in enumerate(minilm_model.linear_layer_names())
  }


def _qsnr_db(energy, error) -> np.ndarray:
  return 10.0 * (np.log10(energy) - np.log10(error))


def compare_outputs(reference_hidden: np.ndarray, hidden: np.ndarray,
                    attention_mask: np.ndarray) -> ModelResult:
  """Compare quantized last hidden states [B, T, D] with the reference ones."""
  mask = attention_mask.astype(bool)
  squared_error = np.square(hidden - reference_hidden).sum(axis=-1) * mask
  energy = np.square(reference_hidden).sum(axis=-1) * mask
  with np.errstate(divide="ignore"):
    sentence_qsnr = _qsnr_db(energy.sum(axis=1), squared_error.sum(axis=1))
    hidden_qsnr = float(_qsnr_db(energy.sum(), squared_error.sum()))

  reference_embedding = np.asarray(minilm_model.embed_hidden(reference_hidden, attention_mask))
  embedding = np.asarray(minilm_model.embed_hidden(hidden, attention_mask))
  # Both embeddings have unit L2 norm, so the dot product is the cosine.
  cosines = np.sum(reference_embedding * embedding, axis=-1)
  embedding_qsnr = float(lightquant.qsnr(reference_embedding, embedding))
  return ModelResult(hidden_qsnr, sentence_qsnr, embedding_qsnr, cosines)


def run_direct_cast(
    params, input_ids, attention_mask, reference_hidden, key: jax.Array,
    formats: Sequence[str] = PAPER_FORMATS) -> dict[tuple[str, bool], ModelResult]:
  """Run the model once per (format, rotation) and compare with the reference.

  The encoder runs eagerly: each quantized GEMM is jitted inside lightquant,
  which compiles far less than jitting the whole encoder once per format.

  NOTE: padded token rows take part in every quantized GEMM, as in a padded
  inference batch, so they can raise an NV format's per-tensor scale. Only
  real tokens enter the comparison.
  """
  results = {}
  for name in formats:
    for rotated in (False, True):
      dot_generals = direct_cast_dot_generals(name, rotated, key)
      hidden = minilm_model.encode(params, input_ids, attention_mask, dot_generals)
      results[name, rotated] = compare_outputs(
          reference_hidden, np.asarray(hidden), attention_mask)
  return results


# ---------------------------------------------------------------------------
# Tensor-level QSNR and crest factors


def collect_tensors(collected: dict, attention_mask: np.ndarray,
                    layer_names: Sequence[str]) -> list[TensorCase]:
  """Turn `encode(collect=True)` captures into 2-D tensors, real tokens only.

  Each activation [B, T, in] becomes [real tokens, in], because padded rows
  are not part of the data. Each weight stays [out, in].
  """
  mask = attention_mask.astype(bool)
  cases = []
  for layer in layer_names:
    x, w = collected[layer]
    cases.append(TensorCase(layer, ROLE_ACTIVATION, np.asarray(x)[mask]))
    cases.append(TensorCase(layer, ROLE_WEIGHT, np.asarray(w)))
  return cases


def padded_stacks(cases: Sequence[TensorCase]) -> list[tuple[list[int], jax.Array]]:
  """Stack the tensors of each column count, zero-padding rows to the longest.

  Padding lets tensors of one width share one compiled function, which saves
  more time on CPU than the extra rows cost. Zero rows change no result. An
  all-zero block quantizes to exact zeros, so it adds neither signal nor error
  to the QSNR. The NV per-tensor scale is a maximum, which zeros do not raise.
  The crest factor of an all-zero block is NaN, which the crest statistics
  drop.

  Returns:
    (tensor indices, stack [K, max rows, cols]) per column count.
  """
  groups = {}
  for index, case in enumerate(cases):
    groups.setdefault(case.array.shape[1], []).append(index)
  stacks = []
  for indices in groups.values():
    rows = max(cases[i].array.shape[0] for i in indices)
    padded = [np.pad(cases[i].array, ((0, rows - cases[i].array.shape[0]), (0, 0)))
              for i in indices]
    stacks.append((indices, jnp.asarray(np.stack(padded))))
  return stacks


def _tensor_signs(key: jax.Array, indices: Sequence[int], size: int) -> jax.Array:
  """Draw [len(indices), size] signs; tensor i gets ``fold_in(key, i)``."""
  return jnp.stack([hadamard.random_signs(jax.random.fold_in(key, i), size)
                    for i in indices])


def _make_stack_qsnr_fn(fmt: lightquant.Format, rotated: bool) -> Callable:
  """Build a jitted (stack [K, R, C], signs [K, h]) -> QSNR dB [K].

  Every tensor of the stack is rotated with its own signs (if `rotated`) and
  quantized alone, so NV formats keep a per-tensor scale per tensor. The QSNR
  is taken in the rotated basis, which equals the QSNR of the unrotated
  reconstruction up to float32 rounding, because the rotation is orthogonal.
  """

  def measure(x, signs):
    if rotated:
      x = hadamard.rotate(x, signs, axis=-1)
    return lightquant.qsnr(x, lightquant.fake_quant(x, fmt, axis=-1))

  return jax.jit(jax.vmap(measure))


def tensor_qsnr(cases: Sequence[TensorCase], key: jax.Array,
                formats: Sequence[str] = PAPER_FORMATS) -> dict[tuple[int, str, bool], float]:
  """Measure every tensor in every format, without and with rotation.

  Returns:
    (tensor index, format name, rotated) -> QSNR in dB.
  """
  stacks = padded_stacks(cases)
  results = {}
  for name in formats:
    fmt = lightquant.get_format(name)
    size = hadamard_size(name)
    for rotated in (False, True):
      measure = _make_stack_qsnr_fn(fmt, rotated)
      for indices, stack in stacks:
        signs = _tensor_signs(key, indices, size)
        values = np.asarray(measure(stack, signs))
        for index, value in zip(indices, values):
          results[index, name, rotated] = float(value)
  return results


def crest_rotation_size(block_size: int) -> int:
  """Rotation size for crest statistics: 16 for blocks of 16, else 32.

  It matches the rotation of the formats that use that block size (NV formats
  have blocks of 16, MX formats blocks of 32).
  """
  return NV_HADAMARD_SIZE if block_size == 16 else MX_HADAMARD_SIZE


def _make_stack_crest_fn(block_size: int, rotated: bool) -> Callable:
  """Build a jitted (stack [K, R, C], signs [K, h]) -> crest factors [K, R, NB]."""

  def crest(x, signs):
    if rotated:
      x = hadamard.rotate(x, signs, axis=-1)
    return lightquant.crest_factor(x, block_size, axis=-1)

  return jax.jit(jax.vmap(crest))


def crest_factors(cases: Sequence[TensorCase], key: jax.Array) -> dict[tuple[str, int, bool], np.ndarray]:
  """Pool the block crest factors of the tensors by role.

  Returns:
    (role, block size, rotated) -> 1-D array of the crest factors of every
    block of every tensor with that role. All-zero blocks, padding included,
    have no crest factor and are left out.
  """
  stacks = padded_stacks(cases)
  pooled = {}
  for block_size in CREST_BLOCK_SIZES:
    size = crest_rotation_size(block_size)
    for rotated in (False, True):
      measure = _make_stack_crest_fn(block_size, rotated)
      for indices, stack in stacks:
        values = np.asarray(measure(stack, _tensor_signs(key, indices, size)))
        for index, value in zip(indices, values):
          value = value.ravel()
          pooled.setdefault((cases[index].role, block_size, rotated), []).append(
              value[np.isfinite(value)])
  return {config: np.concatenate(parts) for config, parts in pooled.items()}


# ---------------------------------------------------------------------------
# CSV output


def build_rows(model_results, cases, tensor_results, token_count: int,
               sentence_count: int, formats: Sequence[str] = PAPER_FORMATS) -> list[dict]:
  """Flatten the measurements into CSV rows with the CSV_COLUMNS keys."""
  rows = []
  for name in formats:
    fmt = lightquant.get_format(name)
    for rotated in (False, True):
      common = {"format": name, "element": fmt.element, "rotated": int(rotated),
                "hadamard_size": hadamard_size(name) if rotated else 0}
      result = model_results[name, rotated]
      rows.append({"scope": SCOPE_MODEL, "tensor": HIDDEN_STATE, "role": ROLE_OUTPUT,
                   "rows": token_count, "cols": minilm_model.HIDDEN_SIZE, **common,
                   "qsnr_db": result.hidden_qsnr_db, "mean_cosine": ""})
      rows.append({"scope": SCOPE_MODEL, "tensor": SENTENCE_EMBEDDING,
                   "role": ROLE_OUTPUT, "rows": sentence_count,
                   "cols": minilm_model.HIDDEN_SIZE, **common,
                   "qsnr_db": result.embedding_qsnr_db,
                   "mean_cosine": float(np.mean(result.cosines))})
      for index, case in enumerate(cases):
        rows.append({"scope": SCOPE_TENSOR, "tensor": case.layer, "role": case.role,
                     "rows": case.array.shape[0], "cols": case.array.shape[1],
                     **common, "qsnr_db": tensor_results[index, name, rotated],
                     "mean_cosine": ""})
  return rows


def build_csv(rows: Sequence[dict]) -> str:
  """Serialize the rows with CSV_COLUMNS as the header."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({key: f"{value:.8g}" if isinstance(value, float) else value
                     for key, value in row.items()})
  return buffer.getvalue()


def build_subset_markdown(model_results, cases, tensor_results, settings: dict,
                          formats: Sequence[str]) -> str:
  """Build results.md of a run on a subset of the formats: one row per format and rotation."""
  header = ["format", "rotation", "hidden QSNR (dB)", "embedding QSNR (dB)", "mean cosine",
            "weights QSNR (dB)", "activations QSNR (dB)"]
  lines = [
      "# Direct-cast all-MiniLM-L6-v2 in a subset of the formats",
      "",
      "Settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()) + ".",
      "",
      "The INT-vs-FP, crest-factor and paper tables need all 8 formats "
      f"({DEFAULT_FORMATS}), so this run has only the table below. Rotation is a "
      "random Hadamard transform of both operands. Every row is in qsnr.csv.",
      "",
      "| " + " | ".join(header) + " |",
      "|" + "|".join("---" for _ in header) + "|",
  ]
  for name in formats:
    for rotated in (False, True):
      result = model_results[name, rotated]
      role_means = []
      for role in (ROLE_WEIGHT, ROLE_ACTIVATION):
        values = [tensor_results[i, name, rotated]
                  for i, case in enumerate(cases) if case.role == role]
        role_means.append(f"{np.mean(values):.2f}")
      rotation = f"h={hadamard_size(name)}" if rotated else "none"
      cells = [name.upper(), rotation, f"{result.hidden_qsnr_db:.2f}",
               f"{result.embedding_qsnr_db:.2f}", f"{np.mean(result.cosines):.6f}", *role_means]
      lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None, command: Sequence[str] | None = None) -> int:
  """Run the study and write its files; see the module docstring.

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

  sentences = SENTENCES[:QUICK_SENTENCE_COUNT] if args.quick else SENTENCES
  input_ids, attention_mask = minilm_data.tokenize(sentences, args.tokenizer)
  params = minilm_model.load_params(args.model_dir)
  model_key, tensor_key = jax.random.split(jax.random.PRNGKey(args.seed))

  reference_hidden, collected = minilm_model.encode(
      params, input_ids, attention_mask, collect=True)
  reference_hidden = np.asarray(reference_hidden)
  model_results = run_direct_cast(params, input_ids, attention_mask, reference_hidden,
                                  model_key, args.formats)
  all_formats = set(args.formats) == set(PAPER_FORMATS)
  model_time_s = time.perf_counter() - start

  layer_names = [name for name in minilm_model.linear_layer_names()
                 if not args.quick or name.endswith(QUICK_TENSOR_LAYERS)]
  cases = collect_tensors(collected, attention_mask, layer_names)
  tensor_results = tensor_qsnr(cases, tensor_key, args.formats)
  crest = crest_factors(cases, tensor_key) if all_formats else None

  token_count = int(attention_mask.sum())
  settings = {
      "sentences": len(sentences),
      "real tokens": token_count,
      "padded length": input_ids.shape[1],
      "seed": args.seed,
      "tensors": len(cases),
  }
  rows = build_rows(model_results, cases, tensor_results, token_count, len(sentences),
                    args.formats)
  outputs.write_text(out / "qsnr.csv", build_csv(rows))
  if all_formats:
    outputs.write_text(out / "results.md",
                       report.build_markdown(model_results, cases, tensor_results, crest,
                                             settings))
    outputs.write_figure(out / PLOT_FILE,
                         report.plot_qsnr_bars(model_results, cases, tensor_results))
  else:
    outputs.write_text(out / "results.md", build_subset_markdown(
        model_results, cases, tensor_results, settings, args.formats))
    # A plot of an earlier run in --out would not match this run's results.md.
    (out / PLOT_FILE).unlink(missing_ok=True)

  wall_time_s = time.perf_counter() - start
  extra = {
      "quick": args.quick,
      "seed": args.seed,
      "model_dir": str(args.model_dir),
      "sentences": len(sentences),
      "real_tokens": token_count,
      "padded_length": int(input_ids.shape[1]),
      "tensors": len(cases),
      "csv_rows": len(rows),
      "model_phase_s": round(model_time_s, 1),
      "formats": list(args.formats),
  }
  command = ["python", "-m", MODULE, *argv] if command is None else list(command)
  outputs.write_run_info(out, outputs.run_info(command, wall_time_s, extra))

  if all_formats:
    print(f"Wrote {out / 'results.md'}, {out / 'qsnr.csv'} and {out / PLOT_FILE}")
    print("\n".join(report.summary_lines(model_results, cases, tensor_results, crest)))
  else:
    print(f"Wrote {out / 'results.md'} and {out / 'qsnr.csv'}")
  print(f"Wall time: {wall_time_s:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
