"""Block quantization: `quantize`, `dequantize` and `fake_quant`.

Axis letters: N the quantized axis length, G the block size, NB the number of
blocks (ceil(N / G)).

Pipeline for one block (arXiv 2510.25602, Section 2): ``amax = max|x|``, a
scale ``s'`` from the format's scale rule, ``y = x / s'`` rounded onto the
element grid with saturation at +-qmax, and ``x_hat = q * s'``. All arithmetic
is float32 whatever the input dtype, unless the format sets
``scale_arith="bf16"`` to emulate BF16 arithmetic.

Rules for special values, applied to every format:

- An all-zero block gives exact zeros; its UE8M0 scale code is 0 (2^-127),
  matching gfloat's convention.
- Finite input never gives NaN or inf: a dequantized value beyond the output
  dtype's range (a rounded-up scale can cause one) saturates to its maximum.
- A block that contains NaN or +-inf gets a NaN scale (UE8M0 code 255, E4M3
  code 0x7F, or a float NaN), zero element codes, and dequantizes to NaN in
  every element. Other blocks are unaffected. The NV per-tensor scale is
  computed from the other blocks.
- float32 subnormal inputs count as zero, as XLA flushes them.

A ragged last block (N not a multiple of G) is zero-padded per row and the
padding is sliced off again, which equals padding the input explicitly.
"""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lightquant import formats
from lightquant import numerics

_E4M3 = formats.ELEMENTS["e4m3"]


@flax.struct.dataclass
class QuantizedArray:
  """The low-bit representation returned by `quantize`.

  Attributes:
    codes: element codes with the input's shape. INT codes are int8 two's
      complement values; FP codes are uint8 bit patterns S.E.M in the low bits.
    scales: block scales, the input's shape with the quantized axis replaced by
      the number of blocks (1 for per-channel; all ones for per-tensor). uint8
      UE8M0 codes for power-of-two rules, uint8 E4M3 codes for NV rules, and
      float32 for the ``fp32`` rule.
    tensor_scale: float32 scalar of the NV rules, else None.
    fmt: the format (static).
    axis: the quantized axis, non-negative (static).
    dtype: the input dtype that `dequantize` returns (static).
  """

  codes: jax.Array
  scales: jax.Array
  tensor_scale: jax.Array | None
  fmt: formats.Format = flax.struct.field(pytree_node=False)
  axis: int = flax.struct.field(pytree_node=False)
  dtype: Any = flax.struct.field(pytree_node=False)


def _normalize_axis(axis: int, ndim: int) -> int:
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise ValueError(f"invalid axis {axis!r}; expected an int in [{-max(ndim, 1)}, {max(ndim, 1)})")
  axis = int(axis)
  if not -max(ndim, 1) <= axis < max(ndim, 1):
    raise ValueError(
        f"invalid axis {axis} for an array of rank {ndim}; expected an int in "
        f"[{-max(ndim, 1)}, {max(ndim, 1)})")
  return axis % max(ndim, 1)


def _block_layout(n: int, fmt: formats.Format) -> tuple[int, int]:
  """Return (block size G, number of blocks NB) along an axis of length n."""
  if fmt.block_size > 0:
    return fmt.block_size, -(-n // fmt.block_size)
  return max(n, 1), 1


def _to_blocks(x: jax.Array, axis: int, fmt: formats.Format) -> jax.Array:
  """Zero-pad `axis` to NB * G and split it in place into (NB, G).

  The block axis G lands at position ``axis + 1``. Keeping the other axes in
  place avoids a transpose, which on CPU costs as much as the quantization.
  """
  n = x.shape[axis]
  g, nb = _block_layout(n, fmt)
  if nb * g != n:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, nb * g - n)
    x = jnp.pad(x, pad)
  return x.reshape(x.shape[:axis] + (nb, g) + x.shape[axis + 1:])


def _from_blocks(xb: jax.Array, axis: int, n: int) -> jax.Array:
  """Invert `_to_blocks`: merge (NB, G) at `axis` and drop the padding."""
  x = xb.reshape(xb.shape[:axis] + (-1,) + xb.shape[axis + 2:])
  return jax.lax.slice_in_dim(x, 0, n, axis=axis)


