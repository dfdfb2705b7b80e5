"""A quantized drop-in for `jax.lax.dot_general` with a custom VJP.

Training with low-bit GEMMs ("INT v.s. FP", Chen et al., arXiv 2510.25602,
Section 3.1) quantizes all three GEMMs of a linear layer, each operand along
that GEMM's own contraction axis. For ``Y = dot_general(X, W)``:

| GEMM   | computes           | lhs operand, blocked along   | rhs operand, blocked along |
|--------|--------------------|------------------------------|----------------------------|
| fwd    | Y = X . W          | X along the contracting dims | W along the contracting dims |
| dlhs   | dX = dY . W        | dY along W's free dims (N)   | W along its free dims (N)  |
| drhs   | dW = dY . X        | dY along X's free dims (T)   | X along its free dims (T)  |

Each of the six quantizations starts from the saved high-precision tensor,
never from a quantized copy. Several dims on one side are flattened in order
into a single blocked axis, so blocks of paired operands line up. The quantizer
is straight-through: the backward GEMMs use the quantized operands and no
clipping mask. An optional random Hadamard rotation per GEMM rotates both of
its operands along the contraction axis before quantization, which leaves the
unquantized product unchanged.

Usage with Flax:

>>> import jax, jax.numpy as jnp
>>> from flax import nnx
>>> dg = make_dot_general(DotGeneralConfig.uniform("mxint8"))
>>> layer = nnx.Linear(64, 32, dot_general=dg, rngs=nnx.Rngs(0))
>>> layer(jnp.ones((4, 64))).shape
(4, 32)
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lightquant import formats
from lightquant import hadamard
from lightquant import quantization

_GEMMS = ("fwd", "dlhs", "drhs")


@dataclasses.dataclass(frozen=True)
class GemmConfig:
  """Quantization of one GEMM.

  Attributes:
    lhs: format of the GEMM's first operand (X in fwd, dY in dlhs and drhs),
      a registered name or a `Format`; None keeps it in high precision.
    rhs: format of the second operand (W in fwd and dlhs, X in drhs).
    hadamard_size: power-of-two size of the random Hadamard rotation applied
      to both operands along the contraction axis, or None for no rotation.
  """

  lhs: formats.Format | None = None
  rhs: formats.Format | None = None
  hadamard_size: int | None = None

  def __post_init__(self):
    for side in ("lhs", "rhs"):
      value = getattr(self, side)
      if value is not None:
        object.__setattr__(self, side, formats.get_format(value))
    h = self.hadamard_size
    if h is not None and (not isinstance(h, int) or h < 1 or h & (h - 1)):
      raise ValueError(
          f"invalid hadamard_size {h!r}; expected None or a power of two >= 1"
      )


@dataclasses.dataclass(frozen=True)
class DotGeneralConfig:
  """Formats and rotations of the forward and both backward GEMMs."""

  fwd: GemmConfig = GemmConfig()
  dlhs: GemmConfig = GemmConfig()
  drhs: GemmConfig = GemmConfig()

  def __post_init__(self):
    for name in _GEMMS:
      if not isinstance(getattr(self, name), GemmConfig):
        raise ValueError(f"invalid {name} {getattr(self, name)!r}; expected a GemmConfig")

  @classmethod
  def uniform(cls, fmt, hadamard_size: int | None = None) -> "DotGeneralConfig":
    """Build a config with one format for all six operands and one rotation."""
    gemm = GemmConfig(fmt, fmt, hadamard_size)
    return cls(gemm, gemm, gemm)

  @classmethod
  def forward_only(cls, fmt, hadamard_size: int | None = None) -> "DotGeneralConfig":
    """Quantize only the forward GEMM, as in direct-cast inference."""
    return cls(fwd=GemmConfig(fmt, fmt, hadamard_size))

  @property
  def rotates(self) -> bool:
    """True when any GEMM uses a Hadamard rotation."""
    return any(getattr(self, g).hadamard_size for g in _GEMMS)


class _Dims:
  """Axis bookkeeping derived from static dimension numbers."""

  def __init__(self, dimension_numbers, lhs_ndim: int, rhs_ndim: int):
    (lc, rc), (lb, rb) = dimension_numbers
    self.lc, self.rc, self.lb, self.rb = lc, rc, lb, rb
    self.lhs_free = tuple(d for d in range(lhs_ndim) if d not in lc + lb)
    self.rhs_free = tuple(d for d in range(rhs_ndim) if d not in rc + rb)
    nb = len(lb)
    # Output layout of dot_general: batch dims, lhs free dims, rhs free dims.
    self.out_lhs_free = tuple(range(nb, nb + len(self.lhs_free)))
    self.out_rhs_free = tuple(
        range(nb + len(self.lhs_free), nb + len(self.lhs_free) + len(self.rhs_free)))
    self.out_batch = tuple(range(nb))


def _canonical_dims(dimension_numbers) -> tuple:
  (lc, rc), (lb, rb) = dimension_numbers
  return ((tuple(map(int, lc)), tuple(map(int, rc))),
          (tuple(map(int, lb)), tuple(map(int, rb))))


def _rotate_and_quantize(x, axis, fmt, signs):
  if signs is not None:
    x = hadamard.rotate(x, signs, axis=axis)
  if fmt is not None:
    x = quantization.fake_quant_f32(x, fmt, axis=axis)
  return x


def _quantize_along(x, axes, fmt, signs):
  """Rotate and fake-quantize `x` along the flattened `axes`, in float32."""
  x = x.astype(jnp.float32)
  if fmt is None and signs is None:
    return x
  if not axes:
    # No contraction (an outer product): each element is its own block.
    return _quantize_along(x[..., None], (x.ndim,), fmt, signs)[..., 0]
  start = axes[0]
  if axes == tuple(range(start, start + len(axes))):
    # Adjacent axes in order merge by a reshape, without a transpose.
    merged = x.reshape(x.shape[:start] + (-1,) + x.shape[axes[-1] + 1:])
    return _rotate_and_quantize(merged, start, fmt, signs).reshape(x.shape)
  rest = tuple(d for d in range(x.ndim) if d not in axes)
  order = rest + tuple(axes)
  moved = jnp.transpose(x, order)
  flat = moved.reshape(moved.shape[:len(rest)] + (-1,))
  flat = _rotate_and_quantize(flat, len(rest), fmt, signs)
  return jnp.transpose(flat.reshape(moved.shape), tuple(order.index(d) for d in range(x.ndim)))


def _exact_in_bf16(fmt, dtype, rotated: bool) -> bool:
  """Return whether a GEMM operand's values are exactly representable in bf16."""
  if fmt is None:
    return dtype == jnp.bfloat16 and not rotated
  # Power-of-two scales times at most 8 significant bits fit bf16's significand.
  significant_bits = fmt.elem.mbits + 1 if fmt.elem.kind == "fp" else fmt.elem.bits - 1
  return fmt.is_pow2_scale and significant_bits <= 8


