"""The SLURM executor against a real SLURM: slurmctld and slurmd on this machine.

`.ci/setup-slurm.sh` installs (Debian's slurm-wlm) and starts a single-node SLURM; where none is
running (a laptop) the test is skipped and says why. A 3-trial sweep runs through
`scalinglab sweep run --executor slurm` as one job array. While two trials are training, one
job is requeued by SLURM (`scontrol requeue`, as an administrator or a preemption would) and
another gets submitit's preemption/timeout signal (USR2, which submitit answers by requeueing
the job itself). Both must checkpoint, go back to the queue, resume from that checkpoint, and
end exactly as an uninterrupted run of the same sweep on the local executor. There is no
accounting database (sacct): a job killed without writing a result must still end the sweep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SWEEP_BASE as BASE
from scalinglab import runfiles as rf
from scalinglab.sweep import load_runs
from scalinglab.sweep.locks import lock_info
from test_sweep_run import _records

SLURM_COMMANDS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")


def _no_slurm() -> str | None:
    """Why the SLURM test cannot run here, or None when a SLURM node is up."""
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        return (
            f"no SLURM here ({', '.join(missing)} not on PATH); "
            ".ci/setup-slurm.sh installs and starts one (Debian, as root)"
        )
    try:
        res = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed ({e}); is slurmctld running? see .ci/setup-slurm.sh"
    states = res.stdout.split()
    if res.returncode != 0 or not {"idle", "mixed", "allocated"} & set(states):
        why = (res.stderr.strip().splitlines() or [" ".join(states) or "no nodes"])[-1]
        return f"no SLURM node is up ({why}); .ci/setup-slurm.sh starts one"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    """Skip (with the reason) unless submitit is installed and a SLURM node is up."""
    pytest.importorskip("submitit", reason="install the slurm extra: pip install -e '.[slurm]'")
    why = _no_slurm()
    if why:
        pytest.skip(why)


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return rf.read_json(run_dir / rf.STATUS) or {}
    except OSError:  # RunDirError: not valid JSON (it is replaced atomically, so not expected)
        return {}


def _job_ids(folder: Path, n: int, timeout: float) -> dict[str, str]:
    """trial_id -> SLURM job id (`ARRAY_TASK`), read from submitit's submitted pickles."""
    from submitit.core.utils import DelayedSubmission

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = {}
        for p in folder.glob("*_submitted.pkl"):
            jobs[DelayedSubmission.load(p).function.spec["trial_id"]] = p.name.split("_sub")[0]
        if len(jobs) == n:
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"the job array was not submitted within {timeout:.0f}s")


def _checkpointed(run_dir: Path) -> int | None:
    """The latest finished checkpoint's step of a trial still training, else None."""
    steps = [int(p.name) for p in (run_dir / rf.CHECKPOINTS).glob("*") if p.name.isdigit()]
    if not steps or (run_dir / rf.SUMMARY).exists() or _status(run_dir).get("status") != "running":
        return None
    return max(steps)


