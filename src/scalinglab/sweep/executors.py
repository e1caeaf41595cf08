"""Where trials run: local worker processes, Ray tasks, or SLURM jobs through submitit.

Every executor runs the same function, `execute_trial(spec)`, in a fresh or pooled worker
process; it locks the trial, calls `scalinglab.train.run_trial` and returns an outcome dict.
Executors only decide where, and report outcomes as they finish (`poll`).

This module does not import jax: the worker sets XLA's thread flags and the persistent
compilation cache before jax creates its first backend in that process.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

from scalinglab.config import TrialConfig
from scalinglab.errors import ExecutorUnavailable  # noqa: F401  (re-exported)
from scalinglab.hostmem import trial_temp_bytes, worker_env
from scalinglab.sweep.config import (
    LocalExecutorConfig,
    RayExecutorConfig,
    SlurmExecutorConfig,
)

Spec = dict[str, Any]  # trial_id, config (JSON dict), run_dir, cache_dir, threads, retry_failed
Outcome = dict[str, Any]  # trial_id, status, error, summary, wall_s, cache_hits, cache_misses

_CACHE_EVENTS = {
    "/jax/compilation_cache/cache_hits": "cache_hits",
    "/jax/compilation_cache/cache_misses": "cache_misses",
    "/jax/compilation_cache/compile_requests_use_cache": "compile_requests",
}
_counts: dict[str, int] = dict.fromkeys(_CACHE_EVENTS.values(), 0)
_configured: dict[str, Any] = {}


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


def _mark_interrupted(run_dir: str, why: str) -> None:
    from scalinglab import runfiles as rf

    try:
        old = rf.read_json(os.path.join(run_dir, rf.STATUS)) or {}
        rf.write_json(
            os.path.join(run_dir, rf.STATUS),
            {**old, "status": "interrupted", "error": why, "updated": time.time()},
        )
    except OSError:
        pass


def execute_trial(spec: Spec) -> Outcome:
    """Run one trial in this process: lock it, train (or resume) it, report the outcome.

    Never raises for a trial's own failure: the error is in the outcome (and status.json), so
    the sweep goes on. A trial locked by another live process is reported as "locked".
    """
    setup_worker(spec.get("threads"), spec.get("cache_dir"))
    from scalinglab import runfiles as rf
    from scalinglab.config import TrialConfig
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
        }
    try:
        status = rf.read_json(os.path.join(run_dir, rf.STATUS)) or {}
        done = rf.read_json(os.path.join(run_dir, rf.SUMMARY))
        if done is None and status.get("status") == "failed" and not spec.get("retry_failed"):
            return {**out, "status": "failed", "error": status.get("error"), "skipped": True}
        if done is not None:
            return {**out, "status": done["status"], "summary": done, "skipped": True}
        cfg = TrialConfig.model_validate(spec["config"])
        summary = run_trial(cfg, run_dir)
        out.update(status=summary["status"], summary=summary, error=summary.get("diverged"))
    except TrialInterrupted as e:
        out.update(status="interrupted", error=str(e))
    except KeyboardInterrupt:
        _mark_interrupted(run_dir, "interrupted; re-run to resume")
        out.update(status="interrupted", error="KeyboardInterrupt")
    except Exception as e:  # noqa: BLE001 - a failed trial must not stop the sweep
        msg = str(e).splitlines()[0] if str(e) else ""
        out.update(status="failed", error=f"{type(e).__name__}: {msg}", error_type=type(e).__name__)
        if not isinstance(e, ValueError | OSError):
            out["traceback"] = traceback.format_exc(limit=8)
    finally:
        lock.release()
    out["wall_s"] = time.perf_counter() - t0
    out.update({k: _counts[k] - before[k] for k in _counts})
    return out


def _init_local_worker() -> None:
    # Ctrl-C reaches every process of the terminal's group: idle workers ignore it, and a
    # training worker's run_trial installs its own handler (checkpoint, then stop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # Die with the runner (kill -9 included): a SIGTERM makes run_trial checkpoint and
        # stop, so an orphan never keeps a trial locked while a new runner resumes the sweep.
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _spec_temp_bytes(spec: Spec) -> int:
    return trial_temp_bytes(TrialConfig.model_validate(spec["config"]))


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside the block."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Executor:
    """Submit trial specs, poll finished outcomes; subclasses decide where trials run."""

    def submit(self, specs: list[Spec]) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[Outcome]:
        """Outcomes finished since the last poll (waits up to `timeout` s for the first)."""
        raise NotImplementedError

    def pending(self) -> int:
        """Trials submitted whose outcome has not been returned by `poll` yet."""
        raise NotImplementedError

    def cancel_queued(self) -> None:
        """Drop trials that have not started (they stay pending on disk)."""

    def interrupt(self) -> None:
        """Ask running trials to checkpoint and stop (they report "interrupted")."""

    def close(self) -> None:
        """Release workers and runtimes this executor started."""


class LocalExecutor(Executor):
    """A pool of `workers` spawned processes (JAX and fork do not mix); a worker killed
    mid-trial breaks the pool, which is rebuilt and its trials resubmitted (they resume from
    their checkpoints); a trial whose worker dies `max_crashes` times is recorded as failed."""

    def __init__(self, cfg: LocalExecutorConfig, max_crashes: int = 3) -> None:
        self.workers = cfg.workers
        self.max_crashes = max_crashes
        self._futures: dict[cf.Future, Spec] = {}
        self._crashes: dict[str, int] = {}
        self._pool: cf.ProcessPoolExecutor | None = None
        self._env: dict[str, str] = {}
        self._outcomes: list[Outcome] = []

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_local_worker,
        )

    def submit(self, specs: list[Spec]) -> None:
        if self._pool is None:
            self._pool = self._new_pool()
            # A spawned worker imports pandas/pyarrow (a thread with its own glibc arena)
            # before its first trial runs, too early for run_trial's allocator choice: the
            # choice for the largest trial goes in as GLIBC_TUNABLES (scalinglab.hostmem).
            self._env = worker_env(max(map(_spec_temp_bytes, specs), default=0))
        # The pool spawns its processes on submit; they inherit this environment.
        with _environ(self._env):
            for spec in specs:
                spec = {**spec, "submitted": time.time()}
                self._futures[self._pool.submit(execute_trial, spec)] = spec

    def pending(self) -> int:
        return len(self._futures) + len(self._outcomes)

    def poll(self, timeout: float) -> list[Outcome]:
        if self._futures and not self._outcomes:
            cf.wait(list(self._futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        broken: list[Spec] = []
        for fut in [f for f in self._futures if f.done()]:
            spec = self._futures.pop(fut)
            if fut.cancelled():
                continue
            try:
                self._outcomes.append(fut.result())
            except cf.process.BrokenProcessPool:
                broken.append(spec)
            except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
                self._outcomes.append(
                    {"trial_id": spec["trial_id"], "status": "failed", "error": repr(e)}
                )
        if broken:
            self._restart(broken)
        out, self._outcomes = self._outcomes, []
        return out

    def _restart(self, broken: list[Spec]) -> None:
        """A worker died: count a crash for each trial that had started, resubmit the rest."""
        from scalinglab.sweep.locks import lock_info

        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        again = []
        for spec in broken:
            info = lock_info(spec["run_dir"]) or {}
            started = info.get("started", 0) >= spec["submitted"]
            n = self._crashes[spec["trial_id"]] = self._crashes.get(spec["trial_id"], 0) + started
            if n >= self.max_crashes:
                self._outcomes.append(
                    {
                        "trial_id": spec["trial_id"],
                        "status": "failed",
                        "error": f"worker process died {n} times (killed, or out of memory)",
                    }
                )
            else:
                again.append(spec)
        self.submit(again)

    def cancel_queued(self) -> None:
        for fut in list(self._futures):
            if fut.cancel():
                self._futures.pop(fut)

    def interrupt(self) -> None:
        self.cancel_queued()
        procs = getattr(self._pool, "_processes", None) or {}
        for p in list(procs.values()):
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _missing(extra: str, module: str) -> ExecutorUnavailable:
    return ExecutorUnavailable(
        f"executor needs the optional dependency {module!r}; install it with "
        f"pip install 'scalinglab[{extra}]' (or '.[{extra}]' in a checkout)"
    )


class RayExecutor(Executor):
    """Each trial is a Ray task requesting `num_cpus`/`num_gpus`; with no `address` a local Ray
    runtime is started (and shut down at the end). A task whose worker dies is retried by Ray
    (`max_retries`) and resumes from its checkpoint."""

    def __init__(self, cfg: RayExecutorConfig) -> None:
        try:
            import ray
        except ImportError:
            raise _missing("ray", "ray") from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False)
            self._started = True
        threads = max(1, int(cfg.num_cpus))
        # Each task's runtime environment (set in `submit`): these plus the allocator choice.
        self._env = {"XLA_FLAGS": xla_flags(threads)} if xla_flags(threads) else {}
        self._remote = ray.remote(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_retries=cfg.max_retries
        )(execute_trial)
        self._threads = threads
        self._refs: dict[Any, Spec] = {}

    def submit(self, specs: list[Spec]) -> None:
        for spec in specs:
            # A Ray worker runs threads before it imports scalinglab: the allocator choice of
            # scalinglab.hostmem reaches it through GLIBC_TUNABLES, read at process start.
            env = {**self._env, **worker_env(_spec_temp_bytes(spec))}
            remote = self._remote.options(runtime_env={"env_vars": env})
            self._refs[remote.remote({**spec, "threads": self._threads})] = spec

    def pending(self) -> int:
        return len(self._refs)

    def poll(self, timeout: float) -> list[Outcome]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            more, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        out = []
        for ref in ready:
            spec = self._refs.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except Exception as e:  # noqa: BLE001 - worker crash after retries, cancellation
                first = str(e).strip().splitlines()[-1][:300] if str(e) else ""
                out.append(
                    {
                        "trial_id": spec["trial_id"],
                        "status": "failed",
                        "error": f"ray task failed: {type(e).__name__}: {first}",
                    }
                )
        return out

    def cancel_queued(self) -> None:
        self.interrupt()

    def interrupt(self) -> None:
        for ref in list(self._refs):
            self.ray.cancel(ref, force=False)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


class _TrialJob:
    """A submitit job; on timeout or preemption it requeues itself and the trial resumes."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def __call__(self) -> Outcome:
        return execute_trial(self.spec)

    def checkpoint(self) -> Any:
        import submitit

        # run_trial checkpoints every checkpoint_every steps; the new job resumes from there.
        return submitit.helpers.DelayedSubmission(_TrialJob(self.spec))


