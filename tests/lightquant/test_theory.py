"""Tests for the closed-form INT/FP QSNR model in lightquant.theory.

Targets are the crossovers of Figure 3 of arXiv 2510.25602 and values of the
same closed forms with rho = 1.5 for MX, rho = 1.05 and g = 16 for NV, and
the w_zero term included.
"""

import math

import numpy as np
import pytest

from lightquant.theory import (
  crossover,
  fp_ceiling_db,
  fp_element_max,
  fp_qsnr,
  int_qsnr,
)

MX = {"rho": 1.5, "scale": "ue8m0", "block_size": 32}
NV = {"rho": 1.05, "scale": "e4m3", "block_size": 16}

# name -> (function, format arguments, scale keyword arguments)
FORMATS = {
  "MXINT8": (int_qsnr, (8,), MX),
  "MXFP8": (fp_qsnr, (4, 3), MX),
  "MXINT6": (int_qsnr, (6,), MX),
  "MXFP6": (fp_qsnr, (2, 3), MX),
  "MXINT4": (int_qsnr, (4,), MX),
  "MXFP4": (fp_qsnr, (2, 1), MX),
  "NVINT4": (int_qsnr, (4,), NV),
  "NVFP4": (fp_qsnr, (2, 1), NV),
}

# QSNR in dB at kappa = 1, 2, 3, 4.
QSNR_TABLE = {
  "MXINT8": (49.41, 43.39, 39.87, 37.37),
  "MXFP8": (31.86, 31.86, 31.86, 31.86),
  "MXINT6": (37.37, 31.35, 27.83, 25.33),
  "MXFP6": (31.82, 31.52, 30.81, 29.76),
  "MXINT4": (25.33, 19.31, 15.79, 13.29),
  "MXFP4": (19.73, 19.18, 18.01, 16.47),
  "NVINT4": (28.71, 22.69, 19.17, 16.67),
  "NVFP4": (20.07, 20.76, 21.88, 22.79),
}

TABLE_CASES = [
  pytest.param(name, kappa, expected, id=f"{name}-kappa{kappa:g}")
  for name, row in QSNR_TABLE.items()
  for kappa, expected in zip((1.0, 2.0, 3.0, 4.0), row)
]

# (int bits, fp ebits, fp mbits, scale keyword arguments, kappa*, QSNR at kappa*)
CROSSOVER_CASES = [
  pytest.param(8, 4, 3, MX, 7.55, 31.86, id="MXINT8-MXFP8"),
  pytest.param(6, 2, 3, MX, 1.96, 31.54, id="MXINT6-MXFP6"),
  pytest.param(4, 2, 1, MX, 2.04, 19.14, id="MXINT4-MXFP4"),
  pytest.param(4, 2, 1, NV, 2.39, 21.14, id="NVINT4-NVFP4"),
]


@pytest.mark.parametrize("name, kappa, expected", TABLE_CASES)
def test_qsnr_table_value(name, kappa, expected):
  function, format_args, scale_kwargs = FORMATS[name]
  assert function(kappa, *format_args, **scale_kwargs) == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize(
  "int_bits, ebits, mbits, scale_kwargs, kappa_expected, qsnr_expected", CROSSOVER_CASES
)
def test_crossover_matches_figure(int_bits, ebits, mbits, scale_kwargs, kappa_expected, qsnr_expected):
  kappa_star, qsnr_star = crossover(int_bits, ebits, mbits, **scale_kwargs)
  assert kappa_star == pytest.approx(kappa_expected, abs=0.02)
  assert qsnr_star == pytest.approx(qsnr_expected, abs=0.05)


@pytest.mark.parametrize(
  "int_bits, ebits, mbits, scale_kwargs, kappa_expected, qsnr_expected", CROSSOVER_CASES
)
def test_crossover_curves_meet(int_bits, ebits, mbits, scale_kwargs, kappa_expected, qsnr_expected):
  kappa_star, qsnr_star = crossover(int_bits, ebits, mbits, **scale_kwargs)
  fp_at_star = fp_qsnr(kappa_star, ebits, mbits, **scale_kwargs)
  int_below = int_qsnr(0.9 * kappa_star, int_bits, **scale_kwargs)
  fp_below = fp_qsnr(0.9 * kappa_star, ebits, mbits, **scale_kwargs)
  int_above = int_qsnr(1.1 * kappa_star, int_bits, **scale_kwargs)
  fp_above = fp_qsnr(1.1 * kappa_star, ebits, mbits, **scale_kwargs)
  assert fp_at_star == pytest.approx(qsnr_star, abs=1e-6)
  assert int_below > fp_below
  assert int_above < fp_above


