"""quantize / dequantize / fake_quant against the NumPy reference and hand cases.

This file is also the contract every registered format must pass.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lightquant as lq
from lightquant import formats
from tests.lightquant import reference

ALL_FORMATS = lq.FORMAT_NAMES
_fake_quant = jax.jit(lq.fake_quant, static_argnums=(1, 2))
_quantize = jax.jit(lq.quantize, static_argnums=(1, 2))
_dequantize = jax.jit(lq.dequantize)


def _fmt(name, **changes):
  return dataclasses.replace(lq.get_format(name), **changes)


def _heavy_tailed(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_t(3, shape) * np.exp2(rng.integers(-3, 4, shape[:-1] + (1,)))).astype(np.float32)


def _reference(x, fmt, axis):
  block = fmt.block_size
  if block == formats.PER_TENSOR:
    pytest.skip("the reference quantizer has no per-tensor mode")
  return reference.fake_quant(x, fmt.element, block, fmt.scale_rule, axis,
                              asymmetric=fmt.clip == "asymmetric")


@pytest.mark.parametrize("name", ALL_FORMATS)
@pytest.mark.parametrize("axis", (0, 1))
def test_fake_quant_matches_reference(name, axis):
  x = _heavy_tailed((40, 72), seed=axis)  # 72 = 2 * 32 + 8: a ragged block
  fmt = lq.get_format(name)
  if fmt.block_size == formats.PER_TENSOR:
    pytest.skip("per-tensor is checked in test_per_tensor_uses_one_scale")
  got = np.asarray(_fake_quant(jnp.asarray(x), fmt, axis))
  np.testing.assert_array_equal(got, _reference(x, fmt, axis))


@pytest.mark.parametrize("name", ("mxint8", "mxint4", "mxfp8", "mxfp4", "mxfp6_e3m2"))
def test_ocp_rule_matches_reference(name):
  x = _heavy_tailed((16, 64), seed=3)
  fmt = _fmt(name, scale_rule="ocp")
  got = np.asarray(_fake_quant(jnp.asarray(x), fmt, -1))
  np.testing.assert_array_equal(got, _reference(x, fmt, -1))


def test_per_tensor_uses_one_scale():
  x = _heavy_tailed((8, 64))
  for name in ("int8_per_tensor", "fp8_per_tensor"):
    qa = _quantize(jnp.asarray(x), name, -1)
    scales = np.asarray(qa.scales)
    assert np.all(scales == scales.flat[0])
    assert scales.flat[0] == np.float32(np.abs(x).max()) / np.float32(lq.get_format(name).qmax)
    # One block over the flattened tensor gives the same values.
    flat = reference.fake_quant(x.reshape(1, -1), lq.get_format(name).element, -1, "fp32")
    np.testing.assert_array_equal(np.asarray(lq.dequantize(qa)), flat.reshape(x.shape))


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_dequantize_inverts_quantize(name):
  x = jnp.asarray(_heavy_tailed((6, 3, 50), seed=5))
  for axis in (0, 2):
    qa = _quantize(x, name, axis)
    np.testing.assert_array_equal(np.asarray(_dequantize(qa)), np.asarray(_fake_quant(x, name, axis)))


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_code_dtypes_and_shapes(name):
  fmt = lq.get_format(name)
  x = jnp.asarray(_heavy_tailed((4, 50)))
  qa = _quantize(x, fmt, 1)
  assert qa.codes.shape == (4, 50)
  expected_code_dtype = jnp.int8 if fmt.elem.kind == "int" else jnp.uint8
  assert qa.codes.dtype == expected_code_dtype
  if fmt.block_size > 0:
    assert qa.scales.shape == (4, -(-50 // fmt.block_size))
  else:
    assert qa.scales.shape == (4, 1)
  assert (qa.tensor_scale is not None) == (fmt.scale_rule in formats.TWO_LEVEL_SCALE_RULES)


@pytest.mark.parametrize("name", [n for n in ALL_FORMATS if lq.get_format(n).elem.kind == "fp"])
def test_fp_codes_are_ml_dtypes_bit_patterns(name):
  fmt = lq.get_format(name)
  x = jnp.asarray(_heavy_tailed((4, 64), seed=7))
  qa = _quantize(x, fmt, -1)
  # Element values = dequantized / scale; their ml_dtypes encoding is the code.
  if fmt.is_pow2_scale:
    scale = np.exp2(np.asarray(qa.scales, np.float64) - 127)
  elif fmt.scale_rule == "fp32":
    scale = np.asarray(qa.scales, np.float64)
  else:
    e4m3 = np.asarray(qa.scales).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    scale = float(qa.tensor_scale) * e4m3
  g = fmt.block_size if fmt.block_size > 0 else 64
  codes = np.asarray(qa.codes)
  values = codes.view(reference.ML_DTYPES[fmt.element]).astype(np.float64)
  x_hat = np.asarray(lq.dequantize(qa), np.float64)
  np.testing.assert_allclose(values * np.repeat(scale, g, axis=-1)[:, :64], x_hat, rtol=1e-6)


def test_ue8m0_scale_codes_decode_with_ml_dtypes():
  x = jnp.asarray(_heavy_tailed((4, 64)))
  qa = _quantize(x, "mxfp8", -1)
  scale = np.asarray(qa.scales).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
  amax = np.abs(np.asarray(x)).reshape(4, 2, 32).max(-1)
  # Ceil rule: the smallest power of two with 448 * scale >= amax.
  assert np.all(448 * scale >= amax)
  assert np.all(448 * scale / 2 < amax)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_zero_block_gives_zeros(name):
  qa = _quantize(jnp.zeros(32), name, -1)
  assert np.all(np.asarray(lq.dequantize(qa)) == 0)
  assert np.all(np.asarray(_fake_quant(jnp.zeros(32), name, -1)) == 0)
  fmt = lq.get_format(name)
  if fmt.is_pow2_scale:
    assert np.all(np.asarray(qa.scales) == 0)  # UE8M0 code 0 is 2^-127
  elif fmt.scale_rule == "fp32":
    assert np.all(np.isfinite(np.asarray(qa.scales)))


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_zero_row_leaves_other_rows_alone(name):
  x = _heavy_tailed((5, 64), seed=11)
  x[2] = 0.0
  got = np.asarray(_fake_quant(jnp.asarray(x), name, -1))
  assert np.all(got[2] == 0)
  assert np.all(np.isfinite(got))
  if lq.get_format(name).scale_rule in ("ceil", "ocp", "floor", "round"):
    others = np.delete(x, 2, axis=0)
    alone = np.asarray(_fake_quant(jnp.asarray(others), name, -1))
    np.testing.assert_array_equal(np.delete(got, 2, axis=0), alone)


def test_ragged_blocks_split_each_row():
  x = jnp.asarray(_heavy_tailed((2, 48), seed=13))
  got = np.asarray(_fake_quant(x, "mxfp4", -1))
  for row in range(2):
    for start, stop in ((0, 32), (32, 48)):
      alone = np.asarray(_fake_quant(x[row, start:stop], "mxfp4", -1))
      np.testing.assert_array_equal(got[row, start:stop], alone)


@pytest.mark.parametrize("name", ("mxint8", "mxfp4", "nvfp4", "mxfp6"))
def test_ragged_equals_explicit_padding(name):
  x = _heavy_tailed((3, 40), seed=17)
  padded = np.pad(x, ((0, 0), (0, 24)))
  got = np.asarray(_fake_quant(jnp.asarray(x), name, -1))
  expected = np.asarray(_fake_quant(jnp.asarray(padded), name, -1))[:, :40]
  np.testing.assert_array_equal(got, expected)


def test_mxfp8_block_max_960_ocp_vs_ceil():
  x = jnp.zeros(32).at[0].set(960.0).at[1].set(957.0)
  ocp = np.asarray(lq.fake_quant(x, _fmt("mxfp8", scale_rule="ocp")))
  ceil = np.asarray(lq.fake_quant(x, "mxfp8"))
  assert ocp[1] == 896.0
  assert ceil[1] == 960.0
  assert ceil[0] == 960.0


def test_mxfp4_amax_2_7_ocp_scale():
  x = jnp.zeros(32).at[0].set(2.7)
  qa = lq.quantize(x, _fmt("mxfp4", scale_rule="ocp"))
  assert float(np.asarray(qa.scales).view(ml_dtypes.float8_e8m0fnu)[0]) == 0.5
  assert float(lq.dequantize(qa)[0]) == 3.0


@pytest.mark.parametrize("scale_rule", ("fp32", "ceil"))
def test_int4_block_symmetric_fixed_points(scale_rule):
  # Two's-complement INT4 codes times a scale; -8 has no symmetric partner.
  block = np.zeros(32, np.float32)
  block[:5] = np.array([-8, -1, 0, 3, 7], np.float32) * 0.25
  fmt = _fmt("mxint4", scale_rule=scale_rule)
  pos = np.asarray(lq.fake_quant(jnp.asarray(block), fmt))
  neg = np.asarray(lq.fake_quant(jnp.asarray(-block), fmt))
  np.testing.assert_array_equal(neg, -pos)
  # Quantized values are on the grid, so quantizing them again changes nothing.
  np.testing.assert_array_equal(np.asarray(lq.fake_quant(jnp.asarray(pos), fmt)), pos)
  codes = np.asarray(lq.quantize(jnp.asarray(block), fmt).codes)[:5]
  if scale_rule == "fp32":
    # s = amax / 7 = 2 / 7: y = [-7, -0.875, 0, 2.625, 6.125].
    np.testing.assert_array_equal(codes, [-7, -1, 0, 3, 6])
  else:
    # s = 2^ceil(log2(2 / 7)) = 0.5: y = [-4, -0.5, 0, 1.5, 3.5], ties to even.
    np.testing.assert_array_equal(codes, [-4, 0, 0, 2, 4])


def test_int4_grid_block_is_fixed():
  block = np.zeros(32, np.float32)
  block[:5] = np.array([-7, -1, 0, 3, 7], np.float32) * 0.25
  fmt = _fmt("mxint4", scale_rule="fp32")
  np.testing.assert_array_equal(np.asarray(lq.fake_quant(jnp.asarray(block), fmt)), block)
  codes = np.asarray(lq.quantize(jnp.asarray(block), fmt).codes)[:5]
  np.testing.assert_array_equal(codes, [-7, -1, 0, 3, 7])


def test_mxint8_symmetric_clip_at_127_7():
  # The OCP rule gives this block the scale 2^(floor(log2 127.7) - 6) = 1,
  # so +-127.7 round to +-128 and the clip range decides.
  x = jnp.zeros(32).at[0].set(127.7).at[1].set(-127.7)
  sym = lq.quantize(x, _fmt("mxint8", scale_rule="ocp"))
  assert int(np.asarray(sym.scales)[0]) == 127  # UE8M0 code of 2^0
  np.testing.assert_array_equal(np.asarray(sym.codes)[:2], [127, -127])
  np.testing.assert_array_equal(np.asarray(lq.fake_quant(-x, _fmt("mxint8", scale_rule="ocp"))),
                                -np.asarray(lq.dequantize(sym)))
  asym = lq.quantize(x, _fmt("mxint8", scale_rule="ocp", clip="asymmetric"))
  np.testing.assert_array_equal(np.asarray(asym.codes)[:2], [127, -128])


def test_symmetric_int_never_emits_min_code():
  x = jnp.asarray(_heavy_tailed((64, 64), seed=19))
  for name in ("mxint8", "mxint6", "mxint4", "nvint4", "int8_per_channel"):
    fmt = lq.get_format(name)
    codes = np.asarray(lq.quantize(-jnp.abs(x), fmt).codes)
    assert codes.min() >= -fmt.qmax


def test_asymmetric_int_can_emit_min_code():
  # A BF16 scale makes |x| / s land on 127.5 or 128 for some values.
  fmt = _fmt("mxint8", scale_rule="fp32", clip="asymmetric", scale_arith="bf16", block_size=1)
  x = -jnp.abs(jax.random.normal(jax.random.key(0), (4096,)))
  codes = np.asarray(lq.quantize(x, fmt).codes)
  assert codes.min() == -128


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_sign_symmetry(name):
  x = jnp.asarray(_heavy_tailed((8, 64), seed=23))
  np.testing.assert_array_equal(np.asarray(_fake_quant(-x, name, -1)),
                                -np.asarray(_fake_quant(x, name, -1)))


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_finite_input_gives_finite_output(name):
  # Includes blocks near float32's maximum, whose rounded-up dequantized
  # values would overflow without saturation.
  rng = np.random.default_rng(29)
  x = (rng.standard_normal((6, 64)) * np.exp2(rng.integers(-120, 120, (6, 1)))).astype(np.float32)
  x[0, :] = np.float32(3.0e38) * rng.choice([-1, 1], 64)
  got = np.asarray(_fake_quant(jnp.asarray(x), name, -1))
  assert np.all(np.isfinite(got))


@pytest.mark.parametrize("name", ALL_FORMATS)
@pytest.mark.parametrize("bad", (np.nan, np.inf, -np.inf))
def test_non_finite_poisons_only_its_block(name, bad):
  fmt = lq.get_format(name)
  x = _heavy_tailed((4, 64), seed=31)
  clean = np.asarray(_fake_quant(jnp.asarray(x), name, -1))
  x[1, 3] = bad
  got = np.asarray(_fake_quant(jnp.asarray(x), name, -1))
  qa = _quantize(jnp.asarray(x), name, -1)
  if fmt.block_size == formats.PER_TENSOR:
    assert np.all(np.isnan(got))
    return
  g = fmt.block_size if fmt.block_size > 0 else 64
  assert np.all(np.isnan(got[1, :g]))
  rows = [0, 2, 3]
  if fmt.scale_rule in formats.TWO_LEVEL_SCALE_RULES:
    # The NV tensor scale ignores non-finite values, but the poisoned block's
    # finite neighbours no longer count, so compare against that tensor.
    x_masked = x.copy()
    x_masked[1, :g] = 0
    clean = np.asarray(_fake_quant(jnp.asarray(x_masked), name, -1))
  np.testing.assert_array_equal(got[rows], clean[rows])
  np.testing.assert_array_equal(got[1, g:], clean[1, g:])
  assert np.all(np.asarray(qa.codes)[1, :g] == 0)
  np.testing.assert_array_equal(np.isnan(np.asarray(lq.dequantize(qa))), np.isnan(got))


@pytest.mark.parametrize("name", ("mxint8", "mxfp4", "nvfp4", "int8_per_channel"))
def test_nan_in_large_tensor_poisons_block(name):
  # XLA's vectorized CPU max drops NaN from 4096 elements on, so small
  # tensors alone would not catch a NaN lost in the block maximum.
  x = jax.random.normal(jax.random.key(1), (64, 1024)).at[0, 0].set(jnp.nan)
  g = lq.get_format(name).block_size
  g = 1024 if g < 0 else g
  got = np.asarray(_fake_quant(x, name, -1))
  assert np.all(np.isnan(got[0, :g]))
  assert np.all(np.isfinite(got[1:]))
  back = np.asarray(_dequantize(_quantize(x, name, -1)))
  assert np.all(np.isnan(back[0, :g]))


def test_nv_two_level_scale():
  x = _heavy_tailed((8, 64), seed=37)
  for name, qmax in (("nvfp4", 6.0), ("nvint4", 7.0)):
    qa = _quantize(jnp.asarray(x), name, -1)
    amax_t = np.float32(np.abs(x).max())
    assert float(qa.tensor_scale) == np.float32(np.float32(amax_t / np.float32(qmax)) / np.float32(448))
    block_scale = (np.abs(x).reshape(8, 4, 16).max(-1) / np.float32(qmax)).astype(np.float32)
    ratio = (block_scale / np.float32(qa.tensor_scale)).astype(np.float32)
    expected = np.minimum(ratio, 448).astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(np.asarray(qa.scales), expected.view(np.uint8))
    assert np.asarray(qa.scales).view(ml_dtypes.float8_e4m3fn).astype(np.float32).max() <= 448


@pytest.mark.parametrize("shape, axis", [((7,), 0), ((3, 5, 33), 1), ((2, 3, 4, 40), -1), ((), 0)])
def test_any_rank_and_axis(shape, axis):
  x = jnp.asarray(np.random.default_rng(41).standard_normal(shape).astype(np.float32))
  got = lq.fake_quant(x, "mxfp6", axis)
  assert got.shape == x.shape
  if x.ndim:
    moved = np.moveaxis(np.asarray(x), axis, -1)
    expected = np.moveaxis(reference.fake_quant(moved, "e2m3", 32, "ceil", -1), -1, axis)
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("dtype", (jnp.bfloat16, jnp.float16, jnp.float32))
def test_fake_quant_keeps_dtype(dtype):
  x = jnp.linspace(-3, 3, 64, dtype=dtype)
  got = lq.fake_quant(x, "mxfp8")
  assert got.dtype == dtype
  expected = reference.fake_quant(np.asarray(x, np.float32), "e4m3", 32, "ceil")
  np.testing.assert_array_equal(np.asarray(got, np.float32), expected.astype(dtype).astype(np.float32))


def test_fake_quant_gradient_is_identity():
  x = jnp.linspace(-2, 2, 64)
  grad = jax.grad(lambda v: jnp.sum(lq.fake_quant(v, "mxint4") * jnp.arange(64.0)))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.arange(64.0))


def test_fake_quant_under_vmap_equals_rows():
  x = jnp.asarray(_heavy_tailed((4, 64), seed=43))
  batched = jax.vmap(lambda r: lq.fake_quant(r, "mxfp4"))(x)
  np.testing.assert_array_equal(np.asarray(batched), np.asarray(lq.fake_quant(x, "mxfp4")))


def test_bf16_pitfall_algorithm_1():
  # Per-element scale s = bf16(d / 127) and bf16(d / s) rounds to 128 for
  # about 16.8% of N(0, 1) values in BF16 ("INT v.s. FP", arXiv 2510.25602,
  # Algorithm 1 and Table 11); in float32 never.
  # Sampled in float32 and rounded, as torch.randn(dtype=bfloat16) does.
  d = jax.random.normal(jax.random.key(0), (2048, 2048)).astype(jnp.bfloat16)
  bf16 = _fmt("mxint8", block_size=1, scale_rule="fp32", clip="asymmetric", scale_arith="bf16")
  fp32 = dataclasses.replace(bf16, scale_arith="fp32")
  negative = np.asarray(d) < 0
  codes = np.asarray(_quantize(d, bf16, -1).codes)
  share = np.mean(codes[negative] == -128)
  assert abs(share - 0.1682) < 0.002, share
  codes32 = np.asarray(_quantize(d.astype(jnp.float32), fp32, -1).codes)
  assert np.mean(codes32[negative] == -128) == 0


def test_bf16_ue8m0_scale_reaches_min_code_rarely():
  # With the exponent from bf16(log2(bf16(amax / 127))), a block max just
  # above 127 * 2^k gets scale 2^k and rounds to +-128; in float32 it never
  # does.
  x = jax.random.normal(jax.random.key(2), (2048, 1024), jnp.float32)
  emulated = _fmt("mxint8", clip="asymmetric", scale_arith="bf16")
  exact = _fmt("mxint8", clip="asymmetric")
  share = float(np.mean(np.asarray(_quantize(x, emulated, -1).codes) == -128))
  assert 1e-5 < share < 1e-3, share
  assert int(np.min(np.asarray(_quantize(x, exact, -1).codes))) > -128
  # log2(bf16(1.99375 / 127)) = -5.989 rounds to -6 in BF16, so s = 2^-6.
  block = jnp.zeros(32).at[0].set(-127.6 / 64).at[1].set(0.5)
  assert int(lq.quantize(block, emulated).codes[0]) == -128


def test_bf16_asymmetric_clip_biases_blocks():
  x = jax.random.normal(jax.random.key(1), (1024, 1024), jnp.float32)
  rms = float(jnp.sqrt(jnp.mean(x * x)))
  base = _fmt("mxint8", scale_rule="fp32", scale_arith="bf16")
  x_bf16 = x.astype(jnp.bfloat16).astype(jnp.float32)
  errors = {}
  for clip in ("asymmetric", "symmetric"):
    x_hat = _fake_quant(x, dataclasses.replace(base, clip=clip), -1)
    errors[clip] = float(jnp.mean(x_hat - x_bf16)) / rms
  assert errors["asymmetric"] < -2e-5
  assert abs(errors["symmetric"]) < 0.2 * abs(errors["asymmetric"])


def test_invalid_inputs_raise():
  with pytest.raises(ValueError, match=r"invalid axis 2 .*\[-2, 2\)"):
    lq.fake_quant(jnp.ones((2, 2)), "mxfp4", axis=2)
  with pytest.raises(ValueError, match="invalid axis 1.0"):
    lq.fake_quant(jnp.ones((2, 2)), "mxfp4", axis=1.0)
  with pytest.raises(ValueError, match="non-empty"):
    lq.fake_quant(jnp.zeros((0, 32)), "mxint8")
  with pytest.raises(ValueError, match="float dtype"):
    lq.quantize(jnp.ones((2, 2), jnp.int32), "mxfp4")
  with pytest.raises(ValueError, match="unknown format 'mxfp5'"):
    lq.fake_quant(jnp.ones(4), "mxfp5")