class SlurmExecutor(Executor):
    """The trials as one SLURM job array through submitit (partition, GPUs, time limit and
    array parallelism from the sweep's executor block); `cluster: local` runs them as local
    processes, which is how the tests exercise this path."""

    def __init__(self, cfg: SlurmExecutorConfig, folder: str) -> None:
        try:
            import submitit
        except ImportError:
            raise _missing("slurm", "submitit") from None
        self.submitit = submitit
        self.ex = submitit.AutoExecutor(
            folder=cfg.folder or folder, cluster=cfg.cluster, slurm_max_num_timeout=cfg.max_requeues
        )
        params: dict[str, Any] = {
            "timeout_min": cfg.time_min,
            "gpus_per_node": cfg.gpus_per_node,
            "cpus_per_task": cfg.cpus_per_task,
            "slurm_array_parallelism": cfg.array_parallelism,
            "name": "scalinglab",
        }
        if cfg.partition:
            params["slurm_partition"] = cfg.partition
        if cfg.mem_gb:
            params["mem_gb"] = cfg.mem_gb
        self.ex.update_parameters(**params)
        self._threads = cfg.cpus_per_task
        self._jobs: dict[Any, Spec] = {}

    def submit(self, specs: list[Spec]) -> None:
        if not specs:
            return
        jobs = []
        with self.ex.batch():
            for spec in specs:
                jobs.append(self.ex.submit(_TrialJob({**spec, "threads": self._threads})))
        self._jobs.update(zip(jobs, specs, strict=True))

    def pending(self) -> int:
        return len(self._jobs)

    def poll(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while True:
            ready = [j for j in self._jobs if j.done()]
            if ready or not self._jobs or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        out = []
        for job in ready:
            spec = self._jobs.pop(job)
            try:
                out.append(job.result())
            except Exception as e:  # noqa: BLE001 - job failure, timeout, cancellation
                first = str(e).strip().splitlines()[-1][:300] if str(e) else ""
                out.append(
                    {
                        "trial_id": spec["trial_id"],
                        "status": "failed",
                        "error": f"job {job.job_id} failed: {type(e).__name__}: {first}",
                    }
                )
        return out

    def interrupt(self) -> None:
        for job in list(self._jobs):
            with contextlib.suppress(Exception):
                job.cancel(check=False)


def make_executor(cfg: Any, sweep_dir: str) -> Executor:
    """The executor an ExecutorConfig describes."""
    if isinstance(cfg, LocalExecutorConfig):
        return LocalExecutor(cfg)
    if isinstance(cfg, RayExecutorConfig):
        return RayExecutor(cfg)
    if isinstance(cfg, SlurmExecutorConfig):
        return SlurmExecutor(cfg, os.path.join(sweep_dir, ".submitit"))
    raise ValueError(f"unknown executor {cfg!r}; allowed: local, ray, slurm")
