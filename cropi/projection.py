"""Blockwise random projection of flattened gradients, with coordinate dropout.

CROPI ("Data-Efficient RLVR via Off-Policy Influence Guidance", Zhu et al.,
arXiv 2510.26491) compresses every per-prompt policy gradient, a vector of
length d, to k dimensions before it computes cosine influence scores. It drops
a random subset of coordinates and then applies a sparse random projection.
This module computes

  ``y = x[kept] @ R / sqrt(k)``,  R in R^{d_keep x k} with iid unit-variance entries,

so that ``E ||y||^2 = ||x[kept]||^2`` and inner products are preserved in
expectation (Johnson-Lindenstrauss). The entries of R are Gaussian, Rademacher
(+-1, Achlioptas 2003, "Database-friendly random projections") or sparse
(+-1/sqrt(density) with probability density/2 each, else 0). Achlioptas's
sparse matrix is density = 1/3, and Li, Hastie and Church 2006 ("Very sparse
random projections") recommend density = 1/sqrt(d).

R is never stored. It is generated in blocks of `block_size` rows inside a
loop, so memory grows with block_size * k instead of d * k.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

PROJECTION_KINDS = ("gaussian", "rademacher", "sparse")

# Default size of one generated block of R (block_size x proj_dim float32).
DEFAULT_BLOCK_BYTES = 16 * 2**20

# PRNGKey keeps only the low 32 bits of a seed when 64-bit types are disabled,
# so larger or negative seeds would collide with seeds in this range.
_MAX_SEED = 2**32 - 1


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _kept_count(input_dim: int, keep_ratio: float) -> int:
  # A relative tolerance of 1e-9 makes decimal ratios count as written:
  # 0.29 * 100 is 28.999999999999996 in binary floating point, and 29 is meant.
  product = keep_ratio * input_dim
  return int(math.floor(product + 1e-9 * product))


def _default_block_size(proj_dim: int, d_keep: int) -> int:
  return max(1, min(d_keep, DEFAULT_BLOCK_BYTES // (4 * proj_dim)))


def _seed_keys(seed: int) -> tuple:
  """Split the seed into the (mask key, matrix key) pair."""
  keys = jax.random.split(jax.random.PRNGKey(seed))
  return keys[0], keys[1]


@functools.lru_cache(maxsize=16)
def _kept_indices(input_dim: int, d_keep: int, seed: int) -> np.ndarray:
  index_dtype = np.int32 if input_dim <= np.iinfo(np.int32).max else np.int64
  if d_keep == input_dim:
    indices = np.arange(input_dim, dtype=index_dtype)
  else:
    # Evaluate eagerly even when the first call happens inside a jit trace,
    # because the mask must be a concrete constant.
    with jax.ensure_compile_time_eval():
      mask_key, _ = _seed_keys(seed)
      permutation = np.asarray(jax.random.permutation(mask_key, input_dim))
    indices = np.sort(permutation[:d_keep]).astype(index_dtype)
  # Every caller receives the same cached array, so it must stay unmodified.
  indices.setflags(write=False)
  return indices


def _random_block(projector: "Projector", matrix_key: jax.Array, index) -> jax.Array:
  """Generate block `index` of R / sqrt(k), shape [block_size, proj_dim] float32."""
  key = jax.random.fold_in(matrix_key, index)
  shape = (projector.block_size, projector.proj_dim)
  if projector.kind == "gaussian":
    scale = np.float32(1.0 / math.sqrt(projector.proj_dim))
    return jax.random.normal(key, shape, jnp.float32) * scale
  if projector.kind == "rademacher":
    # Each uniform 32-bit word supplies the signs of 32 entries, which costs
    # 32 times fewer generator calls than one word per entry.
    scale = np.float32(1.0 / math.sqrt(projector.proj_dim))
    num_words = -(-projector.proj_dim // 32)
    words = jax.random.bits(key, (projector.block_size, num_words), jnp.uint32)
    bits = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & np.uint32(1)
    bits = bits.reshape(projector.block_size, num_words * 32)[:, :projector.proj_dim]
    return jnp.where(bits == 1, scale, -scale)

  # Sparse: compare one uniform 32-bit word per entry with two thresholds.
  # bits < t gives +v and bits >= 2^32 - t gives -v, each with probability
  # t / 2^32 = density / 2, and the rest are zero. Counting the negative range
  # from the top keeps 2^32 - t inside uint32 when density = 1. Rounding t to
  # an integer changes the density by a relative 0.5 / t, below 1e-3 for
  # density >= 1e-6.
  value = np.float32(1.0 / math.sqrt(projector.density * projector.proj_dim))
  threshold = max(1, round(projector.density * 2.0**31))
  bits = jax.random.bits(key, shape, jnp.uint32)
  positive = bits < np.uint32(threshold)
  negative = bits >= np.uint32(2**32 - threshold)
  return jnp.where(positive, value, jnp.where(negative, -value, np.float32(0.0)))


def _matrix_config(projector: "Projector") -> "Projector":
  """Drop the fields that do not shape the compiled loop.

  The seed becomes a traced argument, and the mask and the input rounding act
  before the loop, so projectors that differ only in these share one
  compilation.
  """
  return dataclasses.replace(projector, input_dim=projector.d_keep, keep_ratio=1.0, seed=0,
                             input_dtype=np.dtype(np.float32))


@functools.partial(jax.jit, static_argnums=0)
def _project_rows(projector: "Projector", seed: jax.Array, x: jax.Array) -> jax.Array:
  """Project the kept, rounded inputs x: [N, d_keep] float32 -> [N, k]."""
  num_rows = x.shape[0]
  block_size = projector.block_size
  num_blocks = -(-projector.d_keep // block_size)
  # Zero padding meets the extra generated rows of the last block, so the
  # result equals the product with the truncated matrix.
  x = jnp.pad(x, ((0, 0), (0, num_blocks * block_size - projector.d_keep)))
  _, matrix_key = _seed_keys(seed)

  def add_block(index, total):
    x_block = jax.lax.dynamic_slice_in_dim(x, index * block_size, block_size, axis=1)
    r_block = _random_block(projector, matrix_key, index)
    # HIGHEST keeps full float32 precision on GPUs that default to TF32.
    return total + jnp.dot(x_block, r_block, precision=jax.lax.Precision.HIGHEST)

  total = jnp.zeros((num_rows, projector.proj_dim), jnp.float32)
  return jax.lax.fori_loop(0, num_blocks, add_block, total)


@functools.partial(jax.jit, static_argnums=0)
def _all_blocks(projector: "Projector", seed: jax.Array) -> jax.Array:
  _, matrix_key = _seed_keys(seed)
  num_blocks = -(-projector.d_keep // projector.block_size)
  blocks = jax.lax.map(lambda index: _random_block(projector, matrix_key, index),
                       jnp.arange(num_blocks))
  return blocks.reshape(num_blocks * projector.block_size, projector.proj_dim)


@dataclasses.dataclass(frozen=True)
class Projector:
  """Seeded random projection from input_dim to proj_dim coordinates.

  Build it with `make_projector`, which checks the arguments and resolves the
  defaults. All fields are plain hashable values, so a Projector can be a
  static argument of `jax.jit`. Two projectors with equal fields compute the
  same map. R depends on block_size too, because block i is drawn from
  ``fold_in(matrix_key, i)``.

  Attributes:
    input_dim: length d of the input vectors.
    proj_dim: length k of the projected vectors.
    kind: distribution of the entries of R, one of PROJECTION_KINDS.
    keep_ratio: fraction q in (0, 1] of the coordinates that are kept.
    seed: integer in [0, 2^32) that fixes the mask and R.
    block_size: rows of R generated per loop step.
    density: probability that an entry of a "sparse" R is nonzero. None for
      the other kinds.
    input_dtype: dtype the kept inputs are rounded to before projecting.
  """

  input_dim: int
  proj_dim: int
  kind: str
  keep_ratio: float
  seed: int
  block_size: int
  density: float | None
  input_dtype: np.dtype

  def __post_init__(self):
    _check_arguments(self.input_dim, self.proj_dim, self.kind, self.keep_ratio, self.seed,
                     self.block_size, self.density)
    if self.block_size is None:
      raise ValueError("invalid block_size None; make_projector resolves the default")
    if self.kind == "sparse" and self.density is None:
      raise ValueError("invalid density None for kind 'sparse'; make_projector resolves the default")
    # Store a canonical np.dtype so that equal dtypes also hash equally.
    object.__setattr__(self, "input_dtype", _check_input_dtype(self.input_dtype))

  @property
  def d_keep(self) -> int:
    """Number of kept coordinates, floor(keep_ratio * input_dim)."""
    return _kept_count(self.input_dim, self.keep_ratio)

  @property
  def kept_indices(self) -> np.ndarray:
    """Sorted indices of the kept coordinates, shape [d_keep], read-only.

    They are the first d_keep entries of a permutation of range(input_dim)
    drawn from the mask key, then sorted. Every vector projected by this
    projector uses the same mask. The dtype is int32, or int64 for input_dim
    above 2^31 - 1. The result is cached per (input_dim, d_keep, seed).
    """
    return _kept_indices(self.input_dim, self.d_keep, self.seed)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Project the rows of x: ``x[:, kept] @ R / sqrt(proj_dim)``.

    NOTE: every call generates R again. On a 2-core CPU the Gaussian and
    sparse kinds cost about ten times a dense product with a stored R, and
    Rademacher about 1.2 times. When d_keep * proj_dim fits in memory,
    `dense()` or projecting many rows per call is faster.

    The kept inputs are rounded to input_dtype and back to float32, and the
    products are accumulated in float32. Rounding to float16 turns magnitudes
    above 65504 into Inf and flushes those at or below 2^-25 (about 3e-8) to
    zero.

    A NaN or Inf in a kept coordinate makes the whole output row non-finite,
    because every output coordinate reads every kept input. Non-finite values
    in dropped coordinates are never read.

    The mask and R do not depend on the batch, so each output row is a
    function of its input row only, up to float32 rounding. XLA picks matmul
    kernels and summation orders by shape, so a row projected in batches of
    different sizes, or eagerly and under jit, can differ in the last bits
    (observed on XLA:CPU for some dimensions).

    Works on traced arrays inside `jax.jit`, `jax.vmap` and `lax.map`.

    Args:
      x: [N, input_dim] array of real numbers, or a single [input_dim] vector.

    Returns:
      float32 array of shape [N, proj_dim], or [proj_dim] for a vector input.

    Raises:
      ValueError: if x is not 1-D or 2-D, or its last axis is not input_dim.

    Example:
      >>> projector = make_projector(1000, 64, kind="sparse", keep_ratio=0.5)
      >>> projector(jnp.ones((8, 1000))).shape
      (8, 64)
    """
    x = jnp.asarray(x)
    if x.ndim not in (1, 2):
      raise ValueError(
          f"invalid input shape {x.shape}; expected [N, {self.input_dim}] or [{self.input_dim}]")
    if x.shape[-1] != self.input_dim:
      raise ValueError(
          f"invalid input shape {x.shape}: the last axis has length {x.shape[-1]}, "
          f"but this projector expects input_dim {self.input_dim}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
      raise ValueError(f"invalid input dtype {x.dtype}; expected a real float or integer dtype")

    rows = x.reshape(-1, self.input_dim)
    if self.d_keep < self.input_dim:
      # NOTE: under jit the indices become a constant of d_keep integers in the
      # compiled program, which is large for input_dim in the billions.
      rows = jnp.take(rows, jnp.asarray(self.kept_indices), axis=1)
    rows = rows.astype(self.input_dtype).astype(jnp.float32)
    projected = _project_rows(_matrix_config(self), np.uint32(self.seed), rows)
    return projected.reshape(x.shape[:-1] + (self.proj_dim,))

  def materialize(self) -> np.ndarray:
    """Build the dense [input_dim, proj_dim] float32 matrix that __call__ applies.

    Rows of dropped coordinates are zero. ``projector(x)`` equals
    ``x @ projector.materialize()`` up to the order of float32 summation,
    except for the input_dtype rounding, which acts on x. Needs
    input_dim * proj_dim * 4 bytes, so use it for tests and small d only.
    """
    kept_rows = np.asarray(_all_blocks(_matrix_config(self), np.uint32(self.seed)))[:self.d_keep]
    matrix = np.zeros((self.input_dim, self.proj_dim), np.float32)
    matrix[self.kept_indices] = kept_rows
    return matrix

  def dense(self) -> jax.tree_util.Partial:
    """Return the same map with R generated once and kept: a pytree callable [N, d] -> [N, k].

    ``projector.dense()(x)`` equals ``projector(x)`` up to float32 summation
    order, and costs one matrix product per call instead of generating R
    again. It takes input_dim * proj_dim * 4 bytes of memory. Being a pytree whose
    matrix is a leaf, it can be passed to `cropi.per_example_grads`, which
    then hands the matrix to the compiled program as an argument rather than
    baking it in as a constant.
    """
    return jax.tree_util.Partial(_dense_fn(jnp.dtype(self.input_dtype).name),
                                 jnp.asarray(self.materialize()))


def _apply_dense(matrix: jax.Array, x: jax.Array, *, input_dtype: str) -> jax.Array:
  rows = jnp.asarray(x).astype(input_dtype).astype(jnp.float32)
  return rows @ matrix


@functools.lru_cache(maxsize=None)
def _dense_fn(input_dtype: str):
  # One function object per dtype, so dense projectors share compiled programs.
  return functools.partial(_apply_dense, input_dtype=input_dtype)


def _check_arguments(input_dim, proj_dim, kind, keep_ratio, seed, block_size, density) -> None:
  if kind not in PROJECTION_KINDS:
    raise ValueError(f"invalid kind {kind!r}; expected one of {PROJECTION_KINDS}")
  if not _is_int(input_dim) or input_dim <= 0:
    raise ValueError(f"invalid input_dim {input_dim!r}; expected a positive integer")
  if not _is_int(proj_dim) or proj_dim <= 0:
    raise ValueError(f"invalid proj_dim {proj_dim!r}; expected a positive integer")
  if not _is_real(keep_ratio) or not 0.0 < keep_ratio <= 1.0:
    raise ValueError(f"invalid keep_ratio {keep_ratio!r}; expected a number in (0, 1]")
  if _kept_count(input_dim, keep_ratio) == 0:
    raise ValueError(
        f"invalid keep_ratio {keep_ratio!r} for input_dim {input_dim}: it keeps no "
        f"coordinates; expected keep_ratio >= 1 / input_dim = {1.0 / input_dim:.3g}")
  if not _is_int(seed) or not 0 <= seed <= _MAX_SEED:
    raise ValueError(f"invalid seed {seed!r}; expected an integer in [0, 2**32)")
  if block_size is not None and (not _is_int(block_size) or block_size <= 0):
    raise ValueError(f"invalid block_size {block_size!r}; expected a positive integer or None")
  if density is not None:
    if kind != "sparse":
      raise ValueError(
          f"invalid density {density!r} for kind {kind!r}; density applies only to kind 'sparse', "
          f"so pass density=None")
    if not _is_real(density) or not 0.0 < density <= 1.0:
      raise ValueError(f"invalid density {density!r}; expected a number in (0, 1] or None")


def _check_input_dtype(dtype) -> np.dtype:
  try:
    dtype = jnp.dtype(dtype)
  except TypeError:
    raise ValueError(
        f"invalid input_dtype {dtype!r}; expected a float dtype such as "
        f"jnp.float32, jnp.float16 or jnp.bfloat16") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"invalid input_dtype {dtype}; expected a float dtype such as "
        f"jnp.float32, jnp.float16 or jnp.bfloat16")
  return dtype