def test_nv_crossover_with_unit_rho():
  kappa_star, qsnr_star = crossover(4, 2, 1, rho=1.0, scale="e4m3", block_size=16)
  assert kappa_star == pytest.approx(2.46, abs=0.02)
  assert qsnr_star == pytest.approx(21.31, abs=0.05)


def test_crossover_without_zero_term_moves():
  with_zero, _ = crossover(4, 2, 1, **MX)
  without_zero, _ = crossover(4, 2, 1, **MX, include_zero_term=False)
  assert without_zero < with_zero - 0.03


@pytest.mark.parametrize("mbits, expected", [(3, 31.86), (2, 25.84), (1, 19.82)])
def test_fp_ceiling_db_values(mbits, expected):
  assert fp_ceiling_db(mbits) == pytest.approx(expected, abs=0.005)


def test_fp_ceiling_db_slope_per_mantissa_bit():
  step = fp_ceiling_db(3) - fp_ceiling_db(2)
  assert step == pytest.approx(20.0 * math.log10(2.0), abs=1e-12)


def test_mxfp8_reaches_ceiling():
  # E4M3 has ample range for kappa <= 4, so only the mantissa error is left.
  kappa = np.array([1.0, 2.0, 4.0])
  qsnr = fp_qsnr(kappa, 4, 3, **MX)
  np.testing.assert_allclose(qsnr, fp_ceiling_db(3), atol=1e-6)


@pytest.mark.parametrize(
  "ebits, mbits, expected",
  [(4, 3, 448.0), (5, 2, 57344.0), (2, 3, 7.5), (3, 2, 28.0), (2, 1, 6.0)],
)
def test_fp_element_max_values(ebits, mbits, expected):
  assert fp_element_max(ebits, mbits) == expected


def test_fp_qsnr_explicit_qmax_matches_default():
  kappa = np.array([1.0, 2.5, 6.0])
  default = fp_qsnr(kappa, 5, 2, **MX)
  explicit = fp_qsnr(kappa, 5, 2, **MX, qmax=57344.0)
  np.testing.assert_array_equal(default, explicit)


def test_fp_qsnr_qmax_override_changes_result():
  # A smaller maximum raises the subnormal threshold and adds error.
  default = fp_qsnr(3.0, 2, 1, **MX)
  smaller_range = fp_qsnr(3.0, 2, 1, **MX, qmax=3.0)
  assert smaller_range < default


def test_nvfp4_qsnr_rises_with_kappa():
  # The rise stops near kappa = 3.855, where w_norm - kappa^2/g reaches 0
  # and only the subnormal error is left, which grows with kappa.
  kappa = np.linspace(1.0, 3.85, 58)
  qsnr = fp_qsnr(kappa, 2, 1, **NV)
  steps = np.diff(qsnr)
  assert np.all(steps > 0.0), f"QSNR falls after kappa = {kappa[:-1][steps <= 0.0]}"


def test_nvfp4_qsnr_at_four_above_kappa_one():
  assert fp_qsnr(4.0, 2, 1, **NV) > fp_qsnr(1.0, 2, 1, **NV) + 2.0


def test_nvfp4_qsnr_peaks_where_normal_share_vanishes():
  kappa = np.linspace(3.5, 4.2, 701)
  qsnr = fp_qsnr(kappa, 2, 1, **NV)
  assert kappa[np.argmax(qsnr)] == pytest.approx(3.855, abs=0.005)


@pytest.mark.parametrize("scale_kwargs", [MX, NV, {"rho": 1.0, "scale": "fp32"}], ids=["ue8m0", "e4m3", "fp32"])
def test_int_qsnr_drops_per_kappa_doubling(scale_kwargs):
  kappa = np.array([1.0, 1.7, 3.0, 10.0])
  drop = int_qsnr(kappa, 4, **scale_kwargs) - int_qsnr(2.0 * kappa, 4, **scale_kwargs)
  np.testing.assert_allclose(drop, 20.0 * math.log10(2.0), atol=1e-12)


def test_int_qsnr_gains_per_bit():
  gain = int_qsnr(2.0, 8, **MX) - int_qsnr(2.0, 7, **MX)
  assert gain == pytest.approx(6.0206, abs=1e-4)


def test_int_qsnr_fp32_scale_matches_ue8m0_formula():
  assert int_qsnr(2.0, 8, rho=1.0, scale="fp32") == int_qsnr(2.0, 8, rho=1.0, scale="ue8m0")


