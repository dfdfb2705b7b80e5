"""Blockwise random projection against dense references, moment checks and its mask."""

import doctest
import fractions
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from cropi import projection
from cropi.projection import PROJECTION_KINDS, make_projector


# Most tests share one configuration and batch shape, because every distinct
# (kind, kept dimension, proj_dim, block_size, density, batch shape) costs an XLA
# compilation. d_keep = 700 rows in blocks of 300 leaves a ragged last block.
DIM, PROJ_DIM, KEEP_RATIO, BLOCK_SIZE, ROWS = 1000, 64, 0.7, 300, 8


def _small_projector(kind: str = "gaussian", seed: int = 0, **kwargs) -> projection.Projector:
  arguments = dict(kind=kind, keep_ratio=KEEP_RATIO, seed=seed, block_size=BLOCK_SIZE)
  arguments.update(kwargs)
  return make_projector(DIM, PROJ_DIM, **arguments)


def _normal(seed: int, shape: tuple) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _float64_product(x, matrix) -> np.ndarray:
  return np.asarray(x, np.float64) @ np.asarray(matrix, np.float64)


def test_docstring_examples_run():
  failures, _ = doctest.testmod(projection, optionflags=doctest.ELLIPSIS,
                                extraglobs={"jnp": jnp})
  assert failures == 0


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_projection_is_linear(kind):
  projector = _small_projector(kind, seed=1)
  a = _normal(0, (3, DIM))
  b = _normal(1, (2, DIM))
  batch = np.concatenate([a, b, a[:2] + b, a.mean(axis=0, keepdims=True)])
  projected = np.asarray(projector(batch))
  pa, pb = projected[:3], projected[3:5]
  np.testing.assert_allclose(projected[5:7], pa[:2] + pb, rtol=0, atol=1e-4)
  np.testing.assert_allclose(projected[7], pa.mean(axis=0), rtol=0, atol=2e-5)


def test_gaussian_projection_meets_jl_bound():
  d, k, n = 2**16, 4096, 200
  x = _normal(2, (n, d))
  projected = np.asarray(make_projector(d, k, kind="gaussian", seed=3)(x), np.float64)

  gram = _float64_product(x, x.T)
  projected_gram = projected @ projected.T
  norms = np.sqrt(np.diag(gram))
  bound = 4.0 * np.outer(norms, norms) / math.sqrt(k)
  pairs = np.triu_indices(n, 1)
  within = np.abs(projected_gram - gram)[pairs] <= bound[pairs]
  assert within.mean() >= 0.99

  norm_ratio = np.diag(projected_gram) / np.diag(gram)
  assert norm_ratio.min() >= 0.85
  assert norm_ratio.max() <= 1.15


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_blockwise_matches_dense_matrix(kind):
  projector = _small_projector(kind, seed=4)
  assert projector.d_keep == 700
  x = _normal(5, (ROWS, DIM))
  projected = np.asarray(projector(x))
  np.testing.assert_allclose(projected, _float64_product(x, projector.materialize()),
                             rtol=0, atol=2e-5)

  np.testing.assert_array_equal(np.asarray(_small_projector(kind, seed=4)(x)), projected)
  np.testing.assert_array_equal(np.asarray(projector(x)), projected)
  assert not np.allclose(np.asarray(_small_projector(kind, seed=5)(x)), projected)


