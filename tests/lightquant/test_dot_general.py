"""The quantized dot_general against lax.dot_general and a six-quantization reference."""

import dataclasses

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lightquant as lq
from lightquant import hadamard
from tests.lightquant import reference

# (lhs shape, rhs shape, dimension numbers): a plain linear layer, a
# transposed weight, batch dims with two contracting dims, and an outer product.
DIMENSION_CASES = [
    ((6, 5, 8), (8, 4), (((2,), (0,)), ((), ()))),
    ((3, 8), (5, 8), (((1,), (1,)), ((), ()))),
    ((2, 6, 3, 4), (2, 4, 3, 5), (((2, 3), (2, 1)), ((0,), (0,)))),
    ((4, 3), (5,), (((), ()), ((), ()))),
]
_PLAIN = lq.make_dot_general(lq.DotGeneralConfig())


def _loss(dot_general, dims):
  def loss(a, b):
    return jnp.sum(jnp.sin(dot_general(a, b, dims)))
  return loss


@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", DIMENSION_CASES)
def test_no_formats_equals_lax(lhs_shape, rhs_shape, dims):
  keys = jax.random.split(jax.random.key(0), 2)
  a = jax.random.normal(keys[0], lhs_shape)
  b = jax.random.normal(keys[1], rhs_shape)
  expected = jax.lax.dot_general(a, b, dims)
  got = _PLAIN(a, b, dims)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  grads = jax.grad(_loss(_PLAIN, dims), (0, 1))(a, b)
  expected_grads = jax.grad(_loss(jax.lax.dot_general, dims), (0, 1))(a, b)
  for g, e in zip(grads, expected_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6)


def test_no_formats_bf16_keeps_dtypes():
  dims = (((1,), (0,)), ((), ()))
  a = jax.random.normal(jax.random.key(0), (8, 64), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (64, 16), jnp.bfloat16)
  got = _PLAIN(a, b, dims)
  assert got.dtype == jnp.bfloat16
  expected = jax.lax.dot_general(a, b, dims)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                             rtol=1e-2, atol=1e-2)
  grads = jax.grad(lambda x, y: jnp.sum(_PLAIN(x, y, dims).astype(jnp.float32)), (0, 1))(a, b)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
  f32 = _PLAIN(a, b, dims, preferred_element_type=jnp.float32)
  assert f32.dtype == jnp.float32


def _outlier_problem():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 32)).astype(np.float32)
  w = rng.standard_normal((32, 32)).astype(np.float32)
  # One outlier large enough even for E4M3's range: the blocks holding it
  # differ between the K and N axes, so does the weight's quantization.
  w[5, 7] = 1.0e4
  dy = rng.standard_normal((64, 32)).astype(np.float32)
  return x, w, dy


def _tolerances(expected):
  return {"rtol": 1e-5, "atol": 1e-6 * np.abs(np.asarray(expected)).max()}


def _assert_close(got, expected):
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), **_tolerances(expected))


def _ref(x, element, axis):
  return reference.fake_quant(x, element, 32, "ceil", axis)


@pytest.mark.parametrize("name", ("mxint8", "mxfp4", "mxfp8"))
def test_six_quantizations_match_numpy(name):
  x, w, dy = _outlier_problem()
  element = lq.get_format(name).element
  dg = lq.make_dot_general(lq.DotGeneralConfig.uniform(name))
  dims = (((1,), (0,)), ((), ()))  # y = x @ w, x: [T, K], w: [K, N]
  y, vjp = jax.vjp(lambda a, b: dg(a, b, dims), jnp.asarray(x), jnp.asarray(w))
  dx, dw = vjp(jnp.asarray(dy))

  # fwd: x along K (axis 1), w along K (axis 0).
  y_ref = _ref(x, element, 1).astype(np.float64) @ _ref(w, element, 0)
  # dlhs: dy along N (axis 1), w along N (axis 1).
  dx_ref = _ref(dy, element, 1).astype(np.float64) @ _ref(w, element, 1).T
  # drhs: x along T (axis 0), dy along T (axis 0).
  dw_ref = _ref(x, element, 0).astype(np.float64).T @ _ref(dy, element, 0)

  _assert_close(y, y_ref)
  _assert_close(dx, dx_ref)
  _assert_close(dw, dw_ref)
  # The weight is quantized differently along K and along N.
  assert not np.array_equal(_ref(w, element, 0), _ref(w, element, 1))
  # Quantizing w along the wrong axis in the backward GEMM gives another dx.
  dx_wrong = _ref(dy, element, 1).astype(np.float64) @ _ref(w, element, 0).T
  assert not np.allclose(dx_wrong, dx_ref, **_tolerances(dx_ref))


