"""ModelConfig validation and derived properties."""

import pytest

import plt
from tests.plt import helpers


@pytest.mark.parametrize("overrides, field", [
    (dict(num_loops=0), "num_loops"),
    (dict(window=0), "window"),
    (dict(variant="xl"), "variant"),
    (dict(variant="baseline", num_loops=2), "num_loops"),
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (dict(kv_share=False, gswa="gated"), "gswa"),
    (dict(gate_input="key"), "gate_input"),
    (dict(gswa="mixed"), "gswa"),
    (dict(dtype="float16"), "dtype"),
    (dict(head_dim=7), "head_dim"),
    (dict(num_layers=True), "num_layers"),
    (dict(d_model=32.0), "d_model"),
])
def test_invalid_config_names_field(overrides, field):
  with pytest.raises(ValueError, match=rf"\b{field}\b"):
    helpers.make_config(**overrides)


def test_default_config_valid():
  config = plt.ModelConfig()
  assert config.variant == "plt"


@pytest.mark.parametrize("overrides", [
    dict(kv_share=False, gswa="none"),
    dict(kv_share=False, gswa="none", num_loops=1),
    dict(variant="loop", num_loops=4),
    dict(variant="baseline", num_loops=1),
    dict(num_heads=4, num_kv_heads=4),
])
def test_valid_config_constructs(overrides):
  helpers.make_config(**overrides)


@pytest.mark.parametrize("overrides, num_caches", [
    (dict(variant="baseline", num_loops=1), 1),
    (dict(num_loops=1), 1),
    (dict(num_loops=3), 1),
    (dict(num_loops=3, kv_share=False, gswa="none"), 3),
    (dict(variant="loop", num_loops=3), 3),
])
def test_num_caches(overrides, num_caches):
  assert helpers.make_config(**overrides).num_caches == num_caches


@pytest.mark.parametrize("overrides, uses_clp, has_local_branch, has_gate_params", [
    (dict(num_loops=3), True, True, True),
    (dict(num_loops=3, gswa="fixed_half"), True, True, False),
    (dict(num_loops=3, gswa="none"), True, False, False),
    (dict(num_loops=1), False, False, False),
    (dict(variant="loop", num_loops=3), False, False, False),
])
def test_derived_flags(overrides, uses_clp, has_local_branch, has_gate_params):
  config = helpers.make_config(**overrides)
  assert config.uses_clp == uses_clp
  assert config.has_local_branch == has_local_branch
  assert config.has_gate_params == has_gate_params