def test_matrix_follows_documented_key_derivation():
  # Rebuilds the Gaussian matrix from the documented recipe with jax.random
  # directly: split PRNGKey(seed) into (mask key, matrix key), keep the sorted
  # first d_keep entries of a permutation, and draw block i from fold_in(matrix key, i).
  d, k, block_size, seed = 500, 32, 128, 11
  projector = make_projector(d, k, kind="gaussian", keep_ratio=0.6, seed=seed, block_size=block_size)
  mask_key, matrix_key = jax.random.split(jax.random.PRNGKey(seed))
  kept = np.sort(np.asarray(jax.random.permutation(mask_key, d))[:300])
  blocks = [np.asarray(jax.random.normal(jax.random.fold_in(matrix_key, i), (block_size, k)))
            for i in range(3)]
  expected = np.zeros((d, k), np.float32)
  expected[kept] = np.concatenate(blocks)[:300] * np.float32(1 / math.sqrt(k))

  np.testing.assert_array_equal(projector.kept_indices, kept)
  np.testing.assert_allclose(projector.materialize(), expected, rtol=1e-6, atol=0)
  x = _normal(12, (4, d))
  np.testing.assert_allclose(np.asarray(projector(x)), _float64_product(x, expected),
                             rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_generated_blocks_differ(kind):
  matrix = make_projector(4096, 256, kind=kind, seed=6, block_size=512).materialize()
  for i in range(1, 8):
    assert not np.array_equal(matrix[:512], matrix[512 * i:512 * (i + 1)])


def test_gaussian_entries_have_moments_of_normal():
  k = 256
  entries = make_projector(4096, k, kind="gaussian", seed=7, block_size=512).materialize().ravel()
  n = entries.size
  scaled = entries * math.sqrt(k)  # N(0, 1) if correct
  assert abs(scaled.mean()) < 5 / math.sqrt(n)
  assert abs(scaled.var() - 1.0) < 5 * math.sqrt(2 / n)
  kurtosis = np.mean(scaled.astype(np.float64)**4) / scaled.var()**2
  assert abs(kurtosis - 3.0) < 5 * math.sqrt(24 / n)


def test_gaussian_columns_are_nearly_orthogonal():
  d, k = 4096, 256
  matrix = make_projector(d, k, kind="gaussian", seed=8, block_size=512).materialize().astype(np.float64)
  gram = matrix.T @ matrix  # diagonal d / k, off-diagonal standard deviation sqrt(d) / k
  off_diagonal = gram[~np.eye(k, dtype=bool)]
  np.testing.assert_allclose(np.diag(gram), d / k, rtol=0.15)
  assert np.abs(off_diagonal).max() < 6 * math.sqrt(d) / k


def test_rademacher_entries_are_independent_signs():
  d, k = 4096, 256
  matrix = make_projector(d, k, kind="rademacher", seed=9, block_size=512).materialize()
  value = np.float32(1 / math.sqrt(k))
  assert set(np.unique(matrix).tolist()) == {-value, value}

  signs = np.sign(matrix).astype(np.float64)
  n = signs.size
  assert abs(signs.mean()) < 5 / math.sqrt(n)
  # Neighbouring signs share a generated 32-bit word, so check their products.
  for shift in (1, 31, 32):
    products = signs[:, shift:] * signs[:, :-shift]
    assert abs(products.mean()) < 5 / math.sqrt(products.size), shift
  vertical = signs[1:] * signs[:-1]
  assert abs(vertical.mean()) < 5 / math.sqrt(vertical.size)
  off_diagonal = (signs.T @ signs)[~np.eye(k, dtype=bool)]
  assert np.abs(off_diagonal).max() < 6 * math.sqrt(d)


@pytest.mark.parametrize("density", (None, 0.05, 1 / 3, 1.0))
def test_sparse_entries_have_independent_zeros(density):
  d, k = 4096, 256
  projector = make_projector(d, k, kind="sparse", seed=10, density=density, block_size=512)
  p = projector.density
  assert p == (1 / 64 if density is None else density)
  matrix = projector.materialize()
  value = np.float32(1 / math.sqrt(p * k))
  assert set(np.unique(matrix).tolist()) <= {-value, 0.0, value}

  nonzero = matrix != 0
  n = nonzero.size
  binomial_sd = math.sqrt(n * p * (1 - p))
  assert abs(nonzero.sum() - n * p) <= 5 * binomial_sd + 1
  assert abs((matrix > 0).sum() - (matrix < 0).sum()) <= 5 * math.sqrt(n * p) + 1
  assert abs(np.mean(matrix.astype(np.float64)**2) * k - 1.0) < 0.03

  if p == 1.0:
    return
  # Independent zeros: nonzero counts per row and per column are binomial,
  # all-zero rows occur at the rate (1 - p)^k, and neighbours are uncorrelated.
  row_counts = nonzero.sum(axis=1)
  column_counts = nonzero.sum(axis=0)
  assert 0.85 < row_counts.var() / (k * p * (1 - p)) < 1.15
  assert 0.6 < column_counts.var() / (d * p * (1 - p)) < 1.4
  expected_empty_rows = d * (1 - p)**k
  assert abs(np.sum(row_counts == 0) - expected_empty_rows) <= 5 * math.sqrt(expected_empty_rows) + 1
  both_nonzero = np.sum(nonzero[:, 1:] & nonzero[:, :-1])
  pairs = d * (k - 1)
  assert abs(both_nonzero - pairs * p * p) <= 5 * math.sqrt(pairs * p * p) + 1


@pytest.mark.parametrize("input_dim, keep_ratio", [(100, 0.29), (1000, 0.1), (17, 0.5), (2**16, 0.01), (7, 1.0)])
def test_kept_indices_are_sorted_unique_subset(input_dim, keep_ratio):
  projector = make_projector(input_dim, 8, keep_ratio=keep_ratio, seed=13)
  # The count intended by the decimal ratio, computed exactly.
  expected_count = int(fractions.Fraction(str(keep_ratio)) * input_dim)
  kept = projector.kept_indices
  assert projector.d_keep == expected_count
  assert kept.shape == (expected_count,)
  assert np.issubdtype(kept.dtype, np.integer)
  assert np.all(np.diff(kept) > 0)
  assert kept.min() >= 0
  assert kept.max() < input_dim
  assert projector.kept_indices is kept  # cached


def test_mask_differs_between_seeds():
  first = make_projector(1000, 8, keep_ratio=0.5, seed=0).kept_indices
  second = make_projector(1000, 8, keep_ratio=0.5, seed=1).kept_indices
  assert not np.array_equal(first, second)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_mask_then_plain_projection(kind):
  masked = _small_projector(kind, seed=14)
  plain = make_projector(masked.d_keep, PROJ_DIM, kind=kind, seed=14, block_size=BLOCK_SIZE,
                         density=masked.density)
  kept = masked.kept_indices
  x = _normal(15, (ROWS, DIM))
  np.testing.assert_allclose(np.asarray(masked(x)), np.asarray(plain(x[:, kept])), rtol=0, atol=1e-6)

  matrix = masked.materialize()
  dropped = np.setdiff1d(np.arange(DIM), kept)
  assert np.all(matrix[dropped] == 0)
  np.testing.assert_array_equal(matrix[kept], plain.materialize())


def test_full_keep_ratio_means_no_dropout():
  projector = make_projector(DIM, PROJ_DIM, keep_ratio=1.0, seed=16, block_size=BLOCK_SIZE)
  np.testing.assert_array_equal(projector.kept_indices, np.arange(DIM))
  matrix = projector.materialize()
  assert not np.any(np.all(matrix == 0, axis=1))
  x = _normal(17, (ROWS, DIM))
  assert "gather" not in str(jax.make_jaxpr(projector)(x))
  assert "gather" in str(jax.make_jaxpr(_small_projector())(x))
  np.testing.assert_allclose(np.asarray(projector(x)), _float64_product(x, matrix), rtol=0, atol=1e-5)


def test_same_mask_for_training_and_validation_batches():
  projector = _small_projector(seed=18)
  kept = projector.kept_indices
  dropped = np.setdiff1d(np.arange(DIM), kept)
  matrix = projector.materialize()
  basis = np.eye(DIM, dtype=np.float32)
  train_coordinates = [dropped[0], kept[0], dropped[1], kept[1], dropped[2], kept[2], kept[3], kept[4]]
  valid_coordinates = [kept[0], dropped[0], kept[5], kept[6], dropped[3], dropped[4], kept[1], kept[7]]

  # A basis vector e_j projects onto row j of the matrix, which is zero
  # exactly when j is dropped.
  for coordinates in (train_coordinates, valid_coordinates):
    projected = np.asarray(projector(basis[coordinates]))
    for row, j in enumerate(coordinates):
      np.testing.assert_allclose(projected[row], matrix[j], rtol=0, atol=1e-7)
      assert np.any(projected[row] != 0) == (j in kept), j
  np.testing.assert_array_equal(projector.kept_indices, kept)


@pytest.mark.parametrize("kind", PROJECTION_KINDS)
def test_thousand_dims_to_512_keep_norm(kind):
  x = _normal(19, (32, 1000))
  for seed in range(5):
    projected = np.asarray(make_projector(1000, 512, kind=kind, seed=seed)(x[0]))
    assert projected.shape == (512,)
    assert np.any(projected != 0)
    ratio = np.linalg.norm(projected) / np.linalg.norm(x[0])
    assert 0.9 < ratio < 1.1, (seed, ratio)
  dropout = make_projector(1000, 512, kind="sparse", keep_ratio=0.1, seed=0)
  assert np.all(np.any(np.asarray(dropout(x)) != 0, axis=1))


@pytest.mark.parametrize("kind, keep_ratio", [(kind, 1.0) for kind in PROJECTION_KINDS] + [("sparse", 0.1)])
def test_rows_independent_of_batch(kind, keep_ratio):
  projector = make_projector(1000, 512, kind=kind, keep_ratio=keep_ratio, seed=20)
  x = _normal(21, (32, 1000))
  batch_of_32 = np.asarray(projector(x))
  batch_of_8 = np.asarray(projector(x[8:16]))
  # XLA:CPU picks matmul blocking by shape, so the float32 sums can differ in
  # the last bits between batch sizes (seen with keep_ratio < 1 and for a
  # single row). A mask or matrix that depended on the batch would differ by O(1).
  np.testing.assert_allclose(batch_of_8, batch_of_32[8:16], rtol=0, atol=1e-5)
  if keep_ratio == 1.0:
    single = np.asarray(projector(x[9]))
    np.testing.assert_allclose(single, batch_of_32[9], rtol=0, atol=1e-5)


def test_float16_input_flushes_tiny_entries():
  half = _small_projector(seed=22, input_dtype=jnp.float16)
  full = _small_projector(seed=22)
  x = _normal(23, (ROWS, DIM)) * 1e-3
  x[:, ::3] = 1e-8  # below half of float16's smallest subnormal, 2**-25
  x[3] = 1e-8
  rounded = x.astype(np.float16).astype(np.float32)
  assert np.all(rounded[:, ::3] == 0)

  np.testing.assert_allclose(np.asarray(half(x)), np.asarray(full(rounded)), rtol=0, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(half(x))[3], 0.0)
  assert np.all(np.asarray(full(x))[3] != 0)


def test_bfloat16_input_rounds_like_ml_dtypes():
  x = _normal(24, (ROWS, DIM))
  rounded = x.astype(ml_dtypes.bfloat16).astype(np.float32)
  half = _small_projector("rademacher", seed=25, input_dtype=jnp.bfloat16)
  full = _small_projector("rademacher", seed=25)
  np.testing.assert_allclose(np.asarray(half(x)), np.asarray(full(rounded)), rtol=0, atol=1e-5)
  assert not np.allclose(np.asarray(half(x)), np.asarray(full(x)), rtol=0, atol=1e-6)


def test_non_finite_inputs_propagate_to_their_row():
  projector = _small_projector("sparse", seed=26)
  kept = projector.kept_indices
  dropped = np.setdiff1d(np.arange(DIM), kept)
  x = _normal(27, (ROWS, DIM))
  clean = np.asarray(projector(x))
  x[1, kept[3]] = np.nan
  x[2, kept[7]] = np.inf
  x[3, dropped[0]] = np.nan  # never read

  projected = np.asarray(projector(x))
  assert np.all(~np.isfinite(projected[1]))
  assert np.all(~np.isfinite(projected[2]))
  for row in (0, 3, 4, 5, 6, 7):
    np.testing.assert_array_equal(projected[row], clean[row])


def test_float16_overflow_becomes_non_finite():
  projector = _small_projector(seed=28, input_dtype=jnp.float16)
  x = np.ones((ROWS, DIM), np.float32)
  x[0, projector.kept_indices[5]] = 1e5  # above float16's maximum 65504
  projected = np.asarray(projector(x))
  assert np.all(~np.isfinite(projected[0]))
  assert np.all(np.isfinite(projected[1:]))


def test_works_under_jit_vmap_and_lax_map():
  projector = _small_projector("sparse", seed=29)
  x = _normal(30, (3, ROWS, DIM))
  matrix = projector.materialize()
  expected = np.stack([_float64_product(batch, matrix) for batch in x])

  jitted = jax.jit(lambda p, v: p(v), static_argnums=0)
  np.testing.assert_allclose(np.asarray(jitted(projector, x[0])), expected[0], rtol=0, atol=1e-5)
  twin = _small_projector("sparse", seed=29)
  assert twin == projector
  assert hash(twin) == hash(projector)
  np.testing.assert_allclose(np.asarray(jitted(twin, x[1])), expected[1], rtol=0, atol=1e-5)

  np.testing.assert_allclose(np.asarray(jax.vmap(projector)(x)), expected, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.vmap(projector)(x[0])), expected[0], rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.lax.map(projector, x)), expected, rtol=0, atol=1e-5)