def test_each_operand_has_its_own_format():
  x, w, dy = _outlier_problem()
  formats = {"fwd": ("mxint8", "mxfp4"), "dlhs": ("mxfp8", "mxint4"), "drhs": ("mxfp6", "nvfp4")}
  config = lq.DotGeneralConfig(**{k: lq.GemmConfig(*v) for k, v in formats.items()})
  dg = lq.make_dot_general(config)
  dims = (((1,), (0,)), ((), ()))
  y, vjp = jax.vjp(lambda a, b: dg(a, b, dims), jnp.asarray(x), jnp.asarray(w))
  dx, dw = vjp(jnp.asarray(dy))

  def fq(v, name, axis):
    return np.asarray(lq.fake_quant(jnp.asarray(v), name, axis), np.float64)

  _assert_close(y, fq(x, "mxint8", 1) @ fq(w, "mxfp4", 0))
  _assert_close(dx, fq(dy, "mxfp8", 1) @ fq(w, "mxint4", 1).T)
  # drhs: lhs = dy along T, rhs = x along T.
  _assert_close(dw, fq(x, "nvfp4", 0).T @ fq(dy, "mxfp6", 0))


def test_batched_dims_quantize_flattened_contraction():
  lhs_shape, rhs_shape, dims = DIMENSION_CASES[2]
  keys = jax.random.split(jax.random.key(3), 2)
  a = jax.random.normal(keys[0], lhs_shape)
  b = jax.random.normal(keys[1], rhs_shape)
  fmt = dataclasses.replace(lq.get_format("mxint4"), block_size=4)
  dg = lq.make_dot_general(lq.DotGeneralConfig.forward_only(fmt))
  got = dg(a, b, dims)
  # Contract (3, 4) of a with (3, 1) of b: flatten in that order, block by 4.
  a_flat = jnp.transpose(a, (0, 1, 2, 3)).reshape(2, 6, 12)
  b_flat = jnp.transpose(b, (0, 3, 2, 1)).reshape(2, 5, 12)
  expected = jnp.einsum("btk,bnk->btn", lq.fake_quant(a_flat, fmt, -1), lq.fake_quant(b_flat, fmt, -1))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def _primitives(jaxpr, found=None):
  """Names of all primitives in a jaxpr, sub-jaxprs included, with parents."""
  found = [] if found is None else found
  for eqn in jaxpr.eqns:
    found.append(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      inner = []
      _primitives(sub, inner)
      found.extend(f"{eqn.primitive.name}/{name}" for name in inner)
  return found


def test_custom_vjp_in_jaxpr():
  dg = lq.make_dot_general(lq.DotGeneralConfig.uniform("mxint8"))
  x = jnp.ones((4, 32))
  w = jnp.ones((32, 8))
  names = _primitives(jax.make_jaxpr(lambda a, b: dg(a, b, (((1,), (0,)), ((), ()))))(x, w).jaxpr)
  vjp_calls = [n for n in names if n.endswith("custom_vjp_call")]
  assert len(vjp_calls) == 1
  # The block amax and the GEMM both run inside the custom_vjp.
  assert any("custom_vjp_call/" in n and n.endswith("reduce_max") for n in names)
  assert any("custom_vjp_call/" in n and n.endswith("dot_general") for n in names)
  # No plain dot_general runs outside the custom rule.
  outside = [n for n in names if n.endswith("dot_general") and "custom_vjp_call/" not in n]
  assert outside == []


def test_bf16_under_scan_returns_bf16_cotangents():
  dg = lq.make_dot_general(lq.DotGeneralConfig.uniform("mxfp8"))
  x = jax.random.normal(jax.random.key(0), (8, 32), jnp.bfloat16)
  ws = jax.random.normal(jax.random.key(1), (3, 32, 32), jnp.bfloat16)

  def loss(x, ws):
    def step(h, w):
      return jnp.tanh(dg(h, w, (((1,), (0,)), ((), ())))), None
    h, _ = jax.lax.scan(step, x, ws)
    return jnp.sum(h.astype(jnp.float32))

  dx, dws = jax.jit(jax.grad(loss, (0, 1)))(x, ws)
  assert dx.dtype == jnp.bfloat16
  assert dws.dtype == jnp.bfloat16
  assert bool(jnp.all(jnp.isfinite(dws.astype(jnp.float32))))


def test_vmap_and_remat_agree_with_loop():
  dg = lq.make_dot_general(lq.DotGeneralConfig.uniform("mxint4"))
  xs = jax.random.normal(jax.random.key(2), (3, 4, 32))
  w = jax.random.normal(jax.random.key(3), (32, 16))

  def loss(x, w):
    return jnp.sum(dg(x, w, (((1,), (0,)), ((), ()))) ** 2)

  batched = jax.vmap(jax.grad(loss, 1), (0, None))(xs, w)
  looped = jnp.stack([jax.grad(loss, 1)(x, w) for x in xs])
  np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-6)
  remat = jax.grad(jax.checkpoint(loss), 1)(xs[0], w)
  np.testing.assert_array_equal(np.asarray(remat), np.asarray(looped[0]))


