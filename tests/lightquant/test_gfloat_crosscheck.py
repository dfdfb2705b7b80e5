"""The OCP scale rule against Graphcore's gfloat block quantizer (test-only dependency)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import lightquant as lq

gfloat = pytest.importorskip("gfloat")
from gfloat import formats as gformats  # pylint: disable=g-import-not-at-top

# lightquant format -> gfloat block format with the same element.
PAIRS = {
    "mxfp8": gformats.format_info_mxfp8_e4m3,
    "mxfp8_e5m2": gformats.format_info_mxfp8_e5m2,
    "mxfp6": gformats.format_info_mxfp6_e2m3,
    "mxfp6_e3m2": gformats.format_info_mxfp6_e3m2,
    "mxfp4": gformats.format_info_mxfp4_e2m1,
    "mxint8": gformats.format_info_mxint8,
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_ocp_rule_matches_gfloat(name):
  rng = np.random.default_rng(0)
  blocks = (rng.standard_t(3, (64, 32)) * np.exp2(rng.integers(-20, 20, (64, 1)))).astype(np.float32)
  fmt = dataclasses.replace(lq.get_format(name), scale_rule="ocp")
  got = np.asarray(lq.fake_quant(jnp.asarray(blocks), fmt, -1), np.float64)
  expected = np.stack([
      gfloat.quantize_block(PAIRS[name], block.astype(np.float64), gfloat.compute_scale_amax)
      for block in blocks
  ])
  np.testing.assert_array_equal(got, expected)
