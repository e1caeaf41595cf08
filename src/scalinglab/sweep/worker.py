"""The worker side of a sweep: what runs in the process that trains a trial.

`execute_trial(spec)` locks the trial, calls `scalinglab.train.run_trial` and returns an
outcome dict; every executor (`scalinglab.sweep.executors`) runs it, in a local pool process,
a Ray task or a SLURM job. `setup_worker` sets XLA's thread flags and the persistent
compilation cache once per process, before jax creates its first backend there, so this
module does not import jax at import time.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
import warnings
from typing import Any

Spec = dict[str, Any]  # trial_id, config (JSON dict), run_dir, cache_dir, threads, retry_failed
Outcome = dict[str, Any]  # trial_id, status, error, summary, wall_s, cache_hits, cache_misses

_CACHE_EVENTS = {
    "/jax/compilation_cache/cache_hits": "cache_hits",
    "/jax/compilation_cache/cache_misses": "cache_misses",
    "/jax/compilation_cache/compile_requests_use_cache": "compile_requests",
}
_counts: dict[str, int] = dict.fromkeys(_CACHE_EVENTS.values(), 0)
_configured: dict[str, Any] = {}
_runner: dict[str, int] = {}  # the pid of the runner that started this local worker
# "event": the pool's stop Event; "interrupted": True once a trial of this worker was stopped
_stopping: dict[str, Any] = {}


def _stop_requested() -> bool:
    """Whether this worker should start no further trial (the sweep is being interrupted)."""
    event = _stopping.get("event")
    return bool(_stopping.get("interrupted")) or (event is not None and event.is_set())


def _orphaned() -> bool:
    """Whether this local worker's runner is gone (the worker was re-parented)."""
    return bool(_runner) and os.getppid() != _runner["pid"]


def _exit_if_orphaned() -> None:
    """A local worker whose runner died takes no further trial: queued work stays queued for
    the next runner, and nothing trains behind the user's back."""
    if _orphaned():
        os._exit(143)  # 128 + SIGTERM: what the runner's death signalled


def xla_flags(threads: int | None) -> str:
    """XLA_FLAGS that keep one worker to about `threads` cores.

    XLA:CPU sizes its intra-op pool from the schedulable cores, but the work that pool gets in
    a small model's step is dominated by Eigen's multi-threaded matmuls; switching those off
    makes a worker use ~1 core, so K single-thread workers do not oversubscribe K cores.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return flags


def setup_worker(threads: int | None, cache_dir: str | None) -> None:
    """Thread limits and the persistent compilation cache, once per worker process.

    The thread flags only take effect if jax has not been imported yet in this process.
    """
    if _configured:
        return
    if threads is not None:
        # XLA reads its flags when the first backend is created, not when jax is imported.
        bridge = sys.modules.get("jax._src.xla_bridge")
        if bridge is not None and getattr(bridge, "_backends", None):
            warnings.warn("jax backend already running; thread limits not applied", stacklevel=2)
        os.environ["XLA_FLAGS"] = xla_flags(threads)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    import jax
    from jax import monitoring

    if cache_dir is not None:
        # Small models compile in well under the default 1 s threshold; cache them all, so a
        # re-run (or a resumed trial, or a second seed) compiles nothing anew.
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

    def _count(event: str, **_: Any) -> None:
        if event in _CACHE_EVENTS:
            _counts[_CACHE_EVENTS[event]] += 1

    monitoring.register_event_listener(_count)
    _configured.update(threads=threads, cache_dir=cache_dir)


def execute_trial(spec: Spec) -> Outcome:
    """Run one trial in this process: lock it, train (or resume) it, report the outcome.

    Never raises for a trial's own failure: the error is in the outcome (and status.json), so
    the sweep goes on. A trial locked by another live process is reported as "locked".
    """
    _exit_if_orphaned()
    if _stop_requested():  # a trial still queued for this worker is not started
        why = "not started: the sweep was interrupted"
        return {"trial_id": spec["trial_id"], "status": "interrupted", "error": why}
    setup_worker(spec.get("threads"), spec.get("cache_dir"))
    from scalinglab.config import TrialConfig
    from scalinglab.errors import RunDirError
    from scalinglab.rundir import RunDir
    from scalinglab.sweep.locks import TrialLock
    from scalinglab.train import TrialInterrupted, run_trial

    tid, run_dir = spec["trial_id"], spec["run_dir"]
    out: Outcome = {"trial_id": tid, "pid": os.getpid(), "host": socket.gethostname()}
    before = dict(_counts)
    t0 = time.perf_counter()
    lock = TrialLock(run_dir)
    try:
        if not lock.acquire():
            return {**out, "status": "locked", "error": "trained by another process"}
    except OSError as e:
        return {
            **out,
            "status": "failed",
            "error": f"RunDirError: {run_dir}: {e.strerror or e}",
            "error_type": "RunDirError",
            "stops_sweep": True,
        }
    try:
        skip = RunDir(run_dir).skip(bool(spec.get("retry_failed")))
        if skip is not None:
            return {**out, **skip, "skipped": True}
        cfg = TrialConfig.model_validate(spec["config"])
        summary = run_trial(cfg, run_dir)
        out.update(status=summary["status"], summary=summary, error=summary.get("diverged"))
    except TrialInterrupted as e:
        out.update(status="interrupted", error=str(e))
        _stopping["interrupted"] = True
    except KeyboardInterrupt:
        RunDir(run_dir).mark_interrupted("interrupted; re-run to resume")
        out.update(status="interrupted", error="KeyboardInterrupt")
        _stopping["interrupted"] = True
    except Exception as e:  # noqa: BLE001 - a failed trial must not stop the sweep
        msg = str(e).splitlines()[0] if str(e) else ""
        out.update(status="failed", error=f"{type(e).__name__}: {msg}", error_type=type(e).__name__)
        # A run directory that cannot be read or written (disk full included) fails every
        # trial after it too: the runner starts no more.
        out["stops_sweep"] = isinstance(e, RunDirError)
        if not isinstance(e, ValueError | OSError):
            out["traceback"] = traceback.format_exc(limit=8)
    finally:
        lock.release()
    _exit_if_orphaned()  # the runner died during the trial (which checkpointed and stopped)
    out["wall_s"] = time.perf_counter() - t0
    out.update({k: _counts[k] - before[k] for k in _counts})
    return out


def init_local_worker(stop: Any = None, runner_pid: int | None = None) -> None:
    """Initialiser of a local pool process: ignore Ctrl-C, die with the runner (`runner_pid`,
    the process that made the pool), and start no trial once ``stop`` (the pool's
    multiprocessing Event) is set."""
    if stop is not None:
        _stopping["event"] = stop
    # Ctrl-C reaches every process of the terminal's group: idle workers ignore it, and a
    # training worker's run_trial installs its own handler (checkpoint, then stop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The runner's pid comes from the runner: a worker still starting up when the runner died
    # is already re-parented, and its getppid() would name the new parent instead.
    _runner["pid"] = os.getppid() if runner_pid is None else runner_pid
    if sys.platform.startswith("linux"):
        # Die with the runner (kill -9 included): a SIGTERM makes run_trial checkpoint and
        # stop, so an orphan never keeps a trial locked while a new runner resumes the sweep.
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    # The death signal only covers a runner that dies from now on; one already gone is seen
    # here, before this worker can take a queued trial.
    _exit_if_orphaned()
