"""The SLURM executor: one submitit job per trial, requeued and resumed when SLURM stops it.

Split from `scalinglab.sweep.executors` (the executor interface, local and Ray), which builds
it through `make_executor`. A stopped job (preemption, `scontrol requeue`, time limit)
checkpoints its trial and goes back to the queue without a result, so the runner keeps
waiting and the job's next run resumes the trial; tested against a real single-node SLURM
(`tests/test_slurm.py`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from scalinglab.errors import ExecutorUnavailable
from scalinglab.sweep.config import SlurmExecutorConfig
from scalinglab.sweep.executors import Executor, _missing
from scalinglab.sweep.worker import Outcome, Spec, execute_trial


def _requeued_by_slurm() -> bool:
    """Whether SLURM is requeueing this job (`scontrol requeue`, preemption with requeue): its
    restart count went up since this attempt started (it does before the job gets SIGTERM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        show = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    restarts = re.search(r"\bRestarts=(\d+)", show)
    started_as = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return restarts is not None and int(restarts.group(1)) > started_as


class _TrialJob:
    """A submitit job running one trial. Stopped by SLURM, the trial checkpoints at its current
    step, and the job goes back to the queue without a result, so the runner keeps waiting and
    the next run of the job resumes the trial: on submitit's preemption/timeout signal (USR2
    by default) submitit requeues it (up to `max_requeues` timeouts); on `scontrol requeue` or
    a preemption that requeues, SLURM does. A job stopped for good (scancel, the runner's
    interrupt) reports the trial "interrupted"."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def __call__(self) -> Outcome:
        """Train the trial; in a SLURM job, hand a stop for requeueing back to SLURM."""
        in_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ
        if not in_slurm or threading.current_thread() is not threading.main_thread():
            return execute_trial(self.spec)
        import submitit

        preempt = submitit.JobEnvironment._usr_sig()  # USR2, or $SUBMITIT_PREEMPT_SIGNAL
        requeue = signal.getsignal(preempt)  # submitit's: checkpoint(), scontrol requeue, exit
        got: list[int] = []

        def on_preempt(signum: int, frame: Any) -> None:
            # Training is stopped the way SIGTERM stops it: a checkpoint at this step, then
            # TrialInterrupted; submitit's requeue runs after that (below), not mid-step.
            got.append(signum)
            signal.raise_signal(signal.SIGTERM)

        signal.signal(preempt, on_preempt)
        try:
            out = execute_trial(self.spec)
        finally:
            signal.signal(preempt, requeue)
        if out.get("status") != "interrupted":
            return out
        if got and callable(requeue):
            requeue(got[0], None)  # raises SystemExit once requeued: no result is written
        if _requeued_by_slurm():
            print(
                f"scalinglab: job {os.environ['SLURM_JOB_ID']} is being requeued by SLURM;"
                " the trial resumes from its checkpoint in the next run",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(0)  # no result: the runner waits for the requeued run
        return out

    def checkpoint(self) -> Any:
        """What submitit resubmits on preemption/timeout: the same trial (it resumes)."""
        import submitit

        # run_trial checkpointed when the signal stopped it; the new job resumes from there.
        return submitit.helpers.DelayedSubmission(_TrialJob(self.spec))


class SlurmExecutor(Executor):
    """The trials as one SLURM job array through submitit (partition, GPUs, time limit and
    array parallelism from the sweep's executor block); `cluster: local` runs them as local
    processes. A job is finished when it wrote its result, or when `squeue` shows it ended
    without one (no accounting database needed); a requeued job is waited for."""

    SQUEUE_EVERY_S = 5.0
    # squeue states after which a job array task does not run again ("GONE": purged).
    FINAL_STATES = frozenset(
        {
            *("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL"),
            *("OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT", "GONE"),
        }
    )

    def __init__(self, cfg: SlurmExecutorConfig, folder: str) -> None:
        try:
            import submitit
        except ImportError:
            raise _missing("slurm", "submitit") from None
        self.submitit = submitit
        cluster = cfg.cluster or "slurm"  # local submitit jobs only when asked for by name
        if cluster == "slurm":
            missing = [cmd for cmd in ("sbatch", "squeue") if shutil.which(cmd) is None]
            if missing:
                raise ExecutorUnavailable(
                    f"executor slurm: no SLURM on this machine ({' and '.join(missing)} not on"
                    " PATH); run where SLURM is, set executor.cluster: local to run the trials"
                    " as local submitit jobs, or use --executor local"
                )
        self.ex = submitit.AutoExecutor(
            folder=cfg.folder or folder, cluster=cluster, slurm_max_num_timeout=cfg.max_requeues
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
        self._cluster = cluster
        self._jobs: dict[Any, Spec] = {}
        self._interrupted = False
        self._states: dict[str, str] = {}  # squeue's state per job array task
        self._squeued_at = float("-inf")
        self._squeues = 0  # squeue calls so far
        self._ended_at: dict[Any, int] = {}  # job -> the squeue call that first saw it ended

    def submit(self, specs: list[Spec]) -> None:
        if not specs:
            return
        jobs = []
        try:
            with self.ex.batch():
                for spec in specs:
                    jobs.append(self.ex.submit(_TrialJob({**spec, "threads": self._threads})))
        except (OSError, RuntimeError, self.submitit.core.utils.FailedJobError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise ExecutorUnavailable(
                f"executor slurm: submitting the job array failed: {first}"
            ) from None
        self._jobs.update(zip(jobs, specs, strict=True))

    def pending(self) -> int:
        return len(self._jobs)

    def _slurm_states(self) -> dict[str, str]:
        """SLURM's state of each job array task still pending (`squeue -t all`; a task it no
        longer knows is absent), refreshed at most every `SQUEUE_EVERY_S` seconds."""
        now = time.monotonic()
        if now - self._squeued_at < self.SQUEUE_EVERY_S:
            return self._states
        arrays = sorted({str(j.job_id).split("_")[0] for j in self._jobs})
        cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return self._states  # slurmctld busy or away: ask again next time
        if res.returncode == 0 or "Invalid job id" in res.stderr:
            lines = (line.split("|", 1) for line in res.stdout.splitlines() if "|" in line)
            self._states = {i.strip(): state.strip() for i, state in lines}
            self._squeued_at = now
            self._squeues += 1
        return self._states

    def _ended(self, job: Any) -> str | None:
        """SLURM's final state of a job that wrote no result (killed, cancelled before it
        started, out of memory, node failure), once seen in two `squeue` calls; else None."""
        state = self._slurm_states().get(str(job.job_id), "GONE")
        if state not in self.FINAL_STATES:
            self._ended_at.pop(job, None)
            return None
        first = self._ended_at.setdefault(job, self._squeues)
        # The second sighting: a result written as the job ended has become visible by then.
        return state if self._squeues > first else None

    def _finished(self, job: Any) -> bool:
        """Whether a job has a result or ended without one. Without SLURM accounting submitit's
        `done()` (sacct) never sees a job end and warns on every call: squeue decides here."""
        if job.paths.result_pickle.exists():
            return True
        if self._cluster != "slurm":
            return bool(job.done())
        return self._ended(job) is not None

    def poll(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while True:
            ready = [j for j in self._jobs if self._finished(j)]
            if ready or not self._jobs or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        out = []
        for job in ready:
            spec = self._jobs.pop(job)
            if self._ended_at.pop(job, None) is not None and not job.paths.result_pickle.exists():
                out.append(self._no_result(job, spec, self._states.get(str(job.job_id), "GONE")))
                continue
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

    def _no_result(self, job: Any, spec: Spec, state: str) -> Outcome:
        """The outcome of a job that ended without writing a result."""
        where = "no longer known to SLURM" if state == "GONE" else f"ended {state}"
        if self._interrupted:  # cancelled by `interrupt`, most likely before it started
            why = f"job {job.job_id} {where} (the sweep was interrupted)"
            return {"trial_id": spec["trial_id"], "status": "interrupted", "error": why}
        return {
            "trial_id": spec["trial_id"],
            "status": "failed",
            "error": f"job {job.job_id} {where} without a result (cancelled, killed or out"
            f" of memory?); its log: {job.paths.stderr}; re-running resumes the trial",
        }

    def interrupt(self) -> None:
        self._interrupted = True
        for job in list(self._jobs):
            with contextlib.suppress(Exception):
                job.cancel(check=False)
