"""Mesh construction from the config."""

import jax
import ml_collections
import pytest

from experiments import sharding


def _mesh_config(multi_host):
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "multi_host": multi_host})


def test_distributed_client_starts_only_once(monkeypatch):
  calls = []
  state = {"started": False}

  def initialize():
    calls.append(1)
    state["started"] = True

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: state["started"])
  for _ in range(3):
    mesh = sharding.make_mesh(_mesh_config(True))
  assert calls == [1]
  assert mesh.shape["data"] == len(jax.devices())


def test_single_host_never_starts_the_client(monkeypatch):
  monkeypatch.setattr(jax.distributed, "initialize", lambda: pytest.fail("initialize was called"))
  sharding.make_mesh(_mesh_config(False))
