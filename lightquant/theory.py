"""Closed-form QSNR of INT and FP block formats under a Gaussian block model.

Source: M. Chen et al., "INT v.s. FP: A Comprehensive Study of Fine-Grained
Low-bit Quantization Formats", arXiv 2510.25602 (v1), Section 4 (Theorems 1
and 2) and Appendix B. With the zero-rounding term ``w_zero``, ``rho = 1.5``
for MX and ``rho = 1.05`` for NV, these formulas reproduce the crossovers of
the paper's Figure 3 (kappa* = 7.55, 1.96, 2.04, 2.39) within 0.01 in kappa.

Model: the entries of one block of ``g`` values are i.i.d. N(0, sigma^2), the
crest factor is ``kappa = max|x| / sigma``, and the encoded block scale is
``rho`` times the ideal scale ``amax / Qmax``. QSNR is
``-10 log10(E[(x - x_hat)^2] / sigma^2)`` in dB.

Scale names:

- ``"ue8m0"``: power-of-two MX block scale, with ``rho`` in [1, 2). The
  paper uses ``rho = 1.5``.
- ``"e4m3"``: NV two-level scale (E4M3 block scale under an FP32 tensor
  scale). The block max is then reproduced almost exactly, so its error is
  removed from the noise. Figure 3 of the paper matches ``rho = 1.05``.
- ``"fp32"``: high-precision block scale, for which ``rho = 1`` should be
  passed. It uses the ``"ue8m0"`` formulas.

All functions compute in NumPy float64.
"""

import math

import numpy as np

from lightquant import formats

SCALE_NAMES = ("ue8m0", "e4m3", "fp32")

# 10 log10(12) dB: the uniform rounding-noise variance is step^2 / 12.
_TEN_LOG10_12 = 10.0 * math.log10(12.0)
# 20 log10(2) = 6.0206 dB per bit.
_DB_PER_BIT = 20.0 * math.log10(2.0)

# Largest finite values of FP element formats whose top exponent code is not
# all-finite. E4M3 follows the OCP "fn" convention: only S.1111.111 is NaN,
# so the maximum is 1.75 * 2^8. E5M2 reserves its top exponent for inf and
# NaN as IEEE 754 does, so the maximum is 1.75 * 2^15.
_SPECIAL_FP_QMAX = {(4, 3): 448.0, (5, 2): 57344.0}

_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _normal_pdf(z):
  return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _normal_cdf(z):
  return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def _normal_sf(z):
  # 1 - Phi(z) through erfc, which keeps its precision for large z.
  return 0.5 * _erfc(z / math.sqrt(2.0))


def _as_kappa(kappa):
  """Convert ``kappa`` to a float64 array and check that it is positive."""
  values = np.asarray(kappa, dtype=np.float64)
  if values.size == 0:
    return values
  if not np.all(np.isfinite(values)):
    raise ValueError(f"kappa must be finite; got {kappa!r}")
  if np.any(values <= 0.0):
    raise ValueError(
      f"kappa must be > 0 (the crest factor max|x|/RMS); "
      f"got min(kappa) = {values.min()!r}"
    )
  return values


def _same_shape(result, kappa_array):
  # A scalar kappa gives a Python float, an array gives an array of its shape.
  if kappa_array.ndim == 0:
    return float(result)
  return result


def _check_scale(scale, block_size):
  if scale not in SCALE_NAMES:
    raise ValueError(
      f"unknown scale {scale!r}; expected one of {', '.join(map(repr, SCALE_NAMES))}"
    )
  if scale == "e4m3" and (not isinstance(block_size, (int, np.integer)) or block_size < 2):
    raise ValueError(
      f"block_size must be an integer >= 2 for scale 'e4m3'; got {block_size!r} "
      f"(the NV formats use 16)"
    )


def _check_rho(rho):
  if not (math.isfinite(rho) and rho > 0.0):
    raise ValueError(
      f"rho must be a finite value > 0 (the encoded-to-ideal scale ratio); got {rho!r}"
    )


