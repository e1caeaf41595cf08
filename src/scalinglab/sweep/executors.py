"""Where trials run: local worker processes, Ray tasks, or SLURM jobs through submitit
(`scalinglab.sweep.slurm`).

Every executor runs the same function, `scalinglab.sweep.worker.execute_trial(spec)`, in a
fresh or pooled worker process; it locks the trial, calls `scalinglab.train.run_trial` and
returns an outcome dict. Executors only decide where, and report outcomes as they finish
(`poll`).

This module does not import jax: the worker sets XLA's thread flags and the persistent
compilation cache before jax creates its first backend in that process.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import time
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
from scalinglab.sweep.locks import holder
from scalinglab.sweep.worker import (  # noqa: F401  (re-exported)
    Outcome,
    Spec,
    execute_trial,
    init_local_worker,
    setup_worker,
    xla_flags,
)


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

    def kill(self) -> None:
        """Stop at once, after a second interrupt (default: drop what has not started)."""
        self.cancel_queued()

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
        self._interrupted = False
        self._env: dict[str, str] = {}
        self._outcomes: list[Outcome] = []

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()  # set on interrupt: workers start no further trial
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=init_local_worker,
            initargs=(self._stop, os.getpid()),
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
        if broken and self._interrupted:  # workers stopped by the interrupt: nothing restarts
            self._outcomes += [
                {"trial_id": s["trial_id"], "status": "interrupted", "error": "sweep interrupted"}
                for s in broken
            ]
        elif broken:
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

    def _processes(self) -> list[Any]:
        procs = getattr(self._pool, "_processes", None) or {}
        return [p for p in list(procs.values()) if p.is_alive()]

    def interrupt(self) -> None:
        """Set the pool's stop event (queued trials return "not started" at once) and SIGTERM
        the workers that are training (they checkpoint and stop). Idle workers are left to
        exit when the pool shuts down: killing them would break the pool, and nothing is
        cancelled, which keeps clear of a CPython race between the two."""
        self._interrupted = True
        if self._pool is None:
            return
        self._stop.set()
        live = {p.pid for p in self._processes()}
        for spec in list(self._futures.values()):
            pid = (holder(spec["run_dir"]) or {}).get("pid")
            if pid in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        """A second Ctrl-C: stop every worker at once (the last checkpoints stay)."""
        for p in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        self._futures.clear()
        self._outcomes.clear()

    def close(self) -> None:
        if self._pool is None:
            return
        if self._interrupted:  # never wait on workers that may be gone or still stopping
            procs = self._processes()
            self._pool.shutdown(wait=False)
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
        else:
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


def make_executor(cfg: Any, sweep_dir: str) -> Executor:
    """The executor an ExecutorConfig describes."""
    if isinstance(cfg, LocalExecutorConfig):
        return LocalExecutor(cfg)
    if isinstance(cfg, RayExecutorConfig):
        return RayExecutor(cfg)
    if isinstance(cfg, SlurmExecutorConfig):
        from scalinglab.sweep.slurm import SlurmExecutor

        return SlurmExecutor(cfg, os.path.join(sweep_dir, ".submitit"))
    raise ValueError(f"unknown executor {cfg!r}; allowed: local, ray, slurm")