def test_slurm_sweep_requeued_jobs_resume_from_their_checkpoints(
    slurm: None, tmp_path: Path, cache: Path
) -> None:
    # cpus_per_task 1 and 2 jobs at once fill the 2-CPU node; 30 min is long enough that
    # submitit takes USR2 as a preemption, not a timeout (it would count one of max_requeues).
    executor = {"name": "slurm", "cpus_per_task": 1, "time_min": 30, "array_parallelism": 2}
    doc = {"name": "t", "base": BASE, "grid": {"seed": [0, 1, 2]}, "executor": executor}
    path, out = _write(tmp_path / "s.yaml", doc), tmp_path / "out"
    t0 = time.monotonic()
    runner = _sweep_run(path, out, cache, "--executor", "slurm")
    reference: subprocess.Popen | None = None
    jobs: dict[str, str] = {}
    try:
        jobs = _job_ids(out / ".submitit", 3, timeout=60)
        # The first two trials to checkpoint while training: one requeued by SLURM, one
        # signalled the way SLURM signals a job before preempting it or at its time limit.
        ways = [["scontrol", "requeue"], ["scancel", "--signal=USR2"]]
        stopped: dict[str, list[str]] = {}
        deadline = time.monotonic() + 120
        while ways and time.monotonic() < deadline and runner.poll() is None:
            for tid, job in jobs.items():
                if tid not in stopped and ways and _checkpointed(out / tid) is not None:
                    stopped[tid] = [*ways.pop(0), job]
                    subprocess.run(stopped[tid], check=True, capture_output=True, timeout=30)
            time.sleep(0.02)
        assert not ways, f"no two trials were caught training after a checkpoint: {stopped}"
        # Each stops at a checkpoint of its own (status "interrupted" is written after it):
        # the metrics logged up to there must survive the resume unchanged, wall clock too.
        before: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 60
        while len(before) < len(stopped) and time.monotonic() < deadline:
            for tid in stopped:
                st = _status(out / tid)
                if tid not in before and st.get("status") == "interrupted":
                    assert 0 < st["step"] < st["total_steps"], st
                    before[tid] = rf.read_jsonl(out / tid / rf.METRICS)
            time.sleep(0.02)
        assert len(before) == len(stopped), {t: _status(out / t) for t in stopped}
        # The same sweep uninterrupted on local workers, each with one XLA thread as each SLURM
        # job (cpus_per_task 1) has, so the floats agree to the last bit. It runs while the
        # stopped jobs wait in the queue (SLURM holds a requeued job for cred_expire seconds)
        # and compiles nothing: the SLURM jobs filled the compilation cache.
        ref_doc = {**doc, "executor": {"name": "local", "workers": 2, "threads": 1}}
        reference = _sweep_run(_write(tmp_path / "ref.yaml", ref_doc), tmp_path / "ref", cache)
        for proc in (runner, reference):
            try:
                proc.wait(timeout=240)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a sweep did not end; squeue: {_squeue(jobs)}")
    finally:
        for proc in (runner, reference):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if jobs:  # nothing of this test stays queued or running
            arrays = sorted({j.split("_")[0] for j in jobs.values()})
            subprocess.run(["scancel", *arrays], capture_output=True, timeout=30)
    wall = time.monotonic() - t0
    text = (out / "runner.log").read_text()
    assert runner.returncode == 0, text[-3000:]
    assert "3 trials: 3 done" in text, text[-3000:]
    assert "sacct" not in text, text[-3000:]  # no accounting database here: no sacct noise
    assert reference is not None and reference.returncode == 0
    assert "3 trials: 3 done" in (tmp_path / "ref" / "runner.log").read_text()

    runs = load_runs(out).set_index("trial_id")
    assert (runs["status"] == "done").all(), runs[["status", "error"]]
    # Each trial trained once: the stopped ones in two attempts (one resume), the other in one.
    assert runs["attempts"].to_dict() == {t: 2 if t in stopped else 1 for t in jobs}
    for tid in stopped:
        after = rf.read_jsonl(out / tid / rf.METRICS)
        steps = [r["step"] for r in after]
        assert steps == sorted(set(steps)), steps  # one writer, no step logged twice
        # Resumed, not restarted: the records before the checkpoint are the first attempt's
        # own lines (their wall_s included), which a restart from step 0 would rewrite.
        assert before[tid] and after[: len(before[tid])] == before[tid], tid
        assert re.search(r"Restarts=1\b", _scontrol(jobs[tid])), _scontrol(jobs[tid])

    ref, ref_runs = tmp_path / "ref", load_runs(tmp_path / "ref").set_index("trial_id")
    for tid in jobs:
        assert _records(out / tid) == _records(ref / tid), tid
        assert runs.loc[tid, "final_eval_loss"] == ref_runs.loc[tid, "final_eval_loss"], tid
    print(f"SLURM sweep with two requeued jobs, and the reference: {wall:.1f}s")


def _write(path: Path, doc: dict[str, Any]) -> Path:
    """A sweep YAML (plain types only)."""
    path.write_text(yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False))
    return path


def _sweep_run(path: Path, out: Path, cache: Path, *args: str) -> subprocess.Popen:
    """`scalinglab sweep run` in the background; its output goes to OUT/runner.log."""
    out.mkdir()
    cmd = [sys.executable, "-m", "scalinglab.cli", "sweep", "run", str(path), "--out", str(out)]
    with open(out / "runner.log", "w") as log:
        return subprocess.Popen(
            [*cmd, "--cache-dir", str(cache), *args], stdout=log, stderr=subprocess.STDOUT
        )


def _squeue(jobs: dict[str, str]) -> str:
    """squeue's view of this test's jobs (for a failure message)."""
    arrays = ",".join(sorted({j.split("_")[0] for j in jobs.values()}))
    res = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i %T %r", "-j", arrays],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (res.stdout + res.stderr).strip()


def _scontrol(job: str) -> str:
    """`scontrol show job` of one job array task."""
    res = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30
    )
    return res.stdout + res.stderr


def test_slurm_job_killed_without_a_result_fails_the_trial_instead_of_hanging(
    slurm: None, tmp_path: Path, cache: Path
) -> None:
    """No accounting database (sacct) here: squeue must tell the runner the job is gone."""
    executor = {"name": "slurm", "cpus_per_task": 1, "time_min": 30}
    doc = {"name": "t", "base": BASE, "grid": {"seed": [0]}, "executor": executor}
    out = tmp_path / "out"
    runner = _sweep_run(_write(tmp_path / "s.yaml", doc), out, cache)
    jobs: dict[str, str] = {}
    try:
        jobs = _job_ids(out / ".submitit", 1, timeout=60)
        [(tid, job)] = jobs.items()
        deadline = time.monotonic() + 120
        while _checkpointed(out / tid) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # SIGKILL to the trial's process, as the kernel's OOM killer would: no checkpoint, no
        # result. (`scancel --signal=KILL` would be a plain scancel: SIGTERM, then a kill.)
        os.kill(lock_info(out / tid)["pid"], signal.SIGKILL)
        try:
            runner.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the runner still waits for a job that is gone; squeue: {_squeue(jobs)}")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        if jobs:
            subprocess.run(["scancel", *{j.split("_")[0] for j in jobs.values()}], timeout=30)
    text = (out / "runner.log").read_text()
    assert runner.returncode == 1, text[-3000:]  # "some trials failed"
    assert f"job {job} ended FAILED without a result" in " ".join(text.split()), text[-3000:]