def _gemm(a, b, a_axes, b_axes, gemm: GemmConfig, signs, dims, precision, dtypes):
  """Quantize a and b along their contraction axes and contract them."""
  if gemm.lhs is None and gemm.rhs is None and signs is None:
    # Unquantized: the operands keep their dtypes, as in lax.dot_general.
    dtype = jnp.result_type(a.dtype, b.dtype)
    return jax.lax.dot_general(a.astype(dtype), b.astype(dtype), dims, precision=precision,
                               preferred_element_type=jnp.float32)
  a_q = _quantize_along(a, a_axes, gemm.lhs, signs)
  b_q = _quantize_along(b, b_axes, gemm.rhs, signs)
  rotated = signs is not None
  # CPUs have no fast bf16 GEMM, so there float32 inputs are faster and give
  # the same products.
  if (jax.default_backend() != "cpu"
      and _exact_in_bf16(gemm.lhs, dtypes[0], rotated)
      and _exact_in_bf16(gemm.rhs, dtypes[1], rotated)):
    # Exact inputs with float32 accumulation, as an MX GEMM unit computes.
    a_q, b_q = a_q.astype(jnp.bfloat16), b_q.astype(jnp.bfloat16)
  return jax.lax.dot_general(a_q, b_q, dims, precision=precision,
                             preferred_element_type=jnp.float32)


def _transpose_to(result, labels, ndim):
  """Permute `result`, whose axes carry the operand dims in `labels`."""
  return jnp.transpose(result, tuple(labels.index(d) for d in range(ndim)))


def _forward(config, dimension_numbers, precision, out_dtype, lhs, rhs, signs):
  d = _Dims(dimension_numbers, lhs.ndim, rhs.ndim)
  out = _gemm(lhs, rhs, d.lc, d.rc, config.fwd, signs["fwd"], dimension_numbers,
              precision, (lhs.dtype, rhs.dtype))
  return out.astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _quantized_dot_general(config, dimension_numbers, precision, out_dtype,
                           lhs, rhs, signs):
  return _forward(config, dimension_numbers, precision, out_dtype, lhs, rhs, signs)


def _quantized_dot_general_fwd(config, dimension_numbers, precision, out_dtype,
                               lhs, rhs, signs):
  out = _forward(config, dimension_numbers, precision, out_dtype, lhs, rhs, signs)
  # Save the high-precision operands: each backward GEMM quantizes them anew
  # along its own contraction axis.
  return out, (lhs, rhs, signs)


