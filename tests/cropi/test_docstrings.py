"""The examples in cropi's docstrings run and print what they show."""

import doctest
import importlib

import pytest

MODULES = ["objectives", "gradients", "rollouts", "influence", "selection", "diagnostics",
           "curriculum"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(f"cropi.{name}")
  failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert failures == 0
