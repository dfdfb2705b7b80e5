"""Shared fixtures of the plt tests."""

import jax
import pytest


@pytest.fixture(scope="package", autouse=True)
def highest_matmul_precision():
  """Run float32 matmuls at full precision, so CPU and GPU results agree within the tolerances.

  The previous setting comes back after the last plt test, so other test
  packages in the same session keep theirs.
  """
  previous = jax.config.jax_default_matmul_precision
  jax.config.update("jax_default_matmul_precision", "highest")
  yield
  jax.config.update("jax_default_matmul_precision", previous)
