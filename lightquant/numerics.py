"""Bit-exact element rounding, UE8M0 exponents and code packing in float32.

Everything here works on float32 arrays with integer and bit operations where
exactness matters, so no result depends on a float ``log2`` or on the rounding
of a narrow-dtype cast. XLA on CPU and GPU flushes float32 subnormals to zero,
so powers of two are applied in two normal steps (`mul_pow2`) and subnormal
float32 inputs count as zero.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from lightquant import formats

_MANTISSA_MASK = 0x7FFFFF
_UE8M0_BIAS = 127
UE8M0_NAN = 255  # UE8M0 code of a NaN scale (OCP MX v1.0)
E4M3_NAN = 0x7F  # E4M3 code of NaN (OCP FP8); its sign bit is ignored


def pow2(e: jax.Array) -> jax.Array:
  """2.0**e as float32 for integer e in [-126, 127], built from its bits."""
  e = jnp.asarray(e, jnp.int32)
  return jax.lax.bitcast_convert_type((e + 127) << 23, jnp.float32)


def mul_pow2(x: jax.Array, e: jax.Array) -> jax.Array:
  """x * 2**e for integer e in [-254, 254] without a subnormal factor.

  Two normal factors keep the product exact whenever the result is a normal
  float32, where a single factor such as 2**-127 would flush to zero.
  """
  e = jnp.asarray(e, jnp.int32)
  half = e // 2
  return x * pow2(half) * pow2(e - half)


def floor_log2(a: jax.Array) -> jax.Array:
  """floor(log2(a)) of positive normal float32 values, read from the exponent.

  Zero and subnormal inputs give -127, below every normal exponent.
  """
  bits = jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)
  return ((bits >> 23) & 0xFF) - 127


def _mantissa_bits(a: jax.Array) -> jax.Array:
  bits = jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)
  return bits & _MANTISSA_MASK


def _float_mantissa_bits(value: float) -> int:
  return int(np.float32(value).view(np.int32)) & _MANTISSA_MASK


def _significand_threshold(value: float) -> np.float32:
  """Smallest float32 in [1, 2] that is >= the real number `value`."""
  t = np.float32(value)
  if float(t) < value:
    t = np.nextafter(t, np.float32(np.inf))
  return t


def scale_exponent(amax: jax.Array, qmax: float, emax: int, rule: str) -> jax.Array:
  """Unclipped UE8M0 exponent e of a block scale 2**e, computed exactly.

  With ``amax = m_a * 2^k_a`` and ``qmax = m_q * 2^k_q`` (significands in
  [1, 2)), ``log2(amax / qmax) = k_a - k_q + log2(m_a / m_q)`` and the
  fractional term lies in (-1, 1), so each rule reduces to one exact
  comparison of significands:

  - ceil: smallest e with ``qmax * 2^e >= amax``.
  - floor: largest e with ``qmax * 2^e <= amax``.
  - round: nearest integer to ``log2(amax / qmax)``; the sqrt(2) boundary is
    compared against the nearest float32 threshold on the right side.
  - ocp: ``floor(log2 amax) - emax`` (OCP Microscaling v1.0).

  Args:
    amax: positive normal float32 block maxima (zeros give a meaningless
      value that callers mask).
    qmax: the element maximum.
    emax: floor(log2(qmax)).
    rule: one of `formats.POW2_SCALE_RULES`.

  Returns:
    int32 exponents, not yet clipped to [-127, 127].
  """
  k_a = floor_log2(amax)
  if rule == "ocp":
    return k_a - emax
  k_q = math.frexp(qmax)[1] - 1
  base = k_a - k_q
  m_a = _mantissa_bits(amax)
  m_q = _float_mantissa_bits(qmax)
  if rule == "ceil":
    return base + (m_a > m_q).astype(jnp.int32)
  if rule == "floor":
    return base - (m_a < m_q).astype(jnp.int32)
  if rule == "round":
    significand = jax.lax.bitcast_convert_type(
        (jax.lax.bitcast_convert_type(amax, jnp.int32) & _MANTISSA_MASK)
        | 0x3F800000,
        jnp.float32,
    )
    q_significand = qmax / 2.0**k_q
    up = significand >= _significand_threshold(q_significand * math.sqrt(2))
    down = significand < _significand_threshold(q_significand / math.sqrt(2))
    return base + up.astype(jnp.int32) - down.astype(jnp.int32)
  raise ValueError(
      f"invalid power-of-two scale rule {rule!r}; valid values: "
      f"{', '.join(formats.POW2_SCALE_RULES)}"
  )


def round_to_integer(y: jax.Array, rounding: str) -> jax.Array:
  """Round to the nearest integer, ties to even or away from zero."""
  r = jnp.round(y)  # XLA's round-nearest-even
  if rounding == "half_even":
    return r
  a = jnp.abs(y)
  fl = jnp.floor(a)
  # a - floor(a) is exact in floating point, so ties are detected exactly.
  away = jnp.where(a - fl == 0.5, fl + 1.0, jnp.abs(r))
  return jnp.copysign(away, y)


def round_int_element(y: jax.Array, elem: formats.ElementFormat, clip: str,
                      rounding: str) -> jax.Array:
  """Round scaled values to INT codes, clipped to [-Q, Q] or [-Q-1, Q]."""
  q = elem.qmax
  low = -q - 1.0 if clip == "asymmetric" else -q
  return jnp.clip(round_to_integer(y, rounding), low, q)


def round_fp_element(y: jax.Array, elem: formats.ElementFormat,
                     rounding: str) -> jax.Array:
  """Round finite scaled values onto the ExMy grid and saturate to +-qmax.

  ``e = max(floor(log2|y|), 1 - bias)``, ``step = 2^(e - M)``, then
  ``q = sign(y) * min(round(|y| / step) * step, qmax)``. Subnormals keep the
  fixed step ``2^(1 - bias - M)``; a carry into the next binade needs no
  special case. This equals the ml_dtypes cast of ``clip(y, -qmax, qmax)``.
  """
  a = jnp.abs(y)
  e = jnp.maximum(floor_log2(a), 1 - elem.bias)
  shift = elem.mbits - e
  r = round_to_integer(mul_pow2(a, shift), rounding)
  q = jnp.minimum(mul_pow2(r, -shift), elem.qmax)
  return jnp.copysign(q, y)


def round_element(y: jax.Array, fmt: formats.Format) -> jax.Array:
  """Round float32 values already divided by the scale onto fmt's grid."""
  if fmt.elem.kind == "int":
    return round_int_element(y, fmt.elem, fmt.clip, fmt.rounding)
  return round_fp_element(y, fmt.elem, fmt.rounding)


