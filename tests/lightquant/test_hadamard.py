"""Random Hadamard rotation: orthogonality and invariance of GEMM products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightquant import hadamard


@pytest.mark.parametrize("h", (1, 2, 16, 32, 128))
def test_sylvester_matrix_is_hadamard(h):
  m = hadamard.hadamard_matrix(h)
  assert set(np.unique(m).tolist()) <= {-1.0, 1.0}
  np.testing.assert_array_equal(m @ m.T, h * np.eye(h))


@pytest.mark.parametrize("h", (16, 32))
def test_rotation_matrix_is_orthogonal(h):
  r = np.asarray(hadamard.rotation_matrix(hadamard.random_signs(jax.random.key(h), h)))
  assert np.linalg.norm(r @ r.T - np.eye(h)) < 1e-6


def test_signs_come_from_the_key():
  a = hadamard.random_signs(jax.random.key(0), 64)
  b = hadamard.random_signs(jax.random.key(0), 64)
  c = hadamard.random_signs(jax.random.key(1), 64)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  assert set(np.unique(np.asarray(a)).tolist()) == {-1.0, 1.0}


def test_rotate_is_block_diagonal_matmul():
  signs = hadamard.random_signs(jax.random.key(2), 16)
  x = jax.random.normal(jax.random.key(3), (5, 48))
  r = np.asarray(hadamard.rotation_matrix(signs))
  expected = np.asarray(x) @ np.kron(np.eye(3), r)
  np.testing.assert_allclose(np.asarray(hadamard.rotate(x, signs, -1)), expected, atol=1e-5)


def test_rotated_product_is_unchanged():
  signs = hadamard.random_signs(jax.random.key(4), 32)
  x = jax.random.normal(jax.random.key(5), (8, 64))
  w = jax.random.normal(jax.random.key(6), (16, 64))
  got = hadamard.rotate(x, signs, 1) @ hadamard.rotate(w, signs, 1).T
  np.testing.assert_allclose(np.asarray(got), np.asarray(x @ w.T), rtol=1e-5, atol=1e-4)


def test_unrotate_inverts_rotate_on_any_axis():
  signs = hadamard.random_signs(jax.random.key(7), 8)
  x = jax.random.normal(jax.random.key(8), (16, 3, 5))
  back = hadamard.unrotate(hadamard.rotate(x, signs, 0), signs, 0)
  np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-6)


def test_rotation_keeps_dtype():
  signs = hadamard.random_signs(jax.random.key(9), 16)
  x = jnp.ones((2, 32), jnp.bfloat16)
  assert hadamard.rotate(x, signs).dtype == jnp.bfloat16


def test_invalid_sizes_raise():
  with pytest.raises(ValueError, match="power of two"):
    hadamard.hadamard_matrix(12)
  signs = hadamard.random_signs(jax.random.key(0), 16)
  with pytest.raises(ValueError, match="not a multiple of the Hadamard size 16"):
    hadamard.rotate(jnp.ones((2, 24)), signs)