def _check_int_arg(name, value, minimum):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def fp_element_max(ebits, mbits):
  """Return the largest finite value of the FP element format E``ebits``M``mbits``.

  E4M3 gives 448 (OCP "fn": no inf, only the all-ones code is NaN) and E5M2
  gives 57344 (IEEE style: the top exponent encodes inf and NaN). Every other
  format is taken to have no inf or NaN, so its maximum is
  ``(2 - 2^-M) * 2^(2^E - 1 - B)`` with bias ``B = 2^(E-1) - 1``: 7.5 for
  E2M3, 28 for E3M2 and 6 for E2M1.

  Args:
    ebits: Exponent bits E, at least 1.
    mbits: Mantissa bits M, at least 0.

  Returns:
    The maximum as a float.

  Raises:
    ValueError: If ``ebits < 1`` or ``mbits < 0``.
  """
  _check_int_arg("ebits", ebits, 1)
  _check_int_arg("mbits", mbits, 0)
  if (ebits, mbits) in _SPECIAL_FP_QMAX:
    return _SPECIAL_FP_QMAX[(ebits, mbits)]
  bias = 2 ** (ebits - 1) - 1
  return (2.0 - 2.0**-mbits) * 2.0 ** (2**ebits - 1 - bias)


def int_qsnr(kappa, bits, *, rho=1.5, scale="ue8m0", block_size=32):
  """Compute the theoretical QSNR in dB of a symmetric INT block format.

  The step is ``rho * kappa * sigma / Q`` with ``Q`` taken as ``2^(b-1)``,
  and the rounding noise is uniform with variance step^2 / 12. For the
  ``"ue8m0"`` and ``"fp32"`` scales (Theorem 1)::

    QSNR = 10 log10(12) + 20 log10(2) (b - 1) - 20 log10(rho) - 20 log10(kappa)

  which is about ``4.78 + 6.02 b - 20 log10(rho) - 20 log10(kappa)``. For
  ``"e4m3"`` the block max is kept almost exactly, so one of the ``g``
  elements carries no error::

    QSNR = -10 log10[(rho kappa)^2 / (12 * 4^(b-1)) * (1 - 1/g)]

  Args:
    kappa: Crest factor max|x|/sigma, a positive scalar or array.
    bits: Element bit width b, an integer >= 2.
    rho: Ratio of the encoded scale to the ideal scale ``amax / Q``.
    scale: One of ``"ue8m0"``, ``"e4m3"``, ``"fp32"``.
    block_size: Block size g, used only by ``"e4m3"``, where it must be >= 2.

  Returns:
    QSNR in dB: a float for a scalar ``kappa``, else an array of its shape.

  Raises:
    ValueError: On a non-positive ``kappa`` or ``rho``, ``bits < 2``, an
      unknown ``scale``, or ``block_size < 2`` with ``"e4m3"``.
  """
  kappa_array = _as_kappa(kappa)
  _check_int_arg("bits", bits, 2)
  _check_rho(rho)
  _check_scale(scale, block_size)

  if scale == "e4m3":
    noise = (rho * kappa_array) ** 2 / (12.0 * 4.0 ** (bits - 1)) * (1.0 - 1.0 / block_size)
    result = -10.0 * np.log10(noise)
  else:
    result = (
      _TEN_LOG10_12
      + _DB_PER_BIT * (bits - 1)
      - 20.0 * math.log10(rho)
      - 20.0 * np.log10(kappa_array)
    )
  return _same_shape(result, kappa_array)


