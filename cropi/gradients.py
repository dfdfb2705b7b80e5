"""Per-example gradients with bounded memory: chunked vmap(grad), flattened to float32 rows.

Axis letters: N examples (prompts), C examples per chunk, D flattened
parameters, k projected dimension.

The axis-0 contract: every leaf of a batch pytree has the example axis first,
with the same size N, and ``loss_fn(params, example)`` receives one example, that
is, every leaf with its leading axis removed. `per_example_grads` checks the
leading sizes before any work.
"""

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


def flat_size(params: Any) -> int:
  """Number of entries D of the flattened parameter pytree."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(params)))


def flatten(tree: Any) -> jax.Array:
  """Concatenate every leaf, in `jax.tree.leaves` order, into one float32 vector.

  Each leaf is cast to float32 before concatenation, so a bfloat16 model's
  gradient is read out in float32 without mixing dtypes.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((0,), jnp.float32)
  return jnp.concatenate([jnp.ravel(leaf).astype(jnp.float32) for leaf in leaves])


def batch_size(batch: Any) -> int:
  """Return the shared leading size N of a batch pytree; raise ValueError if leaves disagree."""
  leaves = jax.tree_util.tree_leaves_with_path(batch)
  if not leaves:
    raise ValueError("the batch has no array leaves; expected a pytree of arrays with axis 0 = examples")
  sizes = {}
  for path, leaf in leaves:
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(f"batch leaf {jax.tree_util.keystr(path)} is a scalar; every leaf needs a "
                       "leading example axis")
    sizes[jax.tree_util.keystr(path)] = shape[0]
  if len(set(sizes.values())) != 1:
    raise ValueError(f"batch leaves disagree on the example axis 0: {sizes}")
  return next(iter(sizes.values()))


def _pad_to(batch: Any, total: int) -> Any:
  """Pad axis 0 to `total` with copies of example 0, a valid input for any loss."""

  def pad(leaf):
    extra = total - leaf.shape[0]
    if extra == 0:
      return leaf
    return jnp.concatenate([leaf, jnp.repeat(leaf[:1], extra, axis=0)], axis=0)

  return jax.tree.map(pad, batch)


def _chunked(params, batch, *, loss_fn, chunk_size, projector):
  """Dispatch to the compiled path: pytree projectors are arguments, others are static."""
  if isinstance(projector, jax.tree_util.Partial):
    return _chunked_dynamic(params, batch, projector, loss_fn=loss_fn, chunk_size=chunk_size)
  return _chunked_static(params, batch, loss_fn=loss_fn, chunk_size=chunk_size,
                         projector=projector)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _chunked_dynamic(params, batch, projector, *, loss_fn, chunk_size):
  return _chunked_impl(params, batch, loss_fn=loss_fn, chunk_size=chunk_size, projector=projector)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size", "projector"))
def _chunked_static(params, batch, *, loss_fn, chunk_size, projector):
  return _chunked_impl(params, batch, loss_fn=loss_fn, chunk_size=chunk_size, projector=projector)


def _chunked_impl(params, batch, *, loss_fn, chunk_size, projector):
  n = batch_size(batch)
  num_chunks = -(-n // chunk_size)
  padded = _pad_to(batch, num_chunks * chunk_size)
  chunks = jax.tree.map(lambda x: x.reshape((num_chunks, chunk_size) + x.shape[1:]), padded)

  def one(example):
    return flatten(jax.grad(loss_fn)(params, example))

  def chunk_rows(chunk):
    rows_CxD = jax.vmap(one)(chunk)
    # Projecting inside the chunk keeps only C x D full gradients alive at once.
    return rows_CxD if projector is None else projector(rows_CxD)

  rows = jax.lax.map(chunk_rows, chunks)
  return rows.reshape((num_chunks * chunk_size,) + rows.shape[2:])[:n]


def per_example_grads(loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any, *,
                      chunk_size: Optional[int] = None,
                      projector: Optional[Callable[[jax.Array], jax.Array]] = None) -> jax.Array:
  """Compute one flattened float32 gradient per example: ``vmap(grad(loss_fn))`` in chunks.

  Row i is ``flatten(grad(loss_fn)(params, example_i))``, identical to a
  Python loop of single-example gradients up to float summation order. The
  examples run as a `lax.map` over chunks of `chunk_size`, each chunk
  vmapped, so the working memory of the backward passes is that of one
  chunk whatever N is. With a `projector` (for example one from
  `cropi.make_projector`) each chunk's [C, D] gradients are projected before
  the next chunk starts, so the output is [N, k] and full gradients never
  leave the device in bulk.

  The function is jitted with `loss_fn` as a static argument, and with the
  projector static too unless it is a `jax.tree_util.Partial` (such as
  ``Projector.dense()``), whose arrays are passed as arguments. Pass the same
  objects on every call to reuse the compiled program.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: the parameter pytree to differentiate.
    batch: a pytree of arrays with the examples on axis 0 (see the module
      docstring for the contract).
    chunk_size: examples per vmapped chunk; None runs all N at once. N need
      not be a multiple: the last chunk is padded with copies of example 0
      whose rows are dropped.
    projector: optional callable mapping [C, D] float32 rows to [C, k]: a
      hashable callable such as a `cropi.Projector`, or a
      `jax.tree_util.Partial`.

  Returns:
    [N, D] float32 gradients, or [N, k] with a projector.

  Example:
    >>> loss = lambda w, ex: jnp.sum(w * ex["x"]) ** 2
    >>> per_example_grads(loss, jnp.ones(2), {"x": jnp.array([[1., 0.], [1., 1.]])})
    Array([[2., 0.],
           [4., 4.]], dtype=float32)
  """
  n = batch_size(batch)
  if chunk_size is None:
    chunk_size = max(n, 1)
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"invalid chunk_size {chunk_size!r}; expected a positive int or None")
  chunk_size = int(min(chunk_size, max(n, 1)))
  if n == 0:
    width = flat_size(params) if projector is None else None
    if width is None:
      raise ValueError("an empty batch with a projector has no output width; pass N >= 1")
    return jnp.zeros((0, width), jnp.float32)
  return _chunked(params, batch, loss_fn=loss_fn, chunk_size=chunk_size, projector=projector)
