"""Element formats, block formats and the registry of named formats.

A block format pairs an element format (INT or FP) with a block size and a
scale rule. Every format studied in "INT v.s. FP: A Comprehensive Study of
Fine-Grained Low-bit Quantization Formats" (Chen et al., arXiv 2510.25602,
Table 1) is registered by name, plus the OCP E5M2 and E3M2 variants and coarse
per-channel and per-tensor INT8/FP8 baselines. Formats are frozen dataclasses,
so sweeps change one field with `dataclasses.replace`:

>>> import dataclasses
>>> fmt = dataclasses.replace(get_format("mxint8"), block_size=64)
>>> fmt.block_size, fmt.scale_rule
(64, 'ceil')
"""

import dataclasses
import math
import numbers

# Block-size sentinels. A positive block size is the number of contiguous
# elements along the quantization axis that share one scale.
PER_CHANNEL = -1  # one scale per row along the quantization axis
PER_TENSOR = -2  # one scale for the whole tensor

SCALE_RULES = ("ceil", "ocp", "floor", "round", "fp32", "nv", "nv_ue8m0")
POW2_SCALE_RULES = ("ceil", "ocp", "floor", "round")
TWO_LEVEL_SCALE_RULES = ("nv", "nv_ue8m0")
CLIP_STYLES = ("symmetric", "asymmetric")
ROUNDING_MODES = ("half_even", "half_away")
SCALE_ARITHMETIC = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class ElementFormat:
  """One element encoding: a two's-complement integer or a small float ExMy.

  FP formats follow the OCP conventions: E4M3 reserves only S.1111.111 for NaN
  (max 448), E5M2 is IEEE-like with inf and NaN (max 57344), and E2M3, E3M2 and
  E2M1 have no inf or NaN, so every code is finite.
  """

  name: str
  kind: str  # "int" or "fp"
  bits: int  # total width including the sign bit
  ebits: int = 0  # exponent bits (FP only)
  mbits: int = 0  # mantissa bits (FP only)
  nan_style: str = "none"  # FP: "none" (all finite), "fn" (E4M3), "ieee" (E5M2)

  @property
  def bias(self) -> int:
    """Exponent bias 2^(E-1) - 1 (0 for INT)."""
    return 2 ** (self.ebits - 1) - 1 if self.kind == "fp" else 0

  @property
  def qmax(self) -> float:
    """Largest finite magnitude: 2^(b-1) - 1 for INT, the max normal for FP."""
    if self.kind == "int":
      return float(2 ** (self.bits - 1) - 1)
    top_exponent = 2**self.ebits - 1 - self.bias
    if self.nan_style == "ieee":
      # The all-ones exponent is inf/NaN, so the top finite binade is one lower.
      return (2.0 - 2.0**-self.mbits) * 2.0 ** (top_exponent - 1)
    if self.nan_style == "fn":
      # Only the all-ones mantissa of the top binade is NaN.
      return (2.0 - 2.0 ** (1 - self.mbits)) * 2.0**top_exponent
    return (2.0 - 2.0**-self.mbits) * 2.0**top_exponent

  @property
  def emax(self) -> int:
    """floor(log2(qmax)), the element's max exponent used by the OCP rule."""
    return math.frexp(self.qmax)[1] - 1

  @property
  def min_normal(self) -> float:
    """Smallest positive normal value (1 for INT)."""
    return 2.0 ** (1 - self.bias) if self.kind == "fp" else 1.0

  @property
  def min_subnormal(self) -> float:
    """Smallest positive value (1 for INT)."""
    return 2.0 ** (1 - self.bias - self.mbits) if self.kind == "fp" else 1.0


ELEMENTS = {
    "int8": ElementFormat("int8", "int", 8),
    "int6": ElementFormat("int6", "int", 6),
    "int4": ElementFormat("int4", "int", 4),
    "e4m3": ElementFormat("e4m3", "fp", 8, 4, 3, "fn"),
    "e5m2": ElementFormat("e5m2", "fp", 8, 5, 2, "ieee"),
    "e2m3": ElementFormat("e2m3", "fp", 6, 2, 3),
    "e3m2": ElementFormat("e3m2", "fp", 6, 3, 2),
    "e2m1": ElementFormat("e2m1", "fp", 4, 2, 1),
}


def _check_choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(
        f"invalid {field} {value!r}; valid values: {', '.join(map(repr, choices))}"
    )