def encode_fp(q: jax.Array, elem: formats.ElementFormat) -> jax.Array:
  """Pack FP grid values (|q| <= qmax) into uint8 codes S.E.M (low bits)."""
  a = jnp.abs(q)
  normal = a >= elem.min_normal
  k = floor_log2(a)
  biased = jnp.where(normal, k + elem.bias, 0)
  # Normal: mantissa = a / 2^k * 2^M - 2^M. Subnormal: a / min_subnormal.
  mantissa_normal = mul_pow2(a, elem.mbits - k) - 2.0**elem.mbits
  mantissa_sub = a * (1.0 / elem.min_subnormal)
  mantissa = jnp.where(normal, mantissa_normal, mantissa_sub).astype(jnp.int32)
  sign = jnp.signbit(q).astype(jnp.int32)
  code = (sign << (elem.ebits + elem.mbits)) | (biased << elem.mbits) | mantissa
  return code.astype(jnp.uint8)


def decode_fp(code: jax.Array, elem: formats.ElementFormat) -> jax.Array:
  """Unpack uint8 FP codes into float32 values (NaN codes give NaN)."""
  code = code.astype(jnp.int32)
  mantissa = code & (2**elem.mbits - 1)
  biased = (code >> elem.mbits) & (2**elem.ebits - 1)
  sign = (code >> (elem.ebits + elem.mbits)) & 1
  significand = jnp.where(biased == 0, mantissa, mantissa + 2**elem.mbits)
  exponent = jnp.maximum(biased, 1) - elem.bias - elem.mbits
  value = mul_pow2(significand.astype(jnp.float32), exponent)
  value = jnp.where(sign == 1, -value, value)
  top = 2**elem.ebits - 1
  if elem.nan_style == "fn":
    value = jnp.where((biased == top) & (mantissa == 2**elem.mbits - 1),
                      jnp.nan, value)
  elif elem.nan_style == "ieee":
    special = jnp.where(mantissa == 0, jnp.copysign(jnp.inf, value), jnp.nan)
    value = jnp.where(biased == top, special, value)
  return value


def round_to_e4m3(v: jax.Array, rounding: str = "half_even") -> jax.Array:
  """Round non-negative float32 values to E4M3, saturating at 448."""
  return round_fp_element(v, formats.ELEMENTS["e4m3"], rounding)


def divide_by_block_scale(x: jax.Array, scale: jax.Array) -> jax.Array:
  """x / scale with IEEE division, where scale broadcasts against x.

  XLA rewrites ``x / broadcast(s)`` into ``x * broadcast(1 / s)``, so the
  scale is broadcast to x's shape behind an optimization barrier first. That
  costs one x-sized buffer, paid only by the non-power-of-two scale rules.
  """
  full = jax.lax.optimization_barrier(jnp.broadcast_to(scale, x.shape))
  return x / full


def divide_by_constant(x: jax.Array, c: float) -> jax.Array:
  """x / c with IEEE division; XLA would multiply by the rounded 1 / c."""
  return divide_by_block_scale(x, jnp.float32(c))


def round_to_bf16(x: jax.Array) -> jax.Array:
  """Round float32 to the nearest bfloat16 (ties to even), kept as float32."""
  return x.astype(jnp.bfloat16).astype(jnp.float32)


def ue8m0_code(e: jax.Array) -> jax.Array:
  """UE8M0 code of a clipped exponent e in [-127, 127]."""
  return (e + _UE8M0_BIAS).astype(jnp.uint8)


def ue8m0_exponent(code: jax.Array) -> jax.Array:
  """Exponent of a UE8M0 code (code 255, NaN, is left to callers)."""
  return code.astype(jnp.int32) - _UE8M0_BIAS
