"""Trackers: where a trial's metric records go. One interface, `Tracker`, and its backends:

- `jsonl`: the run directory's metrics.jsonl (always on; the file the results store reads);
- `tensorboard`: TensorBoard event files in `run_dir/tensorboard/` (the `trackers` extra);
- a progress display: `run_trial(..., progress=fn)` wraps `fn` as a tracker.

The trial config selects the file backends (`train.trackers: [jsonl, tensorboard]`); trackers
observe a run and never change it, so they are not part of the trial id. A record is a dict
with `step`, `tokens`, `flops` and the metrics of that step (train_loss, eval_loss, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from scalinglab import runfiles as rf
from scalinglab.errors import TrialError

TENSORBOARD_DIR = "tensorboard"

ProgressFn = Callable[[dict[str, Any]], None]


class Tracker(Protocol):
    """Receives a trial's metric records as they are made."""

    def start(self, step: int, info: dict[str, Any]) -> None:
        """Training starts (step 0) or resumes (the restored step); `info` holds total_steps,
        the parameter counts (total, non_embedding, embedding) and the config (as JSON)."""

    def log(self, step: int, record: dict[str, Any]) -> None:
        """One metrics record at `step` (records past the latest checkpoint can be logged
        again after a resume; `start` is told from where)."""

    def finish(self) -> None:
        """The run ended (finished, failed or interrupted): flush and close."""


class JsonlTracker:
    """metrics.jsonl: one JSON line per record, fsynced; cut back to the restored step on
    resume, so the file equals an uninterrupted run's (wall-clock fields aside)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start(self, step: int, info: dict[str, Any]) -> None:
        keep = [r for r in rf.read_jsonl(self.path) if r["step"] <= step] if step else []
        rf.rewrite_jsonl(self.path, keep)

    def log(self, step: int, record: dict[str, Any]) -> None:
        rf.append_jsonl(self.path, [record])

    def finish(self) -> None:
        pass


class ProgressTracker:
    """Adapts a progress callback `fn(event)` (the form `run_trial(progress=...)` takes):
    `{"event": "start", "step", "total_steps", total, non_embedding, embedding}` once, then
    `{"event": "log", "total_steps", **record}` per record (the divergence marker excepted)."""

    def __init__(self, fn: ProgressFn) -> None:
        self.fn = fn
        self.total_steps = 0

    def start(self, step: int, info: dict[str, Any]) -> None:
        self.total_steps = info["total_steps"]
        counts = {k: info[k] for k in ("total", "non_embedding", "embedding")}
        self.fn({"event": "start", "step": step, "total_steps": self.total_steps, **counts})

    def log(self, step: int, record: dict[str, Any]) -> None:
        if "diverged" not in record:
            self.fn({"event": "log", "total_steps": self.total_steps, **record})

    def finish(self) -> None:
        pass


class TensorBoardTracker:
    """TensorBoard event files in `directory`: every numeric field of a record but `step` as a
    scalar (tag = field name) at that step. On resume a session-start event at the restored
    step + 1 tells TensorBoard's readers to drop the older events from that step on."""

    def __init__(self, directory: str | Path) -> None:
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise TrialError(
                "train.trackers: 'tensorboard' needs the tensorboard package; install it with "
                "pip install 'scalinglab[trackers]' (or '.[trackers]' in a checkout)"
            ) from None
        self._pb, self._summary = event_pb2, summary_pb2
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.directory))

    def start(self, step: int, info: dict[str, Any]) -> None:
        if step:
            log = self._pb.SessionLog(status=self._pb.SessionLog.START)
            self._writer.add_event(
                self._pb.Event(wall_time=time.time(), step=step + 1, session_log=log)
            )

    def log(self, step: int, record: dict[str, Any]) -> None:
        values = [
            self._summary.Summary.Value(tag=k, simple_value=float(v))
            for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if values:
            summary = self._summary.Summary(value=values)
            self._writer.add_event(
                self._pb.Event(wall_time=time.time(), step=step, summary=summary)
            )

    def finish(self) -> None:
        self._writer.close()


TRACKERS = ("jsonl", "tensorboard")


def build_trackers(
    names: Sequence[str], run_dir: str | Path, progress: ProgressFn | Tracker | None = None
) -> list[Tracker]:
    """The trackers `names` selects (jsonl first, always), plus `progress` when given: a
    Tracker (an object with `start`, `log` and `finish`, like the CLI's progress bar) or a
    callback `fn(event)`, wrapped in a ProgressTracker."""
    run_dir = Path(run_dir)
    out: list[Tracker] = [JsonlTracker(run_dir / rf.METRICS)]
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            out.append(TensorBoardTracker(run_dir / TENSORBOARD_DIR))
        elif name != "jsonl":
            raise TrialError(
                f"train.trackers: unknown tracker {name!r}; allowed: {', '.join(TRACKERS)}"
            )
    if progress is not None:
        is_tracker = all(hasattr(progress, m) for m in ("start", "log", "finish"))
        out.append(progress if is_tracker else ProgressTracker(progress))  # type: ignore[arg-type]
    return out