class _Blocks(flax.struct.PyTreeNode):
  """Intermediate result of the shared quantization core, per block."""

  q: jax.Array  # [..., NB, G, ...] float32 grid values (INT codes or FP values)
  scale_exp: jax.Array | None  # [..., NB, 1, ...] int32 for power-of-two rules
  scale: jax.Array | None  # [..., NB, 1, ...] float32 effective scale otherwise
  scale_code: jax.Array | None  # [..., NB, 1, ...] uint8 E4M3 code for NV rules
  tensor_scale: jax.Array | None  # scalar float32 for NV rules
  bad: jax.Array  # [..., NB, 1, ...] bool, block holds NaN or inf


def _quantize_blocks(xb: jax.Array, fmt: formats.Format, block_axis: int) -> _Blocks:
  """Quantize blocked float32 values onto fmt's grid; G is at `block_axis`."""
  bf16 = fmt.scale_arith == "bf16"
  arith = numerics.round_to_bf16 if bf16 else (lambda v: v)
  xb = arith(xb)

  # NaN counts as inf, so one reduction finds both the block maxima and the
  # blocks that contain a non-finite value. XLA's vectorized CPU max can drop
  # a NaN operand, but it keeps inf.
  magnitude = jnp.where(jnp.isnan(xb), jnp.inf, jnp.abs(xb))
  amax = jnp.max(magnitude, axis=block_axis, keepdims=True)
  if fmt.block_size == formats.PER_TENSOR:
    amax = jnp.broadcast_to(jnp.max(amax), amax.shape)
  bad = amax == jnp.inf
  amax = jnp.where(bad, 0.0, amax)
  # Zero and float32-subnormal maxima make an all-zero block.
  zero_block = amax < jnp.finfo(jnp.float32).tiny
  qmax = fmt.qmax

  scale_exp = scale = scale_code = tensor_scale = None
  if fmt.is_pow2_scale:
    if bf16 and fmt.scale_rule != "ocp":
      # PyTorch on a BF16 tensor rounds amax / qmax and its log2 to BF16
      # before ceil/floor/round. A log2 just above an integer rounds down to
      # it, which picks a scale one power of two too small.
      ratio = numerics.round_to_bf16(numerics.divide_by_constant(amax, qmax))
      log2 = numerics.round_to_bf16(jnp.log2(jnp.where(zero_block, 1.0, ratio)))
      integer = {"ceil": jnp.ceil, "floor": jnp.floor, "round": jnp.round}[fmt.scale_rule]
      e = integer(log2).astype(jnp.int32)
    else:
      e = numerics.scale_exponent(amax, qmax, fmt.elem.emax, fmt.scale_rule)
    e = jnp.where(zero_block, -127, jnp.clip(e, -127, 127))
    # One factor suffices: qmax >= 6 keeps e <= 126, so 2^-e is normal.
    y = arith(xb * numerics.pow2(-e))
    scale_exp = e
  elif fmt.scale_rule == "fp32":
    scale = arith(numerics.divide_by_constant(amax, qmax))
    y = arith(numerics.divide_by_block_scale(xb, jnp.where(zero_block, 1.0, scale)))
    y = jnp.where(zero_block, 0.0, y)
  else:
    scale, scale_code, tensor_scale = _two_level_scale(amax, fmt, arith)
    empty = scale == 0.0
    y = arith(numerics.divide_by_block_scale(xb, jnp.where(empty, 1.0, scale)))
    y = jnp.where(empty, 0.0, y)

  q = numerics.round_element(y, fmt)
  return _Blocks(q=q, scale_exp=scale_exp, scale=scale, scale_code=scale_code,
                 tensor_scale=tensor_scale, bad=bad)


