"""`run_sweep`: train every trial of a sweep on an executor, skipping done trials and resuming
the others from their checkpoints; a failed or diverged trial is recorded and the sweep goes on.

The runner itself holds no state that a crash could lose: what is done is what has a
summary.json, and a trial is trained only by the process that holds its lock. Progress is
read from the run directories (metrics.jsonl, lock files), so it works the same for local
workers, Ray tasks and SLURM jobs on a shared filesystem.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalinglab import runfiles as rf
from scalinglab.budget import Budget
from scalinglab.errors import (
    RunDirError,
    SweepError,
)
from scalinglab.rundir import FINISHED, RunDir
from scalinglab.sweep import store
from scalinglab.sweep.config import LocalExecutorConfig, SweepConfig
from scalinglab.sweep.executors import Executor, Outcome, Spec, make_executor
from scalinglab.sweep.expand import Trial

LOCK_RETRY_S = 2.0  # wait between attempts on a trial another runner is training


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM: running trials were checkpointed; re-running resumes them."""


@dataclass
class SweepResult:
    """What a `run_sweep` call did: per-trial outcomes and compile-cache counters."""

    sweep_dir: Path
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    wall_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(o["status"] == status for o in self.outcomes.values())

    @property
    def cache_hits(self) -> int:
        return sum(o.get("cache_hits", 0) for o in self.outcomes.values())

    @property
    def cache_misses(self) -> int:
        return sum(o.get("cache_misses", 0) for o in self.outcomes.values())


def check_writable(sweep_dir: Path) -> None:
    """Fail early, in one line, on a directory that cannot be created or written."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # A per-process probe: two runners starting on one directory must not remove
        # each other's probe (that raced and failed one of them).
        probe = sweep_dir / f".write_test.{os.getpid()}"
        rf.atomic_write_text(probe, "ok\n")
        probe.unlink(missing_ok=True)
    except rf.RunDirError as e:
        raise SweepError(f"sweep directory {sweep_dir} is not writable: {e}") from None
    except OSError as e:
        raise SweepError(
            f"sweep directory {sweep_dir} is not writable ({e.strerror or e})"
        ) from None


def default_workers() -> int:
    """Worker processes for the local executor when neither the YAML nor --workers says."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def trial_flops(trial: Trial) -> float:
    """FLOPs (the config's counting) the trial will spend; 0 when it cannot run."""
    budget = Budget.of_or_none(trial.config)
    return budget.flops if budget is not None else 0.0


def _steps(trial: Trial) -> int:
    budget = Budget.of_or_none(trial.config)
    return budget.steps if budget is not None else 0


ProgressFn = Callable[[dict[str, Any]], None]


