"""Orbax checkpoints of the train state together with the loop's host state (data position,
early-stopping and divergence bookkeeping), restored from the latest complete step."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from scalinglab.train.state import TrainState

log = logging.getLogger(__name__)


def open_manager(directory: str | Path, keep: int) -> ocp.CheckpointManager:
    """A synchronous CheckpointManager; orbax writes to a temp dir and renames on completion,
    so a step that appears in `all_steps()` finished writing."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save(
    manager: ocp.CheckpointManager, state: TrainState, host: dict[str, Any], force: bool = False
) -> None:
    """Save state and the JSON host state at `state.step`."""
    step = int(state.step)
    if step in manager.all_steps():
        return
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)),
        force=force,
    )
    manager.wait_until_finished()


def restore_latest(
    manager: ocp.CheckpointManager, target: TrainState
) -> tuple[TrainState, dict[str, Any]] | None:
    """Restore the newest readable checkpoint; a corrupt one is deleted with a warning and the
    previous one is tried. None when there is nothing to restore."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            out = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()
                ),
            )
            return out["state"], dict(out["host"])
        except Exception as e:  # noqa: BLE001 - any failure to read means "corrupt"
            first = str(e).splitlines()[0][:200] if str(e) else ""
            warnings.warn(
                f"checkpoint at step {step} is unreadable ({type(e).__name__}: {first}); "
                "falling back to an earlier one",
                RuntimeWarning,
                stacklevel=2,
            )
            try:
                manager.delete(step)
            except Exception:  # noqa: BLE001
                log.warning("could not delete corrupt checkpoint %s", step)
    return None