def fp_qsnr(
  kappa,
  ebits,
  mbits,
  *,
  rho=1.5,
  scale="ue8m0",
  block_size=32,
  include_zero_term=True,
  qmax=None,
):
  """Compute the theoretical QSNR in dB of an FP block format with subnormals.

  For FP(E, M, B) with bias ``B = 2^(E-1) - 1`` and maximum ``Qmax``
  (Theorem 2), with phi and Phi the standard normal PDF and CDF::

    alpha_M = 1 / (24 * 4^M)             relative mantissa error, normal range
    beta    = 2^(2(1-B-M)) / (12 Qmax^2) subnormal step^2 / 12, per (rho kappa)^2
    tau1    = (rho kappa / Qmax) 2^(1-B)     smallest normal, in units of sigma
    tau0    = (rho kappa / Qmax) 2^(-B-M)    half a subnormal step, in sigma
    w_norm  = 2 (tau1 phi(tau1) + 1 - Phi(tau1))   energy share above tau1
    p_sub   = 2 (Phi(tau1) - Phi(tau0))          probability of a subnormal
    w_zero  = 2 Phi(tau0) - 1 - 2 tau0 phi(tau0)   energy share rounded to 0

    QSNR = -10 log10(alpha_M w_norm + beta (rho kappa)^2 p_sub + w_zero)

  For the ``"e4m3"`` scale ``w_norm`` becomes ``max(0, w_norm - kappa^2/g)``
  because the block max, a share ``kappa^2/g`` of the block energy, is kept
  almost exactly. With ample range (``w_norm`` near 1) the QSNR tends to
  :func:`fp_ceiling_db`.

  Args:
    kappa: Crest factor max|x|/sigma, a positive scalar or array.
    ebits: Exponent bits E, an integer >= 1.
    mbits: Mantissa bits M, an integer >= 0.
    rho: Ratio of the encoded scale to the ideal scale ``amax / Qmax``.
    scale: One of ``"ue8m0"``, ``"e4m3"``, ``"fp32"``.
    block_size: Block size g, used only by ``"e4m3"``, where it must be >= 2.
    include_zero_term: Add ``w_zero``, which the paper's formula omits.
      It matters for 4-bit formats: without it the MXINT4/MXFP4
      crossover moves from kappa 2.04 to 1.99.
    qmax: Largest finite element value. ``None`` takes :func:`fp_element_max`.

  Returns:
    QSNR in dB: a float for a scalar ``kappa``, else an array of its shape.

  Raises:
    ValueError: On a non-positive ``kappa``, ``rho`` or ``qmax``,
      ``ebits < 1``, ``mbits < 0``, an unknown ``scale``, or
      ``block_size < 2`` with ``"e4m3"``.
  """
  kappa_array = _as_kappa(kappa)
  _check_int_arg("ebits", ebits, 1)
  _check_int_arg("mbits", mbits, 0)
  _check_rho(rho)
  _check_scale(scale, block_size)
  if qmax is None:
    qmax = fp_element_max(ebits, mbits)
  elif not (math.isfinite(qmax) and qmax > 0.0):
    raise ValueError(f"qmax must be a finite value > 0 or None; got {qmax!r}")

  bias = 2 ** (ebits - 1) - 1
  alpha = 1.0 / (24.0 * 4.0**mbits)
  beta = 2.0 ** (2 * (1 - bias - mbits)) / (12.0 * qmax**2)

  scaled_kappa = rho * kappa_array
  tau_normal = scaled_kappa / qmax * 2.0 ** (1 - bias)
  tau_zero = scaled_kappa / qmax * 2.0 ** (-bias - mbits)

  w_norm = 2.0 * (tau_normal * _normal_pdf(tau_normal) + _normal_sf(tau_normal))
  if scale == "e4m3":
    w_norm = np.maximum(0.0, w_norm - kappa_array**2 / block_size)
  p_sub = 2.0 * (_normal_cdf(tau_normal) - _normal_cdf(tau_zero))

  noise = alpha * w_norm + beta * scaled_kappa**2 * p_sub
  if include_zero_term:
    w_zero = 2.0 * _normal_cdf(tau_zero) - 1.0 - 2.0 * tau_zero * _normal_pdf(tau_zero)
    noise = noise + w_zero

  result = -10.0 * np.log10(noise)
  return _same_shape(result, kappa_array)


def fp_ceiling_db(mbits):
  """Return the ample-range FP QSNR limit ``10 log10(24 * 4^M)`` in dB.

  This is :func:`fp_qsnr` with ``w_norm = 1`` and no subnormal or zero
  error, about ``13.80 + 6.02 M``: 31.86 dB for M = 3, 25.84 dB for M = 2
  and 19.82 dB for M = 1. It depends on neither the block size nor kappa.

  Args:
    mbits: Mantissa bits M, an integer >= 0.

  Returns:
    The limit in dB as a float.

  Raises:
    ValueError: If ``mbits`` is not an integer >= 0.
  """
  _check_int_arg("mbits", mbits, 0)
  return 10.0 * math.log10(24.0 * 4.0**mbits)