@dataclasses.dataclass(frozen=True)
class Format:
  """A block quantization format.

  Scale rules (``s = amax / qmax`` is the ideal scale of a block):

  - ``ceil``: UE8M0 scale ``2^ceil(log2 s)``, the smallest power of two that
    clips nothing (the paper's default for every MX result; cuDNN's rule).
  - ``ocp``: UE8M0 scale ``2^(floor(log2 amax) - emax)`` from OCP Microscaling
    v1.0; elements that overflow saturate to +-qmax.
  - ``floor`` / ``round``: UE8M0 scale ``2^floor(log2 s)`` / ``2^round(log2 s)``.
  - ``fp32``: the high-precision scale ``s`` itself (rho = 1).
  - ``nv``: NVFP4's two levels, a float32 per-tensor scale
    ``S = amax_tensor / (qmax * 448)`` and an E4M3 block scale ``RNE(s / S)``.
  - ``nv_ue8m0``: as ``nv`` with ``S`` rounded up to a power of two.

  The UE8M0 exponent is clipped to [-127, 127]. Fields other than ``name`` are
  validated on construction and raise ``ValueError`` naming the bad field.

  Attributes:
    name: registry name, kept by `dataclasses.replace`; see `label`.
    element: key of `ELEMENTS` ("int8", "e4m3", ...).
    block_size: elements per scale, or `PER_CHANNEL` (-1) or `PER_TENSOR` (-2).
    scale_rule: one of `SCALE_RULES`.
    clip: INT range, "symmetric" [-Q, Q] or "asymmetric" [-Q-1, Q]. The
      asymmetric range exists to reproduce the paper's clipping ablation.
    rounding: element rounding, "half_even" (RNE) or "half_away".
    scale_arith: "fp32", or "bf16" to emulate a PyTorch BF16 tensor. Then the
      input, the high-precision scale and ``x / s`` are each rounded to
      bfloat16. The ceil, floor and round exponents come from
      ``log2(amax / qmax)`` with the ratio and the log2 each rounded to BF16.
  """

  name: str
  element: str
  block_size: int = 32
  scale_rule: str = "ceil"
  clip: str = "symmetric"
  rounding: str = "half_even"
  scale_arith: str = "fp32"

  def __post_init__(self):
    _check_choice("element", self.element, tuple(ELEMENTS))
    _check_choice("scale_rule", self.scale_rule, SCALE_RULES)
    _check_choice("clip", self.clip, CLIP_STYLES)
    _check_choice("rounding", self.rounding, ROUNDING_MODES)
    _check_choice("scale_arith", self.scale_arith, SCALE_ARITHMETIC)
    if not isinstance(self.block_size, numbers.Integral) or isinstance(self.block_size, bool):
      raise ValueError(f"invalid block_size {self.block_size!r}; expected an int")
    object.__setattr__(self, "block_size", int(self.block_size))
    if self.block_size <= 0 and self.block_size not in (PER_CHANNEL, PER_TENSOR):
      raise ValueError(
          f"invalid block_size {self.block_size}; valid values: a positive int, "
          f"{PER_CHANNEL} (per-channel) or {PER_TENSOR} (per-tensor)"
      )
    if self.clip == "asymmetric" and self.elem.kind != "int":
      raise ValueError(
          f"invalid clip 'asymmetric' for FP element {self.element!r}; "
          "FP grids are symmetric, so only 'symmetric' is valid"
      )

  @property
  def elem(self) -> ElementFormat:
    """The element format."""
    return ELEMENTS[self.element]

  @property
  def qmax(self) -> float:
    """Largest element magnitude."""
    return self.elem.qmax

  @property
  def is_pow2_scale(self) -> bool:
    """Whether the block scale is a power of two (a UE8M0 rule)."""
    return self.scale_rule in POW2_SCALE_RULES

  @property
  def scale_bits(self) -> int:
    """Storage bits of one block scale (8 for UE8M0 and E4M3, 32 for fp32)."""
    return 32 if self.scale_rule == "fp32" else 8

  def bits_per_element(self, axis_length: int | None = None) -> float:
    """Average storage bits per element including block scales.

    Per-tensor scales (and the second level of NV formats) are not counted.
    Per-channel formats need `axis_length` to spread their scale.
    """
    if self.block_size > 0:
      group = self.block_size
    elif self.block_size == PER_CHANNEL:
      if axis_length is None:
        raise ValueError("per-channel formats need axis_length to count bits")
      group = axis_length
    else:
      return float(self.elem.bits)
    return self.elem.bits + self.scale_bits / group

  @property
  def label(self) -> str:
    """A name that shows every field changed from the registry default."""
    base = _REGISTRY.get(self.name)
    if base == self:
      return self.name
    changed = [
        f"{f.name}={getattr(self, f.name)}"
        for f in dataclasses.fields(self)
        if f.name != "name"
        and (base is None or getattr(self, f.name) != getattr(base, f.name))
    ]
    return f"{self.name}[{','.join(changed)}]"


def _mx(name: str, element: str) -> Format:
  return Format(name, element, block_size=32, scale_rule="ceil")


_REGISTRY = {
    f.name: f
    for f in (
        _mx("mxfp8", "e4m3"),
        _mx("mxfp8_e5m2", "e5m2"),
        _mx("mxfp6", "e2m3"),
        _mx("mxfp6_e3m2", "e3m2"),
        _mx("mxfp4", "e2m1"),
        _mx("mxint8", "int8"),
        _mx("mxint6", "int6"),
        _mx("mxint4", "int4"),
        Format("nvfp4", "e2m1", block_size=16, scale_rule="nv"),
        Format("nvint4", "int4", block_size=16, scale_rule="nv"),
        Format("int8_per_channel", "int8", PER_CHANNEL, "fp32"),
        Format("int8_per_tensor", "int8", PER_TENSOR, "fp32"),
        Format("fp8_per_channel", "e4m3", PER_CHANNEL, "fp32"),
        Format("fp8_per_tensor", "e4m3", PER_TENSOR, "fp32"),
    )
}

FORMAT_NAMES = tuple(_REGISTRY)

# The INT/FP pairs compared in the paper (Table 3, Figure 4).
PAPER_PAIRS = (
    ("mxint8", "mxfp8"),
    ("mxint6", "mxfp6"),
    ("mxint4", "mxfp4"),
    ("nvint4", "nvfp4"),
)


def get_format(name: "str | Format") -> Format:
  """Look up a registered format by name; a `Format` passes through.

  Raises:
    ValueError: for an unknown name, listing the valid names.
  """
  if isinstance(name, Format):
    return name
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown format {name!r}; valid names: {', '.join(FORMAT_NAMES)}"
    )
  return _REGISTRY[name]
