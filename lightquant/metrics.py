"""Quantization error metrics: QSNR and block crest factor."""

import jax
import jax.numpy as jnp

from lightquant import formats
from lightquant import quantization


def qsnr(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Quantization signal-to-noise ratio in dB over the whole tensor.

  ``QSNR = -10 log10(||x - x_hat||^2 / ||x||^2)``, accumulated in float32.
  An exact reconstruction gives +inf; an all-zero `x` with a nonzero error
  gives -inf.
  """
  x = jnp.asarray(x, jnp.float32)
  err = jnp.sum(jnp.square(x - jnp.asarray(x_hat, jnp.float32)))
  return 10.0 * (jnp.log10(jnp.sum(jnp.square(x))) - jnp.log10(err))


def crest_factor(x: jax.Array, block_size: int = 32, axis: int = -1) -> jax.Array:
  """Crest factor ``max|x| / RMS(x)`` of every block along `axis`.

  Args:
    x: float array.
    block_size: elements per block, or `formats.PER_CHANNEL` for whole rows.
      A ragged last block's RMS counts only its real elements.
    axis: the blocked axis.

  Returns:
    float32 array with x's shape, `axis` replaced by the number of blocks.
    All-zero blocks give NaN.
  """
  if block_size <= 0 and block_size != formats.PER_CHANNEL:
    raise ValueError(
        f"invalid block_size {block_size}; expected a positive int or "
        f"{formats.PER_CHANNEL} (per-channel)"
    )
  fmt = formats.Format("crest", "int8", block_size=block_size)
  axis = quantization._normalize_axis(axis, x.ndim)
  x = jnp.asarray(x, jnp.float32)
  xb = jnp.abs(quantization._to_blocks(x, axis, fmt))  # G at axis + 1
  ones = jnp.ones((x.shape[axis],), jnp.float32)
  counts = jnp.sum(quantization._to_blocks(ones, 0, fmt), axis=-1)  # [NB]
  counts = counts.reshape((-1,) + (1,) * (x.ndim - axis - 1))
  rms = jnp.sqrt(jnp.sum(jnp.square(xb), axis=axis + 1) / counts)
  return jnp.max(xb, axis=axis + 1) / rms
