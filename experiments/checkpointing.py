"""Orbax checkpoints of the training state and the data-iterator position.

Resume order:
1. Build the abstract train state with `jax.eval_shape` and its shardings.
2. Restore the newest checkpoint into those shardings.
3. Restore the data-iterator step and the metrics that belong to it.
4. Drop metric lines logged after that step, then continue at step + 1.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` with the `ocp.args` API."""

  def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """Step of the newest complete checkpoint, or None."""
    return self.manager.latest_step()

  def save(self, step: int, state: Any, extra: dict) -> None:
    """Save the train state pytree and a JSON dict (data position, metrics)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)))
    self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restore (state, extra) of `step` into the shardings of `abstract_state`."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return restored.state, dict(restored.extra)

  def close(self) -> None:
    self.manager.close()


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with shardings, the restore target of `state`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      state)