def test_mask_first_built_inside_jit():
  # A seed used by no other test, so the cached mask is first computed while
  # jit traces the projector.
  projector = _small_projector(seed=4242)
  x = _normal(31, (ROWS, DIM))
  projected = jax.jit(lambda v: projector(v))(x)
  np.testing.assert_allclose(np.asarray(projected), _float64_product(x, projector.materialize()),
                             rtol=0, atol=1e-5)


def test_default_block_size_fits_budget():
  projector = make_projector(2**20, 2048)
  assert projector.block_size == 2048
  assert projector.block_size * projector.proj_dim * 4 <= projection.DEFAULT_BLOCK_BYTES
  assert make_projector(2**20, 3000).block_size == projection.DEFAULT_BLOCK_BYTES // (4 * 3000)
  assert make_projector(1000, 64).block_size == 1000
  assert make_projector(1000, 64, keep_ratio=0.5, block_size=4096).block_size == 500


def test_wrong_input_shape_raises():
  projector = make_projector(100, 8)
  with pytest.raises(ValueError, match=r"invalid input shape \(4, 99\).*input_dim 100"):
    projector(jnp.ones((4, 99)))
  with pytest.raises(ValueError, match=r"invalid input shape \(2, 3, 100\)"):
    projector(jnp.ones((2, 3, 100)))
  with pytest.raises(ValueError, match="invalid input dtype complex64"):
    projector(jnp.ones((2, 100), jnp.complex64))
  with pytest.raises(ValueError, match=r"input_dim 100"):
    jax.jit(projector)(jnp.ones((4, 99)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="hadamard"), r"invalid kind 'hadamard'; expected one of \('gaussian', 'rademacher', 'sparse'\)"),
    (dict(input_dim=0), r"invalid input_dim 0; expected a positive integer"),
    (dict(input_dim=-5), r"invalid input_dim -5"),
    (dict(input_dim=10.0), r"invalid input_dim 10.0"),
    (dict(proj_dim=0), r"invalid proj_dim 0; expected a positive integer"),
    (dict(keep_ratio=0.0), r"invalid keep_ratio 0.0; expected a number in \(0, 1\]"),
    (dict(keep_ratio=1.5), r"invalid keep_ratio 1.5"),
    (dict(keep_ratio=float("nan")), r"invalid keep_ratio nan"),
    (dict(keep_ratio=0.001), r"invalid keep_ratio 0.001 for input_dim 100: it keeps no coordinates"),
    (dict(kind="sparse", density=0.0), r"invalid density 0.0; expected a number in \(0, 1\]"),
    (dict(kind="sparse", density=1.2), r"invalid density 1.2"),
    (dict(kind="gaussian", density=0.1), r"invalid density 0.1 for kind 'gaussian'"),
    (dict(kind="rademacher", density=0.1), r"invalid density 0.1 for kind 'rademacher'"),
    (dict(block_size=0), r"invalid block_size 0; expected a positive integer or None"),
    (dict(block_size=-3), r"invalid block_size -3"),
    (dict(input_dtype=jnp.int8), r"invalid input_dtype int8; expected a float dtype"),
    (dict(input_dtype="not a dtype"), r"invalid input_dtype 'not a dtype'; expected a float dtype"),
    (dict(seed=-1), r"invalid seed -1; expected an integer in \[0, 2\*\*32\)"),
    (dict(seed=2**32), r"invalid seed 4294967296"),
])
def test_invalid_arguments_raise(kwargs, message):
  arguments = dict(input_dim=100, proj_dim=8)
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=message):
    make_projector(**arguments)
