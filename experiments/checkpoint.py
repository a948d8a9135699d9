"""Orbax checkpoints of a run (parameters, optimizer state, step, data-iterator state): save, resume, fall back."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A checkpoint read back: the step it was taken after and the state at that point."""

    step: int
    params: Any
    opt_state: Any
    data_state: dict


class Checkpointer:
    """One orbax CheckpointManager per run directory.

    Saves are asynchronous (training continues while the files are written) and atomic (orbax
    writes into a temporary folder and renames it when complete), so a run killed mid-save leaves
    the previous checkpoint intact. `max_to_keep` bounds the disk used; None keeps every one.
    """

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # leftovers of a save that a kill interrupted
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict, *, wait: bool = False) -> None:
        """Start saving the state after `step` steps; `wait` blocks until it is on disk."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                data=ocp.args.JsonSave(data_state),
            ),
            force=True,
        )
        if wait:
            self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any) -> Restored | None:
        """The newest readable checkpoint, or None when there is none.

        A checkpoint that cannot be read (a file truncated or removed after it was written) is
        skipped with a warning naming it, and the one before it is tried: a damaged latest
        checkpoint costs the steps since the previous one, not the run.
        """
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        params=ocp.args.StandardRestore(abstract_params),
                        opt_state=ocp.args.StandardRestore(abstract_opt_state),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # noqa: BLE001 - any failure to read means: fall back
                log.warning("checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one",
                            step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            return Restored(step, restored.params, restored.opt_state, dict(restored.data))
        return None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of a pytree of arrays (or of shapes): the restore target. Shardings come
    from `shardings` (a matching tree) when given, else from the arrays themselves."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
