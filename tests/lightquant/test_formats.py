"""The format registry and its validation."""

import dataclasses

import numpy as np
import pytest

import lightquant as lq

EXPECTED = {
    # name: (element, block size, scale rule, bits per element incl. scales)
    "mxfp8": ("e4m3", 32, "ceil", 8.25),
    "mxfp8_e5m2": ("e5m2", 32, "ceil", 8.25),
    "mxfp6": ("e2m3", 32, "ceil", 6.25),
    "mxfp6_e3m2": ("e3m2", 32, "ceil", 6.25),
    "mxfp4": ("e2m1", 32, "ceil", 4.25),
    "mxint8": ("int8", 32, "ceil", 8.25),
    "mxint6": ("int6", 32, "ceil", 6.25),
    "mxint4": ("int4", 32, "ceil", 4.25),
    "nvfp4": ("e2m1", 16, "nv", 4.5),
    "nvint4": ("int4", 16, "nv", 4.5),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_formats(name):
  fmt = lq.get_format(name)
  element, block, rule, bits = EXPECTED[name]
  assert fmt.element == element
  assert fmt.block_size == block
  assert fmt.scale_rule == rule
  assert fmt.bits_per_element() == bits
  assert fmt.clip == "symmetric"


@pytest.mark.parametrize("name", ("int8_per_channel", "int8_per_tensor", "fp8_per_channel",
                                  "fp8_per_tensor"))
def test_coarse_baselines(name):
  fmt = lq.get_format(name)
  assert fmt.scale_rule == "fp32"
  assert fmt.block_size in (lq.PER_CHANNEL, lq.PER_TENSOR)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown format 'mxfp3'.*mxfp8.*nvint4"):
    lq.get_format("mxfp3")


def test_replace_makes_sweeps():
  fmt = dataclasses.replace(lq.get_format("mxint8"), block_size=128, scale_rule="ocp")
  assert fmt.block_size == 128
  assert fmt.scale_rule == "ocp"
  assert fmt.label == "mxint8[block_size=128,scale_rule=ocp]"
  assert lq.get_format("mxint8").label == "mxint8"


@pytest.mark.parametrize("field, value, message", [
    ("block_size", 0, "invalid block_size 0"),
    ("block_size", -3, "invalid block_size -3"),
    ("scale_rule", "up", "invalid scale_rule 'up'.*'ceil'"),
    ("clip", "wide", "invalid clip 'wide'"),
    ("rounding", "stochastic", "invalid rounding 'stochastic'"),
    ("scale_arith", "fp16", "invalid scale_arith 'fp16'"),
    ("element", "int3", "invalid element 'int3'"),
])
def test_invalid_fields_raise(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(lq.get_format("mxint8"), **{field: value})


def test_numpy_int_block_size_is_accepted():
  fmt = dataclasses.replace(lq.get_format("mxint8"), block_size=np.int64(16))
  assert fmt.block_size == 16
  assert type(fmt.block_size) is int


def test_asymmetric_clip_is_int_only():
  with pytest.raises(ValueError, match="FP grids are symmetric"):
    dataclasses.replace(lq.get_format("mxfp8"), clip="asymmetric")


def test_formats_are_frozen_and_hashable():
  fmt = lq.get_format("nvfp4")
  with pytest.raises(dataclasses.FrozenInstanceError):
    fmt.block_size = 32
  assert hash(fmt) == hash(dataclasses.replace(fmt))
