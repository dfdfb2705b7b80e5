"""Device mesh, FSDP parameter shardings and batch sharding with jax.sharding.

The mesh has two axes: "data" (batch split, parameters replicated) and
"fsdp" (batch split too, and each parameter split along its largest axis
that the fsdp size divides). A 1 x 1 mesh is plain single-device training.
"""

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  """Build the ("data", "fsdp") mesh; data=-1 takes all remaining devices."""
  # The runner builds the mesh in more than one place, and the distributed
  # client may start only once per process.
  if mesh_config.multi_host and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  devices = jax.devices()
  fsdp = mesh_config.fsdp
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"invalid mesh.fsdp {fsdp}; it must divide the {len(devices)} devices")
  data = len(devices) // fsdp if mesh_config.data == -1 else mesh_config.data
  if data < 1 or data * fsdp != len(devices):
    raise ValueError(f"invalid mesh.data {mesh_config.data} with mesh.fsdp {fsdp}: "
                     f"data * fsdp must equal the {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def _param_spec(shape, fsdp: int) -> P:
  """Split the largest axis that fsdp divides; replicate small or odd arrays."""
  if fsdp == 1 or not shape:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0 and shape[axis] >= fsdp:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for every leaf of an abstract train state."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, _param_spec(x.shape, fsdp)), abstract_state)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Place a host batch on the mesh, split along the batch axis."""
  size = mesh.shape["data"] * mesh.shape["fsdp"]
  out = {}
  for name, value in batch.items():
    if value.shape[0] % size:
      raise ValueError(f"batch size {value.shape[0]} is not a multiple of the {size} devices "
                       "of the data and fsdp axes; change train.batch_size")
    spec = P(BATCH_AXES, *([None] * (value.ndim - 1)))
    out[name] = jax.device_put(value, NamedSharding(mesh, spec))
  return out