def test_rotation_keeps_unquantized_product():
  config = lq.DotGeneralConfig(
      fwd=lq.GemmConfig(None, None, 16), dlhs=lq.GemmConfig(None, None, 8),
      drhs=lq.GemmConfig(None, None, 4))
  dg = lq.make_dot_general(config, key=jax.random.key(0))
  dims = (((1,), (0,)), ((), ()))
  x = jax.random.normal(jax.random.key(1), (8, 32))
  w = jax.random.normal(jax.random.key(2), (32, 16))
  np.testing.assert_allclose(np.asarray(dg(x, w, dims)), np.asarray(x @ w), rtol=1e-5, atol=1e-5)
  grads = jax.grad(_loss(dg, dims), (0, 1))(x, w)
  expected = jax.grad(_loss(jax.lax.dot_general, dims), (0, 1))(x, w)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-5)


def test_rotation_quantizes_rotated_operands():
  config = lq.DotGeneralConfig.forward_only("mxint4", hadamard_size=32)
  key = jax.random.key(5)
  dg = lq.make_dot_general(config, key=key)
  x = jax.random.normal(jax.random.key(1), (8, 64))
  w = jax.random.normal(jax.random.key(2), (64, 16))
  signs = hadamard.random_signs(jax.random.fold_in(key, 0), 32)
  x_r = lq.fake_quant(hadamard.rotate(x, signs, 1), "mxint4", 1)
  w_r = lq.fake_quant(hadamard.rotate(w, signs, 0), "mxint4", 0)
  np.testing.assert_allclose(np.asarray(dg(x, w, (((1,), (0,)), ((), ())))),
                             np.asarray(x_r @ w_r), rtol=1e-5, atol=1e-5)


def test_flax_nnx_and_linen_layers():
  dg = lq.make_dot_general(lq.DotGeneralConfig.uniform("mxint8"))
  x = jax.random.normal(jax.random.key(0), (4, 64))

  layer = nnx.Linear(64, 32, dot_general=dg, rngs=nnx.Rngs(0))
  expected = lq.fake_quant(x, "mxint8", 1) @ lq.fake_quant(layer.kernel[...], "mxint8", 0) + layer.bias[...]
  np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(expected), rtol=1e-5, atol=1e-5)

  dense = nn.Dense(32, dot_general=dg)
  params = dense.init(jax.random.key(1), x)
  kernel = params["params"]["kernel"]
  expected = lq.fake_quant(x, "mxint8", 1) @ lq.fake_quant(kernel, "mxint8", 0) + params["params"]["bias"]
  np.testing.assert_allclose(np.asarray(dense.apply(params, x)), np.asarray(expected), rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(dense.apply(p, x) ** 2))(params)
  assert grads["params"]["kernel"].shape == (64, 32)


def test_low_bit_training_tracks_float32():
  # A small regression MLP trained 200 steps: MXINT8 and MXFP8 in all three
  # GEMMs should end close to the float32 loss.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((256, 32)).astype(np.float32))
  teacher = jnp.asarray(rng.standard_normal((32, 32)).astype(np.float32)) / 6
  y = jnp.tanh(x @ teacher) @ teacher

  def final_loss(config):
    dg = lq.make_dot_general(config)
    dims = (((1,), (0,)), ((), ()))
    params = {"w1": jnp.asarray(rng.standard_normal((32, 64)).astype(np.float32)) / 6,
              "w2": jnp.asarray(rng.standard_normal((64, 32)).astype(np.float32)) / 8}
    params = jax.tree.map(lambda p: p, params)

    def loss(p):
      h = jax.nn.gelu(dg(x, p["w1"], dims))
      return jnp.mean((dg(h, p["w2"], dims) - y) ** 2)

    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, s):
      value, g = jax.value_and_grad(loss)(p)
      updates, s = opt.update(g, s)
      return optax.apply_updates(p, updates), s, value

    state = opt.init(params)
    for _ in range(200):
      params, state, value = step(params, state)
    return float(loss(params))

  rng_state = rng.bit_generator.state
  losses = {}
  for name in (None, "mxint8", "mxfp8"):
    rng.bit_generator.state = rng_state  # same init for every run
    config = lq.DotGeneralConfig() if name is None else lq.DotGeneralConfig.uniform(name)
    losses[name] = final_loss(config)
  assert losses[None] < 0.02
  assert abs(losses["mxint8"] - losses[None]) < 0.1 * losses[None] + 1e-3
  assert abs(losses["mxfp8"] - losses[None]) < 0.3 * losses[None] + 1e-3


def test_invalid_configs_raise():
  with pytest.raises(ValueError, match="hadamard_size 12"):
    lq.GemmConfig("mxint8", "mxint8", 12)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    lq.make_dot_general(lq.DotGeneralConfig.uniform("mxint8", hadamard_size=32))
  with pytest.raises(ValueError, match="unknown format"):
    lq.DotGeneralConfig.uniform("int3")
  dg = lq.make_dot_general(lq.DotGeneralConfig.forward_only("mxint8", 32), key=jax.random.key(0))
  with pytest.raises(ValueError, match="not a multiple of its hadamard_size 32"):
    dg(jnp.ones((2, 48)), jnp.ones((48, 4)), (((1,), (0,)), ((), ())))