def make_projector(input_dim: int, proj_dim: int, kind: str = "gaussian", keep_ratio: float = 1.0,
                   seed: int = 0, block_size: int | None = None, density: float | None = None,
                   input_dtype=jnp.float32) -> Projector:
  """Build a seeded projector from input_dim to proj_dim coordinates.

  The projector keeps d_keep = floor(keep_ratio * input_dim) coordinates,
  chosen by the mask key, and multiplies them by R / sqrt(proj_dim). R has
  iid entries drawn from the matrix key:

  * "gaussian": N(0, 1).
  * "rademacher": +-1 with probability 1/2 each (Achlioptas 2003).
  * "sparse": +-1/sqrt(density) with probability density/2 each, else 0. The
    default density 1/sqrt(d_keep) is the "very sparse" choice of Li, Hastie
    and Church 2006, and density = 1/3 gives Achlioptas's sparse matrix.

  Both keys come from splitting ``jax.random.PRNGKey(seed)`` in two. The
  entries have unit variance, so ``E ||P x||^2 = ||x[kept]||^2``, which is
  ``||x||^2`` when keep_ratio = 1. With keep_ratio = 1 nothing is gathered.

  Args:
    input_dim: length d of the input vectors.
    proj_dim: length k of the projected vectors.
    kind: one of PROJECTION_KINDS.
    keep_ratio: fraction of coordinates kept by the dropout mask, in (0, 1].
    seed: integer in [0, 2^32). Equal seeds give bit-identical outputs for
      the same input and batch shape.
    block_size: rows of R generated per loop step. The default makes one
      block at most DEFAULT_BLOCK_BYTES (16 MiB) of float32. Values above
      d_keep are lowered to d_keep. R depends on the resolved block size.
    density: nonzero probability for kind "sparse", in (0, 1]. Must be None
      for the other kinds.
    input_dtype: float dtype that the kept inputs are rounded to before
      projecting. jnp.float16 or jnp.bfloat16 emulates implementations that
      cast gradients to half precision first. The default float32 leaves the
      inputs unchanged.

  Returns:
    A frozen, hashable Projector. Calling it maps [N, input_dim] to
    [N, proj_dim] float32.

  Raises:
    ValueError: naming the invalid argument and the accepted values.

  Example:
    >>> projector = make_projector(4096, 256, kind="sparse", keep_ratio=0.1, seed=3)
    >>> projector.d_keep
    409
    >>> projector(jnp.ones((2, 4096))).shape
    (2, 256)
  """
  _check_arguments(input_dim, proj_dim, kind, keep_ratio, seed, block_size, density)
  dtype = _check_input_dtype(input_dtype)
  input_dim, proj_dim, seed, keep_ratio = int(input_dim), int(proj_dim), int(seed), float(keep_ratio)
  d_keep = _kept_count(input_dim, keep_ratio)
  if block_size is None:
    block_size = _default_block_size(proj_dim, d_keep)
  block_size = min(int(block_size), d_keep)
  if kind == "sparse":
    density = 1.0 / math.sqrt(d_keep) if density is None else float(density)
  return Projector(input_dim=input_dim, proj_dim=proj_dim, kind=kind, keep_ratio=keep_ratio,
                   seed=seed, block_size=block_size, density=density, input_dtype=dtype)
