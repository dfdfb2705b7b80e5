"""Per-example gradients against a Python loop of single-example gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cropi import gradients
from cropi import objectives
from cropi import projection
from tests.cropi import helpers

LOSS = objectives.make_prompt_loss(helpers.log_prob_fn)
PARAMS = helpers.init_lm(0)
STORE = helpers.make_store(num_prompts=7, behaviour_params=helpers.init_lm(5))
BATCH = {k: jnp.asarray(v) for k, v in STORE.examples().items()}


def _loop_reference(loss_fn, params, batch):
  rows = []
  for i in range(gradients.batch_size(batch)):
    example = jax.tree.map(lambda x: x[i], batch)
    grad = jax.grad(loss_fn)(params, example)
    rows.append(np.concatenate([np.ravel(np.asarray(g, np.float32)) for g in jax.tree.leaves(grad)]))
  return np.stack(rows)


@pytest.fixture(scope="module")
def reference():
  return _loop_reference(LOSS, PARAMS, BATCH)


def _relative_error(got, expected):
  return float(np.max(np.abs(np.asarray(got) - expected)) / np.max(np.abs(expected)))


def test_vmapped_gradients_equal_a_python_loop(reference):
  got = gradients.per_example_grads(LOSS, PARAMS, BATCH)
  assert got.shape == (7, gradients.flat_size(PARAMS))
  assert got.dtype == jnp.float32
  assert _relative_error(got, reference) < 1e-5
  # The degenerate prompt (all rewards equal) has an all-zero row, the others do not.
  zero_rows = np.flatnonzero(~np.any(np.asarray(got) != 0, axis=1))
  assert zero_rows.tolist() == [1]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50])
def test_chunked_gradients_equal_unchunked(reference, chunk_size):
  got = gradients.per_example_grads(LOSS, PARAMS, BATCH, chunk_size=chunk_size)
  assert got.shape == reference.shape
  assert _relative_error(got, reference) < 1e-5


def test_projection_inside_the_chunks_equals_projecting_afterwards(reference):
  matrix = jax.random.normal(jax.random.key(1), (reference.shape[1], 5))

  @jax.tree_util.Partial
  def project(rows):
    return rows @ matrix

  got = gradients.per_example_grads(LOSS, PARAMS, BATCH, chunk_size=3, projector=project)
  np.testing.assert_allclose(got, reference @ np.asarray(matrix), rtol=1e-4, atol=1e-6)


def test_flatten_order_and_float32_readout():
  tree = {"b": jnp.ones((2,), jnp.bfloat16), "a": jnp.arange(3.0)}
  flat = gradients.flatten(tree)
  assert flat.dtype == jnp.float32
  np.testing.assert_array_equal(flat, [0.0, 1.0, 2.0, 1.0, 1.0])


def test_bfloat16_params_give_float32_rows():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
  got = gradients.per_example_grads(LOSS, params, BATCH, chunk_size=4)
  assert got.dtype == jnp.float32
  assert got.shape == (7, gradients.flat_size(PARAMS))


def test_working_memory_follows_chunk_size():
  params = {"w": jnp.ones((128, 128))}

  def loss(p, example):
    return jnp.sum(jnp.tanh(example["x"] @ p["w"]) ** 2)

  def temp_bytes(n, chunk):
    batch = {"x": jnp.ones((n, 16, 128))}
    compiled = gradients._chunked_static.lower(params, batch, loss_fn=loss, chunk_size=chunk,
                                        projector=None).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
      pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes

  small, large = temp_bytes(16, 4), temp_bytes(128, 4)
  assert large <= small * 1.1  # eight times the examples, the same working memory
  assert temp_bytes(128, 32) > 2 * large  # a bigger chunk does need more


def test_axis_zero_contract_is_checked():
  with pytest.raises(ValueError, match="disagree on the example axis 0"):
    gradients.per_example_grads(LOSS, PARAMS, {**BATCH, "rewards": BATCH["rewards"][:3]})
  with pytest.raises(ValueError, match="is a scalar"):
    gradients.per_example_grads(LOSS, PARAMS, {**BATCH, "rewards": jnp.float32(1.0)})
  with pytest.raises(ValueError, match="no array leaves"):
    gradients.per_example_grads(LOSS, PARAMS, {})


@pytest.mark.parametrize("chunk_size", [0, -2, 2.5])
def test_bad_chunk_size_raises(chunk_size):
  with pytest.raises(ValueError, match=f"invalid chunk_size {chunk_size}"):
    gradients.per_example_grads(LOSS, PARAMS, BATCH, chunk_size=chunk_size)


def test_empty_batch_gives_an_empty_matrix():
  empty = jax.tree.map(lambda x: x[:0], BATCH)
  assert gradients.per_example_grads(LOSS, PARAMS, empty).shape == (0, gradients.flat_size(PARAMS))


def test_compiles_once_per_shape():
  calls = []

  def loss(p, example):
    calls.append(1)  # runs only while tracing
    return jnp.sum(p * example["x"])

  batch = {"x": jnp.ones((6, 3))}
  for _ in range(3):
    gradients.per_example_grads(loss, jnp.ones(3), batch, chunk_size=2)
  assert len(calls) == 1


def test_dense_projector_is_passed_as_an_argument(reference):
  projector = projection.make_projector(reference.shape[1], 6, kind="sparse", keep_ratio=0.5, seed=4)
  dense = projector.dense()
  got = gradients.per_example_grads(LOSS, PARAMS, BATCH, chunk_size=3, projector=dense)
  blockwise = gradients.per_example_grads(LOSS, PARAMS, BATCH, chunk_size=3, projector=projector)
  np.testing.assert_allclose(got, blockwise, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got, reference @ projector.materialize(), rtol=1e-4, atol=1e-6)
  lowered = gradients._chunked_dynamic.lower(PARAMS, BATCH, dense, loss_fn=LOSS, chunk_size=3)
  argument_shapes = [info.shape for info in jax.tree.leaves(lowered.args_info)]
  assert (reference.shape[1], 6) in argument_shapes  # the matrix is an argument, not a constant
