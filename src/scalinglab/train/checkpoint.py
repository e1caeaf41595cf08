"""Orbax checkpoints of the train state together with the loop's host state (data position,
early-stopping and divergence bookkeeping), restored from the latest complete step."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from scalinglab.errors import DiskFullError, RunDirError
from scalinglab.train.state import TrainState

log = logging.getLogger(__name__)

# The layout of a checkpoint (train state tree + host JSON). Raise it when a change makes old
# checkpoints unreadable; a checkpoint without the field predates versioning (format 0).
CHECKPOINT_FORMAT = 1


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
    """Save state and the JSON host state (with ``format``) at `state.step`."""
    step = int(state.step)
    if step in manager.all_steps():
        return
    directory = Path(manager.directory)
    need = sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) * 1.02 + SAVE_MARGIN_BYTES
    free = shutil.disk_usage(directory).free
    if free < need:  # refuse before orbax starts: a failed write floods the log with its threads
        raise _disk_full(
            directory, step, f"needs about {need / 1e6:.1f} MB, {free / 1e6:.1f} MB free"
        )
    host = {**host, "format": CHECKPOINT_FORMAT}
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)
            ),
            force=force,
        )
        manager.wait_until_finished()
    except Exception as e:
        if not any(sign in str(e) for sign in _NO_SPACE_SIGNS):
            raise
        for tmp in directory.glob("*.orbax-checkpoint-tmp*"):  # the half-written step
            shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_full(directory, step, "the write failed") from None


SAVE_MARGIN_BYTES = 1 << 20  # metadata, the host JSON and the directory entries of a save
# How orbax/tensorstore report ENOSPC: a ValueError whose text carries the OS message.
_NO_SPACE_SIGNS = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")


def _disk_full(directory: Path, step: int, detail: str) -> DiskFullError:
    return DiskFullError(
        f"{directory}: cannot save the checkpoint of step {step}: no space left on device "
        f"({detail}); free space and re-run with --retry-failed to resume from the last one"
    )


def restore_latest(
    manager: ocp.CheckpointManager, target: TrainState
) -> tuple[TrainState, dict[str, Any]] | None:
    """Restore the newest readable checkpoint; a corrupt one is deleted with a warning and the
    previous one is tried. None when there is nothing to restore.

    A checkpoint of another format is never deleted: one written by a newer version, or an
    older one that this version cannot read, is a ``RunDirError`` that says so.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        fmt = _format(manager, step)
        if fmt is not None and fmt > CHECKPOINT_FORMAT:
            raise RunDirError(
                f"{manager.directory / str(step)}: checkpoint format {fmt} was written by a"
                f" newer scalinglab (this one reads format {CHECKPOINT_FORMAT}); upgrade"
            )
        try:
            out = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()
                ),
            )
            host = dict(out["host"])
            host.pop("format", None)
            return out["state"], host
        except Exception as e:  # noqa: BLE001 - any failure to read means "corrupt"
            first = str(e).splitlines()[0][:200] if str(e) else ""
            if fmt is not None and fmt < CHECKPOINT_FORMAT:
                raise RunDirError(
                    f"{manager.directory / str(step)}: checkpoint format {fmt} (written by an"
                    f" older scalinglab) cannot be read by this one (format"
                    f" {CHECKPOINT_FORMAT}): {type(e).__name__}: {first}; train the trial"
                    " again in a new directory, or resume it with the older version"
                ) from None
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


def _format(manager: ocp.CheckpointManager, step: int) -> int | None:
    """The checkpoint's format: its host JSON's ``format``, 0 when absent (written before
    versioning); None when the host JSON itself cannot be read (a corrupt checkpoint)."""
    try:
        host = manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))
        return int(dict(host["host"]).get("format", 0))
    except Exception:  # noqa: BLE001 - unreadable: let the full restore decide
        return None
