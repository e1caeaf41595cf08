"""Trackers: where a trial's metric records go. One interface, `Tracker`, and its backends:

- `jsonl`: the run directory's metrics.jsonl (always on; the file the results store reads);
- `tensorboard`: TensorBoard event files in `run_dir/tensorboard/` (the `trackers` extra);
- `mlflow`: an MLflow run in the sqlite tracking store `run_dir/mlflow.db` (the `trackers` extra);
- a progress display: `run_trial(..., progress=fn)` wraps `fn` as a tracker.

The trial config selects the file backends (`train.trackers: [jsonl, tensorboard, mlflow]`);
trackers observe a run and never change it, so they are not part of the trial id. A record is a dict
with `step`, `tokens`, `flops` and the metrics of that step (train_loss, eval_loss, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from scalinglab import runfiles as rf
from scalinglab.errors import TrialError
from scalinglab.rundir import FINISHED, RunDir

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"

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


def _numeric(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The numeric fields of a record but `step` (what the file backends store)."""
    for k, v in record.items():
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
            yield k, float(v)


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
        values = [self._summary.Summary.Value(tag=k, simple_value=v) for k, v in _numeric(record)]
        if values:
            summary = self._summary.Summary(value=values)
            self._writer.add_event(
                self._pb.Event(wall_time=time.time(), step=step, summary=summary)
            )

    def finish(self) -> None:
        self._writer.close()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> {"model.d_model": "32", ...} (MLflow params are strings)."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v)
    return out


class MLflowTracker:
    """One MLflow run per trial in the sqlite tracking store `run_dir/mlflow.db`: the config
    (flattened) and parameter counts as params, every numeric field of a record as a metric at
    its step, and at the end the run's status (FINISHED for done/diverged/stopped early, KILLED
    when interrupted, FAILED otherwise; the run directory's own status in the tag
    `scalinglab.status`). A resume continues the latest run and skips the steps it already
    holds (the tag `scalinglab.last_step`); those it lacks up to the restored step, as when
    the tracker is added to a half-done trial, are copied from metrics.jsonl. A trial that
    starts again from step 0 gets a new run."""

    LAST_STEP = "scalinglab.last_step"

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrialError(
                "train.trackers: 'mlflow' needs the mlflow-skinny, sqlalchemy and alembic "
                "packages; install them with pip install 'scalinglab[trackers]' (or "
                "'.[trackers]' in a checkout)"
            ) from None
        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self._Client = MlflowClient
        self.run_dir = Path(run_dir)
        self.client: Any = None
        self.run_id: str | None = None
        self.logged = -1  # the last step the run holds

    def start(self, step: int, info: dict[str, Any]) -> None:
        # An explicit client: no process-wide tracking URI or active run is set.
        uri = "sqlite:///" + str((self.run_dir / MLFLOW_DB).resolve())
        self.client = self._Client(tracking_uri=uri)
        run = self._latest_run() if step else None
        if run is None:
            self.run_id, self.logged = self._new_run(info), -1
        else:
            self.run_id = run.info.run_id
            self.logged = int(run.data.tags.get(self.LAST_STEP, -1))
            self.client.update_run(self.run_id, status="RUNNING")
        for record in rf.read_jsonl(self.run_dir / rf.METRICS):  # cut back to `step` already
            self.log(record["step"], record)

    def _new_run(self, info: dict[str, Any]) -> str:
        """A run named after the run directory, in the experiment of that name, with params."""
        name = self.run_dir.resolve().name
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            where = (self.run_dir / "mlflow-artifacts").resolve().as_uri()  # not the cwd
            exp_id = self.client.create_experiment(name, artifact_location=where)
        else:
            exp_id = exp.experiment_id
        run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        counts = {"N": "total", "N_nonembed": "non_embedding", "N_embed": "embedding"}
        params = {
            **_flatten(info["config"]),
            **{k: str(info[v]) for k, v in counts.items()},
            "total_steps": str(info["total_steps"]),
        }
        items = [self._Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def _latest_run(self) -> Any:
        exps = [e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(exps, max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def log(self, step: int, record: dict[str, Any]) -> None:
        # The divergence marker repeats a logged step: its reason becomes a tag.
        tags = []
        if "diverged" in record:
            tags.append(self._RunTag("scalinglab.diverged", str(record["diverged"])))
        metrics = []
        if step > self.logged:  # else replayed after a resume: the run holds it already
            ms = int(time.time() * 1000)
            metrics = [self._Metric(k, v, ms, step) for k, v in _numeric(record)]
            tags.append(self._RunTag(self.LAST_STEP, str(step)))
            self.logged = step
        if metrics or tags:
            self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def finish(self) -> None:
        if self.run_id is None:  # ended before training started
            return
        status = RunDir(self.run_dir).status()
        end = (
            "FINISHED" if status in FINISHED else "KILLED" if status == "interrupted" else "FAILED"
        )
        self.client.set_tag(self.run_id, "scalinglab.status", status)
        self.client.set_terminated(self.run_id, end)


TRACKERS = ("jsonl", "tensorboard", "mlflow")


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
        elif name == "mlflow":
            out.append(MLflowTracker(run_dir))
        elif name != "jsonl":
            raise TrialError(
                f"train.trackers: unknown tracker {name!r}; allowed: {', '.join(TRACKERS)}"
            )
    if progress is not None:
        is_tracker = all(hasattr(progress, m) for m in ("start", "log", "finish"))
        out.append(progress if is_tracker else ProgressTracker(progress))  # type: ignore[arg-type]
    return out
