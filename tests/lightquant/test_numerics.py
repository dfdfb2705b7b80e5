"""Element rounding, codes and scale exponents against ml_dtypes and hand values."""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lightquant import formats
from lightquant import numerics
from tests.lightquant import reference

FP_ELEMENTS = ("e4m3", "e5m2", "e2m3", "e3m2", "e2m1")
ALL_ELEMENTS = tuple(formats.ELEMENTS)
_round_fp = jax.jit(numerics.round_fp_element, static_argnums=(1, 2))
_encode_fp = jax.jit(numerics.encode_fp, static_argnums=1)
_decode_fp = jax.jit(numerics.decode_fp, static_argnums=1)


def _elem(name):
  return formats.ELEMENTS[name]


def _rne(values, element):
  return np.asarray(_round_fp(jnp.asarray(values, jnp.float32), _elem(element), "half_even"))


def _all_codes(element):
  """Every bit pattern of an FP element, decoded by ml_dtypes."""
  elem = _elem(element)
  codes = np.arange(2**elem.bits, dtype=np.uint8)
  return codes, codes.view(reference.ML_DTYPES[element]).astype(np.float64)


@pytest.mark.parametrize("element, qmax, min_sub", [
    ("e4m3", 448.0, 2.0**-9), ("e5m2", 57344.0, 2.0**-16), ("e2m3", 7.5, 0.125),
    ("e3m2", 28.0, 0.0625), ("e2m1", 6.0, 0.5)])
def test_fp_element_constants(element, qmax, min_sub):
  finfo = ml_dtypes.finfo(reference.ML_DTYPES[element])
  assert _elem(element).qmax == qmax
  assert _elem(element).qmax == float(finfo.max)
  assert _elem(element).min_subnormal == min_sub
  assert _elem(element).min_subnormal == float(finfo.smallest_subnormal)
  assert _elem(element).min_normal == float(finfo.smallest_normal)


def test_int_element_ranges():
  assert [_elem(n).qmax for n in ("int8", "int6", "int4")] == [127.0, 31.0, 7.0]


def test_e2m1_grid_magnitudes():
  _, values = _all_codes("e2m1")
  assert sorted(set(np.abs(values).tolist())) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("element, emax", [
    ("e4m3", 8), ("e5m2", 15), ("e2m3", 2), ("e3m2", 4), ("e2m1", 2),
    ("int8", 6), ("int6", 4), ("int4", 2)])
def test_ocp_emax(element, emax):
  assert _elem(element).emax == emax


@pytest.mark.parametrize("element", FP_ELEMENTS)
def test_decode_every_code_matches_ml_dtypes(element):
  codes, expected = _all_codes(element)
  got = np.asarray(_decode_fp(jnp.asarray(codes), _elem(element)), np.float64)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
  finite = ~np.isnan(expected)
  np.testing.assert_array_equal(got[finite], expected[finite])


@pytest.mark.parametrize("element", FP_ELEMENTS)
def test_encode_inverts_decode_on_finite_codes(element):
  codes, values = _all_codes(element)
  finite = np.isfinite(values)
  got = np.asarray(_encode_fp(jnp.asarray(values[finite], jnp.float32), _elem(element)))
  np.testing.assert_array_equal(got, codes[finite])


@pytest.mark.parametrize("element", FP_ELEMENTS)
def test_fp_rounding_matches_ml_dtypes_random(element):
  rng = np.random.default_rng(0)
  elem = _elem(element)
  # Log-uniform magnitudes from far below the smallest subnormal to 4x qmax.
  lo, hi = math.log2(elem.min_subnormal) - 4, math.log2(elem.qmax) + 2
  mags = np.exp2(rng.uniform(lo, hi, 200_000))
  y = (mags * rng.choice([-1.0, 1.0], mags.size)).astype(np.float32)
  expected = reference.round_element(y.astype(np.float64), element)
  np.testing.assert_array_equal(_rne(y, element), expected)


@pytest.mark.parametrize("element", FP_ELEMENTS)
def test_fp_rounding_ties_go_to_even(element):
  _, values = _all_codes(element)
  grid = np.unique(values[np.isfinite(values)])
  midpoints = ((grid[:-1] + grid[1:]) / 2).astype(np.float32)
  expected = reference.round_element(midpoints.astype(np.float64), element)
  got = _rne(midpoints, element)
  np.testing.assert_array_equal(got, expected)
  # Every tie lands on an even code: the last mantissa bit is zero.
  codes = np.asarray(_encode_fp(jnp.asarray(got), _elem(element)))
  assert np.all(codes[got != 0] & 1 == 0)


def test_e2m1_rounding_cases():
  values = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
  expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
  np.testing.assert_array_equal(_rne(values, "e2m1"), expected)
  np.testing.assert_array_equal(_rne(np.negative(values), "e2m1"), np.negative(expected))


def test_e3m2_subnormal_rounding_cases():
  np.testing.assert_array_equal(_rne([0.03125, 0.09375, 0.15625], "e3m2"), [0, 0.125, 0.125])