def _quantized_dot_general_bwd(config, dimension_numbers, precision, out_dtype,
                               residuals, g):
  del out_dtype
  lhs, rhs, signs = residuals
  d = _Dims(dimension_numbers, lhs.ndim, rhs.ndim)
  dtypes = (g.dtype,)

  # dX = dY . W, contracting the rhs free dims; batch dims pair up.
  dlhs_dims = ((d.out_rhs_free, d.rhs_free), (d.out_batch, d.rb))
  dlhs = _gemm(g, rhs, d.out_rhs_free, d.rhs_free, config.dlhs, signs["dlhs"],
               dlhs_dims, precision, dtypes + (rhs.dtype,))
  # Result axes: batch, lhs free (from dY), then W's contracting dims in
  # increasing order, each paired with its lhs contracting dim.
  labels = list(d.lb) + list(d.lhs_free) + [d.lc[d.rc.index(r)] for r in sorted(d.rc)]
  dlhs = _transpose_to(dlhs, labels, lhs.ndim).astype(lhs.dtype)

  # dW = dY . X, contracting the lhs free dims (the tokens).
  drhs_dims = ((d.out_lhs_free, d.lhs_free), (d.out_batch, d.lb))
  drhs = _gemm(g, lhs, d.out_lhs_free, d.lhs_free, config.drhs, signs["drhs"],
               drhs_dims, precision, dtypes + (lhs.dtype,))
  labels = list(d.rb) + list(d.rhs_free) + [d.rc[d.lc.index(c)] for c in sorted(d.lc)]
  drhs = _transpose_to(drhs, labels, rhs.ndim).astype(rhs.dtype)

  return dlhs, drhs, jax.tree.map(jnp.zeros_like, signs)


_quantized_dot_general.defvjp(_quantized_dot_general_fwd, _quantized_dot_general_bwd)

# Eager calls compile once per static configuration; under jit this inlines.
_quantized_dot_general_jit = jax.jit(_quantized_dot_general, static_argnums=(0, 1, 2, 3))


def _contraction_length(shape, axes) -> int:
  n = 1
  for a in axes:
    n *= shape[a]
  return n


def _check_rotation_shapes(config, d: _Dims, lhs_shape, rhs_shape) -> None:
  lengths = {
      "fwd": _contraction_length(lhs_shape, d.lc),
      "dlhs": _contraction_length(rhs_shape, d.rhs_free),
      "drhs": _contraction_length(lhs_shape, d.lhs_free),
  }
  for name, n in lengths.items():
    h = getattr(config, name).hadamard_size
    if h and n % h:
      raise ValueError(
          f"{name} GEMM contracts {n} elements, not a multiple of its "
          f"hadamard_size {h}; choose a size that divides {n} or disable rotation"
      )


def make_dot_general(config: DotGeneralConfig, key: jax.Array | None = None) -> Callable[..., Any]:
  """Build a quantized function with the signature of `jax.lax.dot_general`.

  Args:
    config: formats and rotations of the three GEMMs.
    key: PRNG key for the random Hadamard signs; required when `config`
      rotates. Fold in a layer index to give every layer its own signs.

  Returns:
    ``dot_general(lhs, rhs, dimension_numbers, precision=None,
    preferred_element_type=None, out_sharding=None)``. The output has the
    dtype `jax.lax.dot_general` would give; the cotangents come back in the
    dtypes of lhs and rhs. The quantized GEMMs accumulate in float32.
  """
  if not isinstance(config, DotGeneralConfig):
    raise ValueError(f"invalid config {config!r}; expected a DotGeneralConfig")
  if config.rotates and key is None:
    raise ValueError("config uses a Hadamard rotation, so make_dot_general needs a PRNG key")
  signs = {}
  for i, name in enumerate(_GEMMS):
    h = getattr(config, name).hadamard_size
    signs[name] = hadamard.random_signs(jax.random.fold_in(key, i), h) if h else None

  def dot_general(lhs, rhs, dimension_numbers, precision=None,
                  preferred_element_type=None, out_sharding=None):
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    dimension_numbers = _canonical_dims(dimension_numbers)
    d = _Dims(dimension_numbers, lhs.ndim, rhs.ndim)
    _check_rotation_shapes(config, d, lhs.shape, rhs.shape)
    if preferred_element_type is None:
      out_dtype = jnp.result_type(lhs.dtype, rhs.dtype)
    else:
      out_dtype = jnp.dtype(preferred_element_type)
    out = _quantized_dot_general_jit(config, dimension_numbers, precision, out_dtype,
                                     lhs, rhs, signs)
    if out_sharding is not None:
      out = jax.lax.with_sharding_constraint(out, out_sharding)
    return out

  return dot_general
