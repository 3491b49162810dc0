"""orbax checkpoints of a train state plus JSON side data (data-iterator state, stage
bookkeeping). Every process writes its shards; reads and writes go through one manager."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """`CheckpointManager` with two items: `state` (a pytree) and `extra` (JSON)."""

  def __init__(self, directory, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "extra"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, extra: dict[str, Any] | None = None) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})))
    self.manager.wait_until_finished()

  def restore(self, state_like, step: int | None = None):
    """Restores (state, extra) at `step` (default latest) into the structure of `state_like`."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["extra"] or {})

  def close(self) -> None:
    self.manager.close()

  def restore_field(self, field: str, like, step: int | None = None):
    """Partial restore: only `state.<field>` (e.g. the optimizer state of a pre-training
    run) into the structure of `like`, read through a second manager on the same
    directory (orbax restores a subtree with PyTreeRestore(partial_restore=True), which
    the StandardSave manager itself does not accept)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = {field: jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
    with ocp.CheckpointManager(self.directory, item_names=("state", "extra")) as reader:
      restored = reader.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item=abstract, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))
    return restored["state"][field]