class _SignalToInterrupt:
    """SIGTERM in the runner becomes SweepInterrupted (as Ctrl-C becomes KeyboardInterrupt)."""

    def __enter__(self) -> _SignalToInterrupt:
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise SweepInterrupted(f"signal {signum}")

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def run_sweep(
    sweep: SweepConfig,
    trials: list[Trial],
    sweep_dir: str | Path,
    *,
    sweep_yaml: str | Path | None = None,
    executor: Executor | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    poll_s: float = 0.5,
) -> SweepResult:
    """Train `trials` (from `expand(sweep)`) into `sweep_dir/<trial_id>/`; returns outcomes.

    Done trials are skipped, the rest resume from their checkpoints; failed ones are retried
    only with `retry_failed`. `cache_dir` (default `sweep_dir/.jax_cache`) holds JAX's
    persistent compilation cache. Raises SweepError for an unwritable directory and
    SweepInterrupted after Ctrl-C/SIGTERM (running trials checkpoint first).
    """
    sweep_dir = Path(sweep_dir)
    check_writable(sweep_dir)
    if sweep_yaml is not None:
        try:
            shutil.copyfile(sweep_yaml, sweep_dir / store.SWEEP_COPY)
        except OSError as e:
            raise SweepError(f"{sweep_dir}: cannot copy the sweep file ({e.strerror})") from None
    cache = str(cache_dir) if cache_dir is not None else str(sweep_dir / ".jax_cache")
    if Path(cache).exists() and not Path(cache).is_dir():
        raise SweepError(f"--cache-dir {cache}: exists and is not a directory")

    ex_cfg = sweep.executor
    if isinstance(ex_cfg, LocalExecutorConfig) and workers is not None:
        ex_cfg = ex_cfg.model_copy(update={"workers": workers})
    threads = None
    if isinstance(ex_cfg, LocalExecutorConfig):
        threads = ex_cfg.threads or max(1, default_workers() // ex_cfg.workers)

    result = SweepResult(sweep_dir)
    specs: dict[str, Spec] = {}
    work = {t.trial_id: trial_flops(t) for t in trials}
    for t in trials:
        run_dir = store.trial_dir(sweep_dir, t)  # adopts a directory named by the old ids
        try:
            skip = RunDir(run_dir).skip(retry_failed)
        except OSError as e:  # RunDirError (a corrupt status or summary file) is one too
            why = str(e) if isinstance(e, RunDirError) else f"{run_dir}: {e.strerror or e}"
            skip = {"status": "failed", "error": why}
        if skip is not None:
            result.outcomes[t.trial_id] = {"trial_id": t.trial_id, **skip, "skipped": True}
        else:
            specs[t.trial_id] = {
                "trial_id": t.trial_id,
                "config": t.config.model_dump(mode="json"),
                "run_dir": str(run_dir),
                "cache_dir": cache,
                "threads": threads,
                "retry_failed": retry_failed,
            }
    by_id = {t.trial_id: t for t in trials}
    # Longest first (most steps: tiny models are step-bound), so the sweep does not end with
    # one worker training a long trial while the others idle.
    specs = dict(sorted(specs.items(), key=lambda kv: -_steps(by_id[kv[0]])))

    def emit(event: str, **kw: Any) -> None:
        if progress:
            progress({"event": event, **kw})

    emit(
        "start",
        total=len(trials),
        todo=len(specs),
        work_total=sum(work.values()),
        work_done=sum(work[i] for i, o in result.outcomes.items() if o["status"] in FINISHED),
        done=len(result.outcomes),
        executor=ex_cfg.name,
        workers=getattr(ex_cfg, "workers", None),
    )
    t0 = time.perf_counter()
    if not specs:
        result.wall_s = time.perf_counter() - t0
        _finish(sweep_dir, result, emit)
        return result

    ex = executor or make_executor(ex_cfg, str(sweep_dir))
    retry_at: dict[str, float] = {}
    abort: str | None = None
    try:
        with _SignalToInterrupt():
            ex.submit(list(specs.values()))
            while ex.pending() or retry_at:
                for outcome in ex.poll(poll_s):
                    tid = outcome["trial_id"]
                    if outcome["status"] == "locked" and abort is None:
                        retry_at[tid] = time.monotonic() + LOCK_RETRY_S
                        continue
                    result.outcomes[tid] = outcome
                    emit("trial", outcome=outcome, trial=by_id.get(tid), work=work.get(tid, 0))
                    if outcome.get("stops_sweep") and abort is None:
                        abort = outcome["error"]
                        ex.cancel_queued()
                        retry_at.clear()
                due = [i for i, t in retry_at.items() if t <= time.monotonic()]
                for tid in due:
                    del retry_at[tid]
                if due:
                    ex.submit([specs[i] for i in due])
                if progress:
                    emit("poll", running=_running(sweep_dir, specs, result, t0))
    except (KeyboardInterrupt, SweepInterrupted):
        # First Ctrl-C: running trials checkpoint and stop, nothing new starts. A second one
        # stops the workers at once; after it, further Ctrl-C are ignored while this cleans up.
        ex.interrupt()
        emit(
            "interrupt",
            message="interrupted: running trials checkpoint and stop (Ctrl-C again"
            " to stop at once)",
        )
        deadline = time.monotonic() + 120
        said = "sweep interrupted; running trials were checkpointed"
        try:
            while ex.pending() and time.monotonic() < deadline:
                for outcome in ex.poll(poll_s):
                    result.outcomes[outcome["trial_id"]] = outcome
        except (KeyboardInterrupt, SweepInterrupted):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            ex.kill()
            said = "sweep stopped at once; trials resume from their last checkpoints"
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            ex.close()
            result.wall_s = time.perf_counter() - t0
            _finish(sweep_dir, result, emit)
        finally:
            signal.signal(signal.SIGINT, old)
        raise SweepInterrupted(said) from None
    ex.close()
    result.wall_s = time.perf_counter() - t0
    _finish(sweep_dir, result, emit)
    if abort:
        raise SweepError(f"sweep stopped: {abort}")
    return result


def _finish(sweep_dir: Path, result: SweepResult, emit: Callable[..., None]) -> None:
    try:
        store.write_results(sweep_dir)
    except (OSError, ValueError) as e:
        emit("warning", message=f"results.parquet not rebuilt: {e}")
    emit("end", result=result)


def _last_record(path: Path, max_bytes: int = 4096) -> dict[str, Any] | None:
    """The last complete JSON line of a metrics file, reading only its tail."""
    import json

    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _running(
    sweep_dir: Path, specs: dict[str, Spec], result: SweepResult, t0_perf: float
) -> list[dict[str, Any]]:
    """Trials being trained now, from their lock files and metrics (no lock is probed)."""
    from scalinglab.sweep.locks import lock_info

    started_after = time.time() - (time.perf_counter() - t0_perf) - 1.0
    rows = []
    for tid, spec in specs.items():
        if tid in result.outcomes:
            continue
        info = lock_info(spec["run_dir"])
        if not info or info.get("started", 0) < started_after:
            continue
        last = _last_record(Path(spec["run_dir"]) / rf.METRICS) or {}
        rows.append(
            {
                "trial_id": tid,
                "worker": f"{info.get('host', '?')}:{info.get('pid', '?')}",
                "step": last.get("step", 0),
                "flops": last.get("flops", 0.0),
                "train_loss": last.get("train_loss"),
                "eval_loss": last.get("eval_loss"),
            }
        )
    # A trial finished in this poll may still show its lock: keep one line per worker.
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        seen[row["worker"]] = row
    return list(seen.values())


def rate_flops(summary: dict[str, Any]) -> float:
    """Trained FLOPs per second of a finished trial (for time estimates)."""
    wall = summary.get("wall_s") or 0.0
    return summary.get("C", 0.0) / wall if wall > 0 and math.isfinite(wall) else 0.0
