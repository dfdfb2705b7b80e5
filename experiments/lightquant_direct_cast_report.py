"""Statistics, Markdown tables, plot and console summary of the direct-cast study.

The inputs are the measurements of lightquant_direct_cast:
  model_results   (format name, rotated) -> ModelResult of the model outputs
  cases           the TensorCase list: weights and input activations of the
                  linear layers, in the order of the tensor indices
  tensor_results  (tensor index, format name, rotated) -> QSNR in dB
  crest           (role, block size, rotated) -> 1-D array of the block crest
                  factors of every tensor with that role
The functions that take them expect the full grid of PAPER_FORMATS x rotation
off/on (CREST_BLOCK_SIZES x rotation off/on for crest factors) and raise
KeyError when a configuration is missing.
"""

from collections.abc import Sequence

from matplotlib.figure import Figure
import numpy as np

import lightquant

# The study grid and the tensor roles. They live here, not in
# lightquant_direct_cast, because the study imports this module and the tables
# lay out exactly this grid.
# INT format first in each pair: mxint8, mxfp8, mxint6, ..., nvint4, nvfp4.
PAPER_FORMATS = tuple(name for pair in lightquant.PAPER_PAIRS for name in pair)
MX_HADAMARD_SIZE = 32
NV_HADAMARD_SIZE = 16
PER_CHANNEL = lightquant.PER_CHANNEL
CREST_BLOCK_SIZES = (PER_CHANNEL, 32, 16)

ROLE_WEIGHT = "weight"
ROLE_ACTIVATION = "activation"

# Chen et al. (arXiv 2510.25602), Table 3: direct-cast wins of the INT format
# over the FP format, as (INT wins, FP wins) among 12 LLMs, without and with
# random Hadamard rotation.
PAPER_MODEL_WINS = {
    ("mxint8", "mxfp8"): ((12, 0), (12, 0)),
    ("mxint6", "mxfp6"): ((0, 12), (1, 11)),
    ("mxint4", "mxfp4"): ((0, 12), (0, 12)),
    ("nvint4", "nvfp4"): ((0, 12), (12, 0)),
}
# Same paper, Figure 4, tensors of Llama-3.1-8B: (INT mean QSNR dB, FP mean
# QSNR dB, INT win rate). Only the NV pair is given here with rotation.
PAPER_TENSOR_QSNR = {
    ("mxint8", "mxfp8", False): (40.35, 31.50, 1.0),
    ("mxint6", "mxfp6", False): (28.57, 30.39, 0.001),
    ("mxint4", "mxfp4", False): (15.89, 17.98, 0.003),
    ("nvint4", "nvfp4", False): (20.55, 20.60, 0.643),
    ("nvint4", "nvfp4", True): (21.65, 20.35, 0.993),
}
# Same paper, Table 2: median crest factor of Llama-3.1-8B tensors, keyed by
# (block size, rotated).
PAPER_CREST_MEDIANS = {
    (PER_CHANNEL, False): 6.2, (32, False): 2.48, (16, False): 2.16,
    (PER_CHANNEL, True): 4.15, (32, True): 2.35, (16, True): 2.1,
}


def hadamard_size(name: str) -> int:
  """Return the rotation size of a format: 16 for NV formats, 32 for MX formats."""
  fmt = lightquant.get_format(name)
  return NV_HADAMARD_SIZE if fmt.scale_rule in ("nv", "nv_ue8m0") else MX_HADAMARD_SIZE


# ---------------------------------------------------------------------------
# Statistics


def pair_tensor_stats(cases, tensor_results, int_name, fp_name, rotated,
                      role: str | None = None) -> dict:
  """Mean INT and FP QSNR and the INT win rate over tensors, optionally of one role."""
  indices = [i for i, case in enumerate(cases) if role is None or case.role == role]
  int_values = np.array([tensor_results[i, int_name, rotated] for i in indices])
  fp_values = np.array([tensor_results[i, fp_name, rotated] for i in indices])
  return {
      "int_mean": float(np.mean(int_values)),
      "fp_mean": float(np.mean(fp_values)),
      "int_win_rate": float(np.mean(int_values > fp_values)),
      "count": len(indices),
  }


