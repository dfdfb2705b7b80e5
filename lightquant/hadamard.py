"""Random Hadamard rotation (RHT), block-diagonal along one axis.

``R = D H_h / sqrt(h)`` with ``H_h`` the Sylvester Hadamard matrix of a
power-of-two size h and ``D`` a diagonal of random signs. The same h x h matrix
acts on every contiguous h-chunk of the axis, aligned with quantization blocks.
R is orthogonal, so rotating both GEMM operands along their contraction axis
leaves the product unchanged: ``(X R)(W R)^T = X W^T``. Used in "INT v.s. FP"
(Chen et al., arXiv 2510.25602, Section 5) with h = 32 for MX formats and 16
for NV formats.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _check_size(h: int) -> None:
  if not isinstance(h, (int, np.integer)) or h < 1 or h & (h - 1):
    raise ValueError(f"invalid Hadamard size {h!r}; expected a power of two >= 1")


def hadamard_matrix(h: int) -> np.ndarray:
  """Sylvester Hadamard matrix of size h (entries +-1, ``H H^T = h I``)."""
  _check_size(h)
  m = np.ones((1, 1), np.float32)
  while m.shape[0] < h:
    m = np.block([[m, m], [m, -m]])
  return m


def random_signs(key: jax.Array, h: int) -> jax.Array:
  """h independent random signs (+-1 float32) drawn from a PRNG key."""
  _check_size(h)
  return jnp.where(jax.random.bernoulli(key, 0.5, (h,)), 1.0, -1.0).astype(jnp.float32)


def rotation_matrix(signs: jax.Array) -> jax.Array:
  """Build the orthogonal matrix ``R = diag(signs) H / sqrt(h)``."""
  h = signs.shape[0]
  return signs[:, None] * jnp.asarray(hadamard_matrix(h)) / np.sqrt(h).astype(np.float32)


def _apply(x: jax.Array, signs: jax.Array, axis: int, inverse: bool) -> jax.Array:
  h = signs.shape[-1]
  _check_size(h)
  axis = axis % x.ndim
  n = x.shape[axis]
  if n % h:
    raise ValueError(
        f"axis {axis} has length {n}, which is not a multiple of the Hadamard "
        f"size {h}; pad the axis or pick a size that divides it"
    )
  r = rotation_matrix(signs.astype(jnp.float32))
  if inverse:
    r = r.T
  xt = jnp.moveaxis(x, axis, -1)
  chunks = xt.reshape(*xt.shape[:-1], n // h, h).astype(jnp.float32)
  # HIGHEST keeps float32 products exact on GPUs that default to TF32.
  out = jnp.einsum("...ch,hk->...ck", chunks, r, precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(out.reshape(xt.shape), -1, axis).astype(x.dtype)


def rotate(x: jax.Array, signs: jax.Array, axis: int = -1) -> jax.Array:
  """Compute ``x R`` on every h-chunk along `axis` (h = len(signs)).

  Args:
    x: array whose `axis` length is a multiple of h.
    signs: [h] random signs from `random_signs`.
    axis: the rotated axis.

  Returns:
    The rotated array, same shape and dtype (computed in float32).
  """
  return _apply(x, signs, axis, inverse=False)


def unrotate(x: jax.Array, signs: jax.Array, axis: int = -1) -> jax.Array:
  """Undo `rotate`: compute ``x R^T`` on every h-chunk along `axis`."""
  return _apply(x, signs, axis, inverse=True)