def crossover(
  int_bits,
  fp_ebits,
  fp_mbits,
  *,
  rho=1.5,
  scale="ue8m0",
  block_size=32,
  kappa_range=(1.0, 20.0),
  include_zero_term=True,
  fp_qmax=None,
  scan_points=2001,
  tolerance=1e-10,
):
  """Find the crest factor where the INT and FP theoretical QSNR curves cross.

  Both formats share ``rho``, ``scale`` and ``block_size``. The difference
  ``int_qsnr - fp_qsnr`` is evaluated on ``scan_points`` evenly spaced
  kappa values in ``kappa_range``. The first interval with a sign change is
  then bisected until it is narrower than ``tolerance``. Below the returned
  kappa INT has the higher QSNR in the usual case. If the curves cross more
  than once in the range, only the lowest crossing is returned.

  Args:
    int_bits: INT element bit width, an integer >= 2.
    fp_ebits: FP exponent bits, an integer >= 1.
    fp_mbits: FP mantissa bits, an integer >= 0.
    rho: Ratio of the encoded scale to the ideal scale, for both formats.
    scale: One of ``"ue8m0"``, ``"e4m3"``, ``"fp32"``.
    block_size: Block size g, used only by ``"e4m3"``.
    kappa_range: ``(low, high)`` kappa interval to search, ``0 < low < high``.
    include_zero_term: Passed to :func:`fp_qsnr`.
    fp_qmax: Largest finite FP element value; ``None`` derives it.
    scan_points: Number of scan points, at least 2.
    tolerance: Width in kappa at which bisection stops.

  Returns:
    ``(kappa_star, qsnr_star)``: the crossing crest factor and the INT
    QSNR in dB there (equal to the FP QSNR within the tolerance).

  Raises:
    ValueError: On invalid arguments, or when the difference does not
      change sign anywhere in ``kappa_range``.
  """
  low, high = kappa_range
  if not (0.0 < low < high and math.isfinite(high)):
    raise ValueError(f"kappa_range must satisfy 0 < low < high; got {kappa_range!r}")
  _check_int_arg("scan_points", scan_points, 2)

  def qsnr_difference(kappa):
    int_db = int_qsnr(kappa, int_bits, rho=rho, scale=scale, block_size=block_size)
    fp_db = fp_qsnr(
      kappa,
      fp_ebits,
      fp_mbits,
      rho=rho,
      scale=scale,
      block_size=block_size,
      include_zero_term=include_zero_term,
      qmax=fp_qmax,
    )
    return int_db - fp_db

  grid = np.linspace(low, high, scan_points)
  differences = qsnr_difference(grid)
  exact_zeros = np.flatnonzero(differences == 0.0)
  sign_changes = np.flatnonzero(np.sign(differences[:-1]) * np.sign(differences[1:]) < 0)
  if exact_zeros.size and (not sign_changes.size or exact_zeros[0] <= sign_changes[0]):
    kappa_star = float(grid[exact_zeros[0]])
    return kappa_star, int_qsnr(kappa_star, int_bits, rho=rho, scale=scale, block_size=block_size)
  if not sign_changes.size:
    raise ValueError(
      f"INT{int_bits} and FP E{fp_ebits}M{fp_mbits} QSNR curves do not cross for "
      f"kappa in [{low}, {high}] (scale {scale!r}, rho {rho}); widen kappa_range"
    )

  index = sign_changes[0]
  left, right = float(grid[index]), float(grid[index + 1])
  left_difference = differences[index]
  while right - left > tolerance:
    middle = 0.5 * (left + right)
    middle_difference = qsnr_difference(middle)
    if middle_difference == 0.0:
      left = right = middle
      break
    if math.copysign(1.0, middle_difference) == math.copysign(1.0, left_difference):
      left, left_difference = middle, middle_difference
    else:
      right = middle

  kappa_star = 0.5 * (left + right)
  qsnr_star = int_qsnr(kappa_star, int_bits, rho=rho, scale=scale, block_size=block_size)
  return kappa_star, qsnr_star


def format_qsnr(fmt, kappa, *, rho=None, axis_length=None):
  """Closed-form QSNR of a `lightquant.Format` at crest factor `kappa`.

  Maps the format onto `int_qsnr` or `fp_qsnr`: power-of-two scale rules use
  scale "ue8m0" with rho 1.5, the NV rules "e4m3" with rho 1.05 and the
  format's block size, and the fp32 rule "fp32" with rho 1.

  Args:
    fmt: a `Format` or a registered name.
    kappa: crest factor(s), scalar or array.
    rho: overrides the scale overhead above.
    axis_length: block size to use for per-channel formats (the row length).

  Returns:
    QSNR in dB with kappa's shape.
  """
  fmt = formats.get_format(fmt)
  if fmt.block_size > 0:
    block_size = fmt.block_size
  elif axis_length is not None:
    block_size = axis_length
  elif fmt.scale_rule in formats.TWO_LEVEL_SCALE_RULES:
    raise ValueError(f"format {fmt.label} is not blocked; pass axis_length")
  else:
    block_size = 32  # unused by the ue8m0 and fp32 formulas
  if fmt.is_pow2_scale:
    scale, default_rho = "ue8m0", 1.5
  elif fmt.scale_rule in formats.TWO_LEVEL_SCALE_RULES:
    scale, default_rho = "e4m3", 1.05
  else:
    scale, default_rho = "fp32", 1.0
  rho = default_rho if rho is None else rho
  elem = fmt.elem
  if elem.kind == "int":
    return int_qsnr(kappa, elem.bits, rho=rho, scale=scale, block_size=block_size)
  return fp_qsnr(kappa, elem.ebits, elem.mbits, rho=rho, scale=scale,
                 block_size=block_size, qmax=elem.qmax)