def _two_level_scale(amax, fmt, arith):
  """NV scales: per-tensor S, E4M3 block codes, effective block scales.

  ``S = amax_tensor / qmax / 448`` (float32; rounded up to a power of two for
  ``nv_ue8m0``), ``code = E4M3_RNE((amax / qmax) / S)`` and
  ``s' = S * decode(code)``. The E4M3 code rounds to nearest, so
  ``amax / s'`` may exceed qmax slightly and saturates in element rounding.
  """
  block_scale = arith(numerics.divide_by_constant(amax, fmt.qmax))
  tensor_scale = arith(numerics.divide_by_constant(jnp.max(block_scale), _E4M3.qmax))
  if fmt.scale_rule == "nv_ue8m0":
    e = numerics.scale_exponent(tensor_scale, 1.0, 0, "ceil")
    tensor_scale = jnp.where(tensor_scale > 0, numerics.pow2(jnp.clip(e, -126, 127)),
                             0.0)
  safe_tensor_scale = jnp.where(tensor_scale > 0, tensor_scale, 1.0)
  ratio = arith(numerics.divide_by_block_scale(block_scale, safe_tensor_scale))
  ratio = jnp.where(tensor_scale > 0, ratio, 0.0)
  code_value = numerics.round_to_e4m3(ratio)
  scale = arith(tensor_scale * code_value)
  code = numerics.encode_fp(code_value, _E4M3)
  return scale, code, tensor_scale


def _dequantize_blocks(blocks: _Blocks) -> jax.Array:
  """x_hat = q * s' per block, NaN for blocks that held NaN or inf."""
  if blocks.scale_exp is not None:
    x_hat = numerics.mul_pow2(blocks.q, blocks.scale_exp)
  else:
    x_hat = blocks.q * blocks.scale
  return jnp.where(blocks.bad, jnp.nan, x_hat)


def _saturating_cast(x: jax.Array, dtype) -> jax.Array:
  """Cast float32 to `dtype`, clipping to its finite range (NaN stays NaN).

  A power-of-two scale rounded up can put a dequantized value just beyond the
  largest finite number of the output dtype (6 * 2^126 overflows float32).
  """
  limit = float(jnp.finfo(dtype).max)
  return jnp.clip(x, -limit, limit).astype(dtype)


def _check_input(x: jax.Array, fmt) -> tuple[jax.Array, formats.Format]:
  fmt = formats.get_format(fmt)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"invalid input dtype {x.dtype}; expected a float dtype")
  if x.size == 0:
    raise ValueError(f"invalid input shape {x.shape}; quantization needs a non-empty array")
  return x, fmt


def fake_quant_f32(x: jax.Array, fmt: formats.Format, axis: int) -> jax.Array:
  """Quantize and dequantize, returning float32 (no gradient rule)."""
  axis = _normalize_axis(axis, x.ndim)
  if x.ndim == 0:
    x = x.reshape(1)
  xb = _to_blocks(x.astype(jnp.float32), axis, fmt)
  x_hat = _dequantize_blocks(_quantize_blocks(xb, fmt, axis + 1))
  return _saturating_cast(_from_blocks(x_hat, axis, x.shape[axis]), jnp.float32)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _fake_quant_ste(x, fmt, axis):
  return _saturating_cast(fake_quant_f32(x, fmt, axis).reshape(x.shape), x.dtype)


@_fake_quant_ste.defjvp
def _fake_quant_ste_jvp(fmt, axis, primals, tangents):
  # Straight-through estimator: the quantizer's derivative is the identity.
  (x,), (dx,) = primals, tangents
  return _fake_quant_ste(x, fmt, axis), dx


# Jitted entry points: eager calls compile once per (format, axis, shape)
# instead of dispatching every primitive; inside an outer jit they inline.
_fake_quant_jit = jax.jit(_fake_quant_ste, static_argnums=(1, 2))