def crest_summary(values: np.ndarray) -> dict[str, float]:
  """Return min, Q1, median, Q3 and max of a 1-D array."""
  q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
  return dict(zip(("min", "q1", "median", "q3", "max"), map(float, q)))


def _pooled_crest(crest, role: str, block_size: int, rotated: bool) -> np.ndarray:
  if role == "all":
    return np.concatenate([crest[ROLE_WEIGHT, block_size, rotated],
                           crest[ROLE_ACTIVATION, block_size, rotated]])
  return crest[role, block_size, rotated]


# ---------------------------------------------------------------------------
# Markdown


def _pair_label(int_name: str, fp_name: str) -> str:
  return f"{int_name.upper()} vs {fp_name.upper()}"


def _rotation_label(rotated: bool) -> str:
  return "with rotation" if rotated else "no rotation"


def _block_label(block_size: int) -> str:
  return "per-channel" if block_size == PER_CHANNEL else str(block_size)


def _markdown_table(header: Sequence[str], body: Sequence[Sequence]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
  return lines


def _winner(int_name: str, fp_name: str, int_value: float, fp_value: float) -> str:
  if int_value > fp_value:
    return int_name.upper()
  if fp_value > int_value:
    return fp_name.upper()
  return "tie"


def _model_section(model_results, sentence_count: int) -> list[str]:
  lines = [
      "## Direct cast: INT vs FP on the model outputs",
      "",
      "Higher wins. Hidden-state QSNR is over all real tokens, and the embedding "
      "cosine is the mean over sentences. \"INT wins\" counts the sentences "
      f"(of {sentence_count}) where the INT format has the higher value. The "
      "paper column is Chen et al.'s Table 3: INT/FP wins among 12 LLMs.",
      "",
  ]
  header = ["pair", "rotation", "hidden QSNR INT (dB)", "hidden QSNR FP (dB)",
            "hidden winner", "hidden INT wins", "cosine INT", "cosine FP",
            "cosine winner", "cosine INT wins", "paper INT/FP"]
  body = []
  for int_name, fp_name in lightquant.PAPER_PAIRS:
    for rotated in (False, True):
      a, b = model_results[int_name, rotated], model_results[fp_name, rotated]
      cos_a, cos_b = float(np.mean(a.cosines)), float(np.mean(b.cosines))
      paper = PAPER_MODEL_WINS[int_name, fp_name][int(rotated)]
      body.append([
          _pair_label(int_name, fp_name), _rotation_label(rotated),
          f"{a.hidden_qsnr_db:.2f}", f"{b.hidden_qsnr_db:.2f}",
          _winner(int_name, fp_name, a.hidden_qsnr_db, b.hidden_qsnr_db),
          int(np.sum(a.sentence_hidden_qsnr_db > b.sentence_hidden_qsnr_db)),
          f"{cos_a:.6f}", f"{cos_b:.6f}", _winner(int_name, fp_name, cos_a, cos_b),
          int(np.sum(a.cosines > b.cosines)),
          f"{paper[0]}/{paper[1]}",
      ])
  return lines + _markdown_table(header, body) + [""]


def _format_section(model_results, cases, tensor_results) -> list[str]:
  lines = [
      "## Every format",
      "",
      "Model outputs and the mean tensor-level QSNR of the linear layers' "
      "weights and input activations.",
      "",
  ]
  header = ["format", "rotation", "hidden QSNR (dB)", "embedding QSNR (dB)",
            "mean cosine", "min cosine", "weights QSNR (dB)", "activations QSNR (dB)"]
  body = []
  for name in PAPER_FORMATS:
    for rotated in (False, True):
      result = model_results[name, rotated]
      role_means = []
      for role in (ROLE_WEIGHT, ROLE_ACTIVATION):
        values = [tensor_results[i, name, rotated]
                  for i, case in enumerate(cases) if case.role == role]
        role_means.append(f"{np.mean(values):.2f}")
      rotation = f"h={hadamard_size(name)}" if rotated else "none"
      body.append([name.upper(), rotation, f"{result.hidden_qsnr_db:.2f}",
                   f"{result.embedding_qsnr_db:.2f}", f"{np.mean(result.cosines):.6f}",
                   f"{np.min(result.cosines):.6f}", *role_means])
  return lines + _markdown_table(header, body) + [""]


def _tensor_section(cases, tensor_results) -> list[str]:
  weight_count = sum(case.role == ROLE_WEIGHT for case in cases)
  activation_count = len(cases) - weight_count
  lines = [
      "## Tensor level: INT vs FP",
      "",
      f"Mean QSNR over {len(cases)} tensors ({weight_count} weights and "
      f"{activation_count} input activations of the linear layers), each "
      "quantized alone along its contraction axis. The win rate is the share "
      "of tensors where the INT format has the higher QSNR. The paper column "
      "is Chen et al.'s Figure 4 on Llama-3.1-8B: INT / FP mean QSNR and INT "
      "win rate (\"-\" where it gives none).",
      "",
  ]
  header = ["pair", "rotation", "INT mean (dB)", "FP mean (dB)", "INT win rate",
            "weights INT win rate", "activations INT win rate", "paper"]
  body = []
  for int_name, fp_name in lightquant.PAPER_PAIRS:
    for rotated in (False, True):
      stats = pair_tensor_stats(cases, tensor_results, int_name, fp_name, rotated)
      weights = pair_tensor_stats(cases, tensor_results, int_name, fp_name, rotated,
                                  ROLE_WEIGHT)
      activations = pair_tensor_stats(cases, tensor_results, int_name, fp_name, rotated,
                                      ROLE_ACTIVATION)
      paper = PAPER_TENSOR_QSNR.get((int_name, fp_name, rotated))
      paper_text = ("-" if paper is None
                    else f"{paper[0]:.2f} / {paper[1]:.2f}, {100 * paper[2]:.1f}%")
      body.append([
          _pair_label(int_name, fp_name), _rotation_label(rotated),
          f"{stats['int_mean']:.2f}", f"{stats['fp_mean']:.2f}",
          f"{100 * stats['int_win_rate']:.1f}%",
          f"{100 * weights['int_win_rate']:.1f}%",
          f"{100 * activations['int_win_rate']:.1f}%",
          paper_text,
      ])
  return lines + _markdown_table(header, body) + [""]


def _crest_section(crest) -> list[str]:
  lines = [
      "## Crest factors",
      "",
      "max|x| / RMS of every block along the contraction axis, pooled over the "
      "blocks of all weights, all input activations, or both. The rotation is "
      f"{MX_HADAMARD_SIZE}-point for per-channel and 32-element blocks and "
      f"{NV_HADAMARD_SIZE}-point for 16-element blocks. The paper column is "
      "the median of Chen et al.'s Table 2 on Llama-3.1-8B.",
      "",
  ]
  header = ["tensors", "block", "rotation", "blocks", "min", "Q1", "median", "Q3",
            "max", "paper median"]
  body = []
  for role in (ROLE_WEIGHT, ROLE_ACTIVATION, "all"):
    for rotated in (False, True):
      for block_size in CREST_BLOCK_SIZES:
        values = _pooled_crest(crest, role, block_size, rotated)
        stats = crest_summary(values)
        body.append([
            "weights" if role == ROLE_WEIGHT else
            "activations" if role == ROLE_ACTIVATION else "all",
            _block_label(block_size), _rotation_label(rotated), values.size,
            *(f"{stats[k]:.2f}" for k in ("min", "q1", "median", "q3", "max")),
            PAPER_CREST_MEDIANS[block_size, rotated] if role == "all" else "",
        ])
  return lines + _markdown_table(header, body) + [""]


def build_markdown(model_results, cases, tensor_results, crest, settings: dict) -> str:
  """Assemble results.md from the measurements."""
  lines = [
      "# Direct-cast INT vs FP on all-MiniLM-L6-v2",
      "",
      "Every linear layer's forward GEMM quantizes its input activation and its "
      "weight in the same format, in blocks along the contraction axis, with "
      "per-call scales and no calibration. Rotation is a random Hadamard "
      f"transform of both operands, {MX_HADAMARD_SIZE}-point for MX formats and "
      f"{NV_HADAMARD_SIZE}-point for NV formats. Reference: the same model in "
      "float32. Protocol and paper numbers: Chen et al., \"INT v.s. FP: A "
      "Comprehensive Study of Fine-Grained Low-bit Quantization Formats\", "
      "arXiv 2510.25602.",
      "",
      "Settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()) + ".",
      "",
  ]
  lines += _model_section(model_results, settings["sentences"])
  lines += _tensor_section(cases, tensor_results)
  lines += _format_section(model_results, cases, tensor_results)
  lines += _crest_section(crest)
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Plot and console summary


def plot_qsnr_bars(model_results, cases, tensor_results) -> Figure:
  """Plot hidden-state and mean tensor-level QSNR per format and rotation as bars."""
  figure = Figure(figsize=(11, 4.2))
  axes = figure.subplots(1, 2, sharey=True)
  positions = np.arange(len(PAPER_FORMATS))
  width = 0.38
  panels = (
      ("last hidden state", lambda name, rotated: model_results[name, rotated].hidden_qsnr_db),
      ("mean over weights and activations",
       lambda name, rotated: np.mean([tensor_results[i, name, rotated]
                                      for i in range(len(cases))])),
  )
  for ax, (title, value) in zip(axes, panels):
    for offset, rotated, color in ((-width / 2, False, "tab:blue"),
                                   (width / 2, True, "tab:orange")):
      heights = [value(name, rotated) for name in PAPER_FORMATS]
      ax.bar(positions + offset, heights, width, color=color,
             label=_rotation_label(rotated))
    ax.set_xticks(positions)
    ax.set_xticklabels([name.upper() for name in PAPER_FORMATS], rotation=45, ha="right")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("QSNR (dB)")
  axes[0].legend()
  figure.suptitle("Direct-cast all-MiniLM-L6-v2: QSNR vs the float32 model")
  figure.tight_layout()
  return figure


def summary_lines(model_results, cases, tensor_results, crest) -> list[str]:
  """Build one console line per INT/FP pair and rotation, then the crest-factor medians."""
  lines = []
  for int_name, fp_name in lightquant.PAPER_PAIRS:
    for rotated in (False, True):
      a, b = model_results[int_name, rotated], model_results[fp_name, rotated]
      stats = pair_tensor_stats(cases, tensor_results, int_name, fp_name, rotated)
      lines.append(
          f"{_pair_label(int_name, fp_name)}, {_rotation_label(rotated)}: hidden QSNR "
          f"{a.hidden_qsnr_db:.2f} vs {b.hidden_qsnr_db:.2f} dB, cosine "
          f"{np.mean(a.cosines):.6f} vs {np.mean(b.cosines):.6f}, tensor mean "
          f"{stats['int_mean']:.2f} vs {stats['fp_mean']:.2f} dB, INT wins "
          f"{100 * stats['int_win_rate']:.1f}% of tensors")
  medians = []
  for rotated in (False, True):
    for block_size in CREST_BLOCK_SIZES:
      values = _pooled_crest(crest, "all", block_size, rotated)
      medians.append(f"{_block_label(block_size)}{' rotated' if rotated else ''} "
                     f"{np.median(values):.2f}")
  lines.append("Median crest factor: " + ", ".join(medians))
  return lines