def test_e2m1_just_above_tie_rounds_up():
  assert _rne([0.25000006], "e2m1")[0] == 0.5


def test_e4m3_saturates_before_cast():
  values = np.array([4.25, 448, 464, 465, 1000, -1000], np.float32)
  np.testing.assert_array_equal(_rne(values, "e4m3"), [4, 448, 448, 448, 448, -448])
  # The raw cast is not saturating, which is why lightquant clips first.
  assert np.isnan(float(np.float32(465).astype(ml_dtypes.float8_e4m3fn)))


def test_e4m3_subnormal_examples():
  np.testing.assert_array_equal(_rne([2.0**-10, 1.5 * 2.0**-9], "e4m3"), [0.0, 2.0**-8])


def test_half_away_rounding():
  y = jnp.array([0.5, 1.5, 2.5, -2.5, 0.49999997, 2.4999998, -0.5], jnp.float32)
  got = np.asarray(numerics.round_to_integer(y, "half_away"))
  np.testing.assert_array_equal(got, [1, 2, 3, -3, 0, 2, -1])
  even = np.asarray(numerics.round_to_integer(y, "half_even"))
  np.testing.assert_array_equal(even, [0, 2, 2, -2, 0, 2, -0.0])


def test_int_rounding_symmetric_and_asymmetric():
  y = jnp.array([-130.0, -127.6, -127.4, 127.5, 130.0])
  sym = numerics.round_int_element(y, _elem("int8"), "symmetric", "half_even")
  asym = numerics.round_int_element(y, _elem("int8"), "asymmetric", "half_even")
  np.testing.assert_array_equal(sym, [-127, -127, -127, 127, 127])
  np.testing.assert_array_equal(asym, [-128, -128, -127, 127, 127])


def _exponent(amax, element, rule):
  elem = _elem(element)
  return np.asarray(numerics.scale_exponent(
      jnp.asarray(amax, jnp.float32), elem.qmax, elem.emax, rule))


@pytest.mark.parametrize("element", ALL_ELEMENTS)
def test_ceil_exponent_boundaries(element):
  qmax = _elem(element).qmax
  for k in (-20, -1, 0, 3, 40):
    at = np.float32(qmax * 2.0**k)
    above = np.nextafter(at, np.float32(np.inf))
    below = np.nextafter(at, np.float32(0))
    assert _exponent([at], element, "ceil")[0] == k
    assert _exponent([above], element, "ceil")[0] == k + 1
    assert _exponent([below], element, "ceil")[0] == k


@pytest.mark.parametrize("element", ALL_ELEMENTS)
@pytest.mark.parametrize("rule", ("ceil", "ocp", "floor", "round"))
def test_scale_exponent_matches_float64(element, rule):
  rng = np.random.default_rng(1)
  amax = np.exp2(rng.uniform(-120, 120, 50_000)).astype(np.float32)
  a64 = amax.astype(np.float64)
  qmax = _elem(element).qmax
  if rule == "ceil":
    expected = reference.ceil_exponent(a64, qmax)
  elif rule == "ocp":
    expected = reference.ocp_exponent(a64, qmax)
  elif rule == "floor":
    expected = np.floor(np.log2(a64 / qmax))
  else:
    expected = np.round(np.log2(a64 / qmax))
  np.testing.assert_array_equal(_exponent(amax, element, rule), expected)


def test_worked_scale_examples():
  assert _exponent([448.0], "e4m3", "ceil")[0] == 0
  assert _exponent([449.0], "e4m3", "ceil")[0] == 1
  assert _exponent([1.0], "int8", "ceil")[0] == -6
  assert _exponent([1.0], "e2m1", "ceil")[0] == -2
  # OCP floor rule: floor(log2 2.7) - emax(E2M1) = 1 - 2.
  assert _exponent([2.7], "e2m1", "ocp")[0] == -1


def test_round_exponent_sqrt2_boundary():
  # log2(amax / qmax) = 0.5 exactly at amax = qmax * sqrt(2), which float32
  # cannot hold, so the float32 neighbours decide: above rounds up, below down.
  qmax = 7.0
  exact = qmax * math.sqrt(2)
  nearest = np.float32(exact)
  if float(nearest) < exact:
    below, above = nearest, np.nextafter(nearest, np.float32(np.inf))
  else:
    below, above = np.nextafter(nearest, np.float32(0)), nearest
  assert _exponent([below], "int4", "round")[0] == 0
  assert _exponent([above], "int4", "round")[0] == 1


def test_mul_pow2_avoids_subnormal_factor():
  x = jnp.array([17.0, 1.0], jnp.float32)
  got = jax.jit(numerics.mul_pow2)(x, jnp.array([-127, 127]))
  np.testing.assert_array_equal(np.asarray(got), [17.0 * 2.0**-127, 2.0**127])


def test_ue8m0_codes_decode_with_ml_dtypes():
  e = jnp.arange(-127, 128)
  codes = np.asarray(numerics.ue8m0_code(e))
  decoded = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
  np.testing.assert_array_equal(decoded, np.exp2(np.arange(-127, 128, dtype=np.float64)))