def test_int_qsnr_e4m3_block_size_term():
  # The e4m3 form gains 10 log10(g / (g - 1)) over the ue8m0 form at equal rho.
  nv = int_qsnr(2.0, 4, rho=1.05, scale="e4m3", block_size=16)
  mx = int_qsnr(2.0, 4, rho=1.05, scale="ue8m0")
  assert nv - mx == pytest.approx(10.0 * math.log10(16.0 / 15.0), abs=1e-12)


def test_scalar_kappa_returns_float():
  assert isinstance(int_qsnr(2.0, 8), float)
  assert isinstance(fp_qsnr(2.0, 4, 3), float)


def test_array_kappa_keeps_shape():
  kappa = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  assert int_qsnr(kappa, 4).shape == (2, 3)
  assert fp_qsnr(kappa, 2, 1, **NV).shape == (2, 3)


def test_array_matches_scalar_evaluation():
  kappa = np.array([1.0, 2.0, 3.5])
  vectorised = fp_qsnr(kappa, 2, 3, **MX)
  one_by_one = [fp_qsnr(float(value), 2, 3, **MX) for value in kappa]
  np.testing.assert_allclose(vectorised, one_by_one, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("kappa", [0.0, -1.0, np.array([1.0, 0.0])], ids=["zero", "negative", "array-with-zero"])
def test_nonpositive_kappa_rejected(kappa):
  with pytest.raises(ValueError, match="kappa must be > 0"):
    int_qsnr(kappa, 8)
  with pytest.raises(ValueError, match="kappa must be > 0"):
    fp_qsnr(kappa, 4, 3)


@pytest.mark.parametrize("bits", [1, 0, -3])
def test_int_bits_below_two_rejected(bits):
  with pytest.raises(ValueError, match=f"bits must be an integer >= 2; got {bits}"):
    int_qsnr(2.0, bits)


def test_unknown_scale_rejected():
  expected = "unknown scale 'bf16'; expected one of 'ue8m0', 'e4m3', 'fp32'"
  with pytest.raises(ValueError, match=expected):
    int_qsnr(2.0, 8, scale="bf16")
  with pytest.raises(ValueError, match=expected):
    fp_qsnr(2.0, 4, 3, scale="bf16")


@pytest.mark.parametrize("block_size", [1, 0, -1])
def test_e4m3_small_block_size_rejected(block_size):
  expected = f"block_size must be an integer >= 2 for scale 'e4m3'; got {block_size}"
  with pytest.raises(ValueError, match=expected):
    int_qsnr(2.0, 4, scale="e4m3", block_size=block_size)
  with pytest.raises(ValueError, match=expected):
    fp_qsnr(2.0, 2, 1, scale="e4m3", block_size=block_size)


def test_invalid_fp_bits_rejected():
  with pytest.raises(ValueError, match="ebits must be an integer >= 1; got 0"):
    fp_qsnr(2.0, 0, 3)
  with pytest.raises(ValueError, match="mbits must be an integer >= 0; got -1"):
    fp_qsnr(2.0, 2, -1)
  with pytest.raises(ValueError, match="mbits must be an integer >= 0; got -1"):
    fp_ceiling_db(-1)


def test_invalid_rho_and_qmax_rejected():
  with pytest.raises(ValueError, match=r"rho must be a finite value > 0 \(the encoded-to-ideal scale ratio\); got 0.0"):
    int_qsnr(2.0, 8, rho=0.0)
  with pytest.raises(ValueError, match="qmax must be a finite value > 0 or None; got -6"):
    fp_qsnr(2.0, 2, 1, qmax=-6.0)


def test_crossover_without_sign_change_rejected():
  # MXINT8 stays above MXFP8 until kappa is about 7.5.
  with pytest.raises(ValueError, match=r"kappa in \[1.0, 5.0\]"):
    crossover(8, 4, 3, **MX, kappa_range=(1.0, 5.0))


def test_crossover_invalid_range_rejected():
  with pytest.raises(ValueError, match=r"kappa_range must satisfy 0 < low < high; got \(3.0, 2.0\)"):
    crossover(4, 2, 1, **MX, kappa_range=(3.0, 2.0))


def test_fp_qsnr_fp32_scale_matches_ue8m0_formula():
  kappa = np.array([1.0, 2.0, 5.0])
  fp32 = fp_qsnr(kappa, 2, 1, rho=1.0, scale="fp32")
  ue8m0 = fp_qsnr(kappa, 2, 1, rho=1.0, scale="ue8m0")
  np.testing.assert_array_equal(fp32, ue8m0)