def fake_quant(x: jax.Array, fmt: "str | formats.Format", axis: int = -1) -> jax.Array:
  """Quantize `x` in blocks along `axis` and dequantize it back.

  Equals ``dequantize(quantize(x, fmt, axis))`` bit for bit, without building
  the codes. The derivative is the identity (straight-through estimator).

  Args:
    x: float array of any rank and float dtype.
    fmt: a `Format` or a registered name such as "mxfp4".
    axis: the axis along which blocks of `fmt.block_size` elements share a
      scale (the GEMM contraction axis).

  Returns:
    The dequantized values, with x's shape and dtype.

  >>> import jax.numpy as jnp
  >>> fake_quant(jnp.array([0.3, 1.0, -2.7]), "mxfp4").tolist()
  [0.25, 1.0, -3.0]
  """
  x, fmt = _check_input(x, fmt)
  axis = _normalize_axis(axis, x.ndim)
  return _fake_quant_jit(x, fmt, axis)


def quantize(x: jax.Array, fmt: "str | formats.Format", axis: int = -1) -> QuantizedArray:
  """Quantize `x` in blocks along `axis` into element codes and block scales.

  Args:
    x: float array of any rank.
    fmt: a `Format` or a registered name.
    axis: the blocked axis.

  Returns:
    A `QuantizedArray`; `dequantize` inverts it.
  """
  x, fmt = _check_input(x, fmt)
  return _quantize_jit(x, fmt, _normalize_axis(axis, x.ndim))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize_jit(x: jax.Array, fmt: formats.Format, axis: int) -> QuantizedArray:
  shape = x.shape
  if x.ndim == 0:
    x = x.reshape(1)
  n = x.shape[axis]
  blocks = _quantize_blocks(_to_blocks(x.astype(jnp.float32), axis, fmt), fmt, axis + 1)
  bad = blocks.bad

  q = jnp.where(bad, 0.0, blocks.q)
  if fmt.elem.kind == "int":
    codes = q.astype(jnp.int8)
  else:
    codes = numerics.encode_fp(q, fmt.elem)
  codes = _from_blocks(codes, axis, n).reshape(shape)

  if blocks.scale_exp is not None:
    scales = jnp.where(bad, numerics.UE8M0_NAN, numerics.ue8m0_code(blocks.scale_exp))
  elif blocks.scale_code is not None:
    scales = jnp.where(bad, numerics.E4M3_NAN, blocks.scale_code).astype(jnp.uint8)
  else:
    scales = jnp.where(bad, jnp.nan, blocks.scale)
  scales = jnp.squeeze(scales, axis + 1)
  if len(shape) == 0:
    scales = scales.reshape(())
  return QuantizedArray(codes=codes, scales=scales, tensor_scale=blocks.tensor_scale,
                        fmt=fmt, axis=axis, dtype=x.dtype)


@jax.jit
def dequantize(qa: QuantizedArray) -> jax.Array:
  """Decode a `QuantizedArray` back to values of the original dtype."""
  fmt = qa.fmt
  shape = qa.codes.shape
  codes = qa.codes.reshape(1) if len(shape) == 0 else qa.codes
  scales = qa.scales.reshape(1) if len(shape) == 0 else qa.scales
  axis = qa.axis
  n = codes.shape[axis]
  g, _ = _block_layout(n, fmt)

  if fmt.elem.kind == "int":
    values = codes.astype(jnp.float32)
  else:
    values = numerics.decode_fp(codes, fmt.elem)

  scale_blocks = jnp.expand_dims(scales, axis + 1)  # [..., NB, 1, ...]
  vb = _to_blocks(values, axis, fmt)
  if fmt.is_pow2_scale:
    e = numerics.ue8m0_exponent(scale_blocks)
    x_hat = jnp.where(scale_blocks == numerics.UE8M0_NAN, jnp.nan,
                      numerics.mul_pow2(vb, e))
  elif fmt.scale_rule == "fp32":
    x_hat = vb * scale_blocks
  else:
    block_scale = numerics.decode_fp(scale_blocks, _E4M3)
    x_hat = vb * (qa.tensor_scale * block_scale)
  x_hat = jnp.clip(x_hat, -jnp.finfo(jnp.float32).max, jnp.finfo(jnp.float32).max)
  return _saturating_cast(_from_blocks(x_hat, axis, n).reshape(shape), qa.dtype)
