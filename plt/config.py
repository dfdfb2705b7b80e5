"""Model configuration for the Parallel Loop Transformer and its baselines."""

import dataclasses

import jax.numpy as jnp

VARIANTS = ("baseline", "loop", "plt")
GSWA_MODES = ("gated", "fixed_half", "none")
GATE_INPUTS = ("hidden", "query")
DTYPES = ("float32", "bfloat16")


def _check_choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"invalid {field} {value!r}; valid values: {', '.join(map(repr, choices))}")


def _check_positive(field: str, value) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"invalid {field} {value!r}; expected a positive int")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Llama-style decoder, optionally looped as in "Parallel Loop Transformer".

  Variants (Wu et al., "Parallel Loop Transformer for Efficient Test-Time
  Computation Scaling", arXiv 2510.24824):

  - ``baseline``: the plain transformer, one pass of the block stack.
  - ``loop``: the vanilla looped transformer. Loop l takes loop l-1's output at
    the same position and keeps its own KV cache, so decoding runs the stack L
    times in sequence.
  - ``plt``: cross-loop parallelism (CLP). Loop l >= 2 at position i takes
    ``emb_scale * e_i + hidden_scale * N(h^(l-1)_{i-1})``, so the L loops of
    one decoding step run in one pass. With ``kv_share`` loops >= 2 read loop
    1's keys and values (global branch) and their own keys and values in a
    sliding window (local branch), blended per head by a sigmoid gate (G-SWA).

  Attributes:
    vocab_size: number of token ids.
    d_model: residual width D.
    num_layers: layers in the shared block stack.
    num_heads: query heads H.
    num_kv_heads: key/value heads (grouped-query attention); divides num_heads.
    head_dim: per-head width K.
    ffn_dim: SwiGLU hidden width.
    rms_eps: RMSNorm epsilon.
    rope_base: RoPE frequency base.
    dtype: compute dtype, "float32" or "bfloat16"; parameters stay float32.
    tie_embeddings: use the embedding matrix as the LM head.
    init_std: standard deviation of the normal weight init.
    variant: "baseline", "loop" or "plt".
    num_loops: L; 1 for the baseline.
    emb_scale: CLP scale a of the token embedding.
    hidden_scale: CLP scale b of the carried hidden state.
    normalize_per_loop: apply the final RMSNorm to the carried state.
    kv_share: loops >= 2 read loop 1's KV as global context (plt only); when
      False each loop keeps its own full cache and attends causally to it.
    gswa: "gated", "fixed_half" (constant 0.5 blend) or "none" (global branch
      only); needs kv_share, and must be "none" without it.
    gate_input: gate logits from the layer input ("hidden", after its own
      RMSNorm) or from each head's post-RoPE query ("query").
    window: local window w; query i attends to local keys i-w+1..i.
    global_inclusive: the global branch of loops >= 2 sees loop 1's key at the
      query's own position.
    reset_on_doc_start: zero the CLP carry at document starts of packed rows.
  """

  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  ffn_dim: int = 128
  rms_eps: float = 1e-6
  rope_base: float = 10000.0
  dtype: str = "float32"
  tie_embeddings: bool = True
  init_std: float = 0.02
  variant: str = "plt"
  num_loops: int = 2
  emb_scale: float = 1.0
  hidden_scale: float = 1.0
  normalize_per_loop: bool = False
  kv_share: bool = True
  gswa: str = "gated"
  gate_input: str = "hidden"
  window: int = 64
  global_inclusive: bool = True
  reset_on_doc_start: bool = True

  def __post_init__(self):
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "ffn_dim", "num_loops", "window"):
      _check_positive(field, getattr(self, field))
    _check_choice("variant", self.variant, VARIANTS)
    _check_choice("gswa", self.gswa, GSWA_MODES)
    _check_choice("gate_input", self.gate_input, GATE_INPUTS)
    _check_choice("dtype", self.dtype, DTYPES)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"invalid num_kv_heads {self.num_kv_heads}; it must divide num_heads {self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"invalid head_dim {self.head_dim}; RoPE needs an even head_dim")
    if self.variant == "baseline" and self.num_loops != 1:
      raise ValueError(f"invalid num_loops {self.num_loops} for variant 'baseline'; expected 1")
    if self.variant == "plt" and not self.kv_share and self.gswa != "none":
      raise ValueError(
          f"invalid gswa {self.gswa!r} with kv_share=False; G-SWA blends loop 1's shared "
          "cache with a local window, so set gswa='none' or kv_share=True")

  @property
  def compute_dtype(self):
    """The jnp dtype of activations."""
    return jnp.dtype(self.dtype)

  @property
  def uses_clp(self) -> bool:
    """True when loops >= 2 take the previous position's carry (plt)."""
    return self.variant == "plt" and self.num_loops > 1

  @property
  def shares_kv(self) -> bool:
    """True when loops >= 2 read loop 1's cache as their global context."""
    return self.uses_clp and self.kv_share

  @property
  def has_local_branch(self) -> bool:
    """True when loops >= 2 also attend to their own keys in a window."""
    return self.shares_kv and self.gswa != "none"

  @property
  def has_gate_params(self) -> bool:
    """True when the layers carry learned G-SWA gate parameters."""
    return self.has_local_branch and self.gswa == "gated"

  @property
  def num_caches(self) -> int:
    """Full-length KV caches per layer: 1 when shared or not looped, else L."""
    if self.variant == "baseline" or self.shares_kv:
      return 1
    return self.num_loops
