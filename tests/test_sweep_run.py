"""Running sweeps on local workers: results, resume, failures, locks, kill -9 and two runners.

All trials are tiny (1 layer, 32 wide, synthetic data) and share one JAX compilation cache,
so after the first compile every trial starts in about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import SWEEP_BASE as BASE
from scalinglab import runfiles as rf
from scalinglab.sweep import (
    SweepError,
    expand,
    load_curves,
    load_runs,
    load_sweep,
    run_sweep,
    sweep_from_dict,
)
from scalinglab.sweep.expand import legacy_trial_id
from scalinglab.sweep.locks import TrialLock, holder
from scalinglab.train.loop import WALL_CLOCK_FIELDS


def write_sweep(path: Path, grid: dict[str, list], **extra: Any) -> Path:
    """A sweep of BASE trials; tests vary seeds so all share one compiled program."""
    base = json.loads(json.dumps(BASE))
    doc = {"name": "t", "base": base, "grid": grid, **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS}
        for r in rf.read_jsonl(run_dir / rf.METRICS)
    ]


def test_run_skip_edit_and_load_runs(tmp_path: Path, cache: Path) -> None:
    path = write_sweep(tmp_path / "s.yaml", {"seed": [0, 1]})
    sweep, trials = load_sweep(path)
    out = tmp_path / "out"
    res = run_sweep(sweep, trials, out, sweep_yaml=path, cache_dir=cache, workers=2)
    assert res.count("done") == 2 and (out / "sweep.yaml").read_text() == path.read_text()
    assert (out / "results.parquet").is_file()

    runs = load_runs(out)
    for col in (
        "trial_id",
        "status",
        "N",
        "N_nonembed",
        "D",
        "C",
        "final_eval_loss",
        "best_eval_loss",
        "steps",
        "wall_s",
        "loss",
        "model.d_model",
        "seed",
        "train.batch_size",
        "optimizer.lr",
        "data.source",
        "isoflop_C",
    ):
        assert col in runs.columns, col
    assert sorted(runs["trial_id"]) == sorted(t.trial_id for t in trials)
    assert (runs["status"] == "done").all() and (runs["D"] == 200 * 8 * 32).all()
    assert (runs["loss"] == runs["final_eval_loss"]).all()
    assert sorted(runs["seed"]) == [0, 1] and (runs["model.d_model"] == 32).all()
    curves = load_curves(out)
    assert len(curves) == 2 * 4  # evals at steps 50, 100, 150, 200
    for col in (
        "trial_id",
        "step",
        "tokens",
        "flops",
        "eval_loss",
        "N",
        "D",
        "C",
        "loss",
        "model.d_model",
    ):
        assert col in curves.columns, col

    # Re-running trains nothing; an edited sweep trains only its new trial.
    again = run_sweep(sweep, trials, out, cache_dir=cache)
    assert all(o.get("skipped") for o in again.outcomes.values())
    path = write_sweep(tmp_path / "s.yaml", {"seed": [0, 1, 2]})
    sweep, trials = load_sweep(path)
    res = run_sweep(sweep, trials, out, sweep_yaml=path, cache_dir=cache)
    trained = [t for t, o in res.outcomes.items() if not o.get("skipped")]
    assert len(trained) == 1 and res.outcomes[trained[0]]["status"] == "done"
    assert (load_runs(out)["attempts"] == 1).all()

    # Cadence edits (checkpoint/log/eval) leave every trial as it is: nothing retrains.
    path = write_sweep(tmp_path / "s.yaml", {"seed": [0, 1, 2], "train.checkpoint_every": [7]})
    sweep, edited = load_sweep(path)
    assert [t.trial_id for t in edited] == [t.trial_id for t in trials]
    assert all(o.get("skipped") for o in run_sweep(sweep, edited, out).outcomes.values())

    # A directory named by the first id scheme is adopted (renamed), not retrained.
    first = trials[0]
    (out / first.trial_id).rename(out / legacy_trial_id(first.config))
    res = run_sweep(sweep, trials, out, cache_dir=cache)
    assert all(o.get("skipped") for o in res.outcomes.values())
    assert (out / first.trial_id).is_dir() and not (out / legacy_trial_id(first.config)).exists()

    # Two directories of one trial are one row, and the copy is named in a note.
    shutil.copytree(out / first.trial_id, out / "copy-of-first")
    runs = load_runs(out)
    assert sorted(runs["trial_id"]) == sorted(t.trial_id for t in trials)
    assert "copy-of-first (= " + first.trial_id in runs.attrs["notes"][0]
    assert set(load_curves(out)["trial_id"]) == set(runs["trial_id"])


def test_failed_trial_is_recorded_and_sweep_goes_on(tmp_path: Path, cache: Path) -> None:
    # lr 1e4 diverges; a 1-FLOP budget is below one step (TrialError); 32 trains normally.
    base = yaml.safe_load(write_sweep(tmp_path / "s.yaml", {}).read_text())["base"]
    sweep = sweep_from_dict(
        {
            "name": "f",
            "base": base,
            "grid": {
                "optimizer.lr": [0.01, 1.0e4],
                "train.budget": [{"steps": 20}, {"flops": 1.0}],
            },
        }
    )
    trials = expand(sweep)
    out = tmp_path / "out"
    res = run_sweep(sweep, trials, out, cache_dir=cache)
    by = {
        (t.config.optimizer.lr, t.config.train.budget.flops is None): res.outcomes[t.trial_id]
        for t in trials
    }
    assert by[(0.01, True)]["status"] == "done"
    assert by[(1.0e4, True)]["status"] == "diverged"
    assert by[(0.01, False)]["status"] == "failed"
    assert "smaller than one step" in by[(0.01, False)]["error"]
    runs = load_runs(out).set_index("trial_id")
    failed = [t.trial_id for t in trials if res.outcomes[t.trial_id]["status"] == "failed"]
    assert all("TrialError" in runs.loc[t, "error"] for t in failed)
    # Failed trials are skipped on re-run unless asked to retry.
    res2 = run_sweep(sweep, trials, out, cache_dir=cache)
    assert all(res2.outcomes[t].get("skipped") for t in failed)
    res3 = run_sweep(sweep, trials, out, cache_dir=cache, retry_failed=True)
    assert all(not res3.outcomes[t].get("skipped") for t in failed)
    assert (load_runs(out).set_index("trial_id").loc[failed, "attempts"] == 2).all()

    # A damaged trial is that trial's problem: a corrupt summary.json and a trial path that
    # is a file are failed outcomes naming the file; the other trials go on, nothing retrains.
    done = next(t.trial_id for t in trials if res.outcomes[t.trial_id]["status"] == "done")
    gone = next(t.trial_id for t in trials if res.outcomes[t.trial_id]["status"] == "diverged")
    (out / done / "summary.json").write_text('{"status": "done", "N": ')
    shutil.rmtree(out / gone)
    (out / gone).write_text("not a directory")
    res4 = run_sweep(sweep, trials, out, cache_dir=cache)
    assert res4.outcomes[done]["status"] == "failed"
    assert f"{done}/summary.json: not valid JSON" in res4.outcomes[done]["error"]
    assert res4.outcomes[gone]["status"] == "failed"
    assert "Not a directory" in res4.outcomes[gone]["error"]
    rows = load_runs(out).set_index("trial_id")
    assert rows.loc[done, "status"] == "corrupt" and "not valid JSON" in rows.loc[done, "error"]


def test_unwritable_directory_is_one_clear_error(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "s.yaml", {"seed": [0]})
    sweep, trials = load_sweep(path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SweepError, match="not writable"):
        run_sweep(sweep, trials, blocker / "out")
    with pytest.raises(SweepError, match="--cache-dir .*file: exists and is not a directory"):
        run_sweep(sweep, trials, tmp_path / "out", cache_dir=blocker)  # not a JAX warning flood
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(SweepError, match="not writable"):
            run_sweep(sweep, trials, ro)


def test_lock_excludes_and_dies_with_its_process(tmp_path: Path) -> None:
    lock = TrialLock(tmp_path)
    assert lock.acquire()
    assert not TrialLock(tmp_path).acquire()
    assert holder(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert holder(tmp_path) is None
    # A process killed while holding the lock leaves no stale lock behind.
    code = (
        "import sys,time; from scalinglab.sweep.locks import TrialLock; "
        f"assert TrialLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    assert holder(tmp_path)["pid"] == p.pid and not TrialLock(tmp_path).acquire()
    p.kill()
    p.wait()
    assert TrialLock(tmp_path).acquire()


def _runner(path: Path, out: Path, cache: Path, workers: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "scalinglab.cli",
        "sweep",
        "run",
        str(path),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--cache-dir",
        str(cache),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _busy_trial(out: Path, min_step: int) -> tuple[Path, int] | None:
    """A trial being trained past `min_step`, with its worker's pid."""
    for d in out.glob("*/"):
        h = holder(d)
        recs = rf.read_jsonl(d / rf.METRICS)
        if h and recs and recs[-1]["step"] >= min_step and not (d / rf.SUMMARY).exists():
            return d, h["pid"]
    return None


def test_kill_9_worker_and_runner_then_rerun_equals_uninterrupted(
    tmp_path: Path, cache: Path
) -> None:
    path = write_sweep(tmp_path / "s.yaml", {"seed": [0, 1, 2, 3]})
    sweep, trials = load_sweep(path)
    ref = tmp_path / "ref"
    run_sweep(sweep, trials, ref, cache_dir=cache, workers=2)

    out = tmp_path / "out"
    runner = _runner(path, out, cache, workers=2)
    try:
        _, worker = _wait(lambda: _busy_trial(out, 40), 120, "a trial to pass step 40")
        os.kill(worker, signal.SIGKILL)  # a worker dies mid-trial: the sweep goes on
        _wait(lambda: (b := _busy_trial(out, 40)) and b[1] != worker, 120, "a new worker")
        workers = _children(runner.pid)
        started = {d.name for d in out.glob("*/") if (d / rf.METRICS).exists()}
        os.kill(runner.pid, signal.SIGKILL)  # then the runner itself
        runner.wait(30)
        # Its workers follow it (they checkpoint first), take no queued trial and leave no
        # lock behind.
        _wait(lambda: all(holder(d) is None for d in out.glob("*/")), 60, "workers to exit")
        _wait(lambda: not any(_alive(pid) for pid in workers), 60, "worker processes to end")
        assert {d.name for d in out.glob("*/") if (d / rf.METRICS).exists()} == started
    finally:
        runner.kill()
    assert len(list(out.glob("*/summary.json"))) < len(trials)

    res = run_sweep(sweep, trials, out, cache_dir=cache, workers=2)
    assert res.count("done") == len(trials)
    runs = load_runs(out).set_index("trial_id")
    assert (runs["status"] == "done").all()
    assert runs["attempts"].max() >= 2  # something was resumed
    for t in trials:
        assert _records(out / t.trial_id) == _records(ref / t.trial_id), t.trial_id
    assert sorted(runs["final_eval_loss"]) == sorted(load_runs(ref)["final_eval_loss"])


@pytest.mark.slow  # tests/test_fault_load.py runs two runners on 20 trials, under kill -9 too
def test_two_concurrent_runners_train_each_trial_once(tmp_path: Path, cache: Path) -> None:
    path = write_sweep(tmp_path / "s.yaml", {"seed": [0, 1, 2]})
    _, trials = load_sweep(path)
    out = tmp_path / "out"
    a, b = _runner(path, out, cache, workers=1), _runner(path, out, cache, workers=1)
    for p in (a, b):
        _, errtxt = p.communicate(timeout=300)
        assert p.returncode == 0, errtxt[-2000:]
    runs = load_runs(out)
    assert len(runs) == len(trials) and (runs["status"] == "done").all()
    assert (runs["attempts"] == 1).all()  # no trial was started twice
    for t in trials:
        steps = [r["step"] for r in rf.read_jsonl(out / t.trial_id / rf.METRICS)]
        assert steps == sorted(set(steps))  # one writer per metrics file


def test_cli_plan_status_and_bad_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scalinglab.cli import app

    path = write_sweep(tmp_path / "s.yaml", {"seed": [0, 1]})
    cli = CliRunner()
    res = cli.invoke(app, ["sweep", "plan", str(path), "--no-probe", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "2 trials" in res.output and "N_nonembed" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""\
        name: b
        grid:
          model.activation: [gelu, gelux]
    """)
    )
    res = cli.invoke(app, ["sweep", "plan", str(bad), "--no-probe"])
    assert res.exit_code == 2
    assert "bad.yaml:3: model.activation: not allowed" in res.output
    res = cli.invoke(app, ["sweep", "status", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no such sweep directory" in res.output


def test_paired_eval_noise_sees_through_shared_batch_difficulty() -> None:
    """Runs scored on the same batches: the batch-difficulty spread cancels, the per-run
    noise does not. Checked against the closed form E[se^2] = s^2 / n_batches."""
    from scalinglab.sweep.store import paired_eval_noise

    rng = np.random.default_rng(0)
    s, n_batches, k, groups = 0.01, 8, 4, 1500
    ratios, raw = [], []
    for _ in range(groups):
        hard = rng.normal(3.0, 0.5, n_batches)  # text difficulty shared by every run
        rows = [
            {
                "eval_loss_batches": list(hard + 0.1 * i + s * rng.standard_normal(n_batches)),
                "data.source": "stdlib",
                "train.batch_size": 32,
            }
            for i in range(k)
        ]
        raw.append(np.std(rows[0]["eval_loss_batches"], ddof=1) / np.sqrt(n_batches))
        paired_eval_noise(rows)
        ratios += [r["final_eval_loss_se_paired"] ** 2 / (s**2 / n_batches) for r in rows]
        assert all("eval_loss_batches" not in r for r in rows)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.03)  # sd of this mean is about 0.01
    assert np.median(raw) > 20 * s / np.sqrt(n_batches)  # what the unpaired se would say

    # Different evaluation settings are different batches: never paired; a lone run gets NaN.
    rows = [
        {"eval_loss_batches": [2.0, 2.1, 2.2], "train.batch_size": 32},
        {"eval_loss_batches": [2.0, 2.2, 2.2], "train.batch_size": 64},
        {"eval_loss_batches": None, "train.batch_size": 32},
    ]
    paired_eval_noise(rows)
    assert all(np.isnan(r["final_eval_loss_se_paired"]) for r in rows)


def test_an_orphaned_local_worker_takes_no_trial(tmp_path: Path) -> None:
    """A local worker whose runner died exits (143) at the next trial it is handed, before
    locking or training it, or in its initialiser: queued work waits for the next runner."""
    run_dir = tmp_path / "trial"
    code = (
        "from scalinglab.sweep import worker; worker._runner['pid'] = -1; "  # not our parent
        f"worker.execute_trial({{'trial_id': 't', 'run_dir': {str(run_dir)!r}, 'config': {{}}}})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert not run_dir.exists()
    # A worker that starts up after its runner died (re-parented before its initialiser ran)
    # exits there, rather than taking the new parent for its runner and waiting forever.
    code = "from scalinglab.sweep import worker; worker.init_local_worker(None, -1); print('up')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143 and "up" not in done.stdout, done.stderr


def test_ctrl_c_once_stops_cleanly_and_twice_at_once(tmp_path: Path, cache: Path) -> None:
    """One Ctrl-C (SIGINT to the terminal's process group): running trials checkpoint, no
    queued trial starts, the runner exits 130 within seconds, its workers end. After a
    re-run, two Ctrl-C half a second apart stop it at once, without a traceback."""
    doc = {"name": "t", "base": json.loads(json.dumps(BASE)), "grid": {"seed": list(range(6))}}
    doc["base"]["train"]["budget"] = {"steps": 5000}  # long enough to be caught mid-trial
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"

    def started() -> set[str]:
        return {d.name for d in out.glob("*/") if (d / rf.METRICS).exists()}

    def busy() -> bool:
        return sum(1 for d in out.glob("*/") if holder(d) and (d / rf.METRICS).exists()) == 2

    for presses in (1, 2):
        cmd = [sys.executable, "-m", "scalinglab.cli", "sweep", "run", str(path)]
        cmd += ["--out", str(out), "--workers", "2", "--cache-dir", str(cache)]
        runner = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _wait(busy, 120, "both workers to train")
            workers, before = _children(runner.pid), started()
            t0 = time.monotonic()
            for i in range(presses):
                if i:
                    time.sleep(0.5)
                os.killpg(runner.pid, signal.SIGINT)
            _, err = runner.communicate(timeout=60)
            took = time.monotonic() - t0
        finally:
            runner.kill()
        assert runner.returncode == 130, err
        said = " ".join(err.split())  # the console wraps long lines
        assert "Traceback" not in err and "re-run the same command to resume" in said, err
        assert started() == before  # nothing queued started after the Ctrl-C
        assert took < (30 if presses == 1 else 10), took
        _wait(lambda w=workers: not any(_alive(p) for p in w), 30, "workers to end")
        assert all(holder(d) is None for d in out.glob("*/"))
        if presses == 1:
            busy_ones = [d for d in out.glob("*/") if d.name in before]
            assert all(rf.read_json(d / rf.STATUS)["status"] == "interrupted" for d in busy_ones)
            assert all(any((d / rf.CHECKPOINTS).iterdir()) for d in busy_ones)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A tmpfs of a chosen size (root only: CI runs as root); yields a resize function."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def size(n_bytes: int) -> Path:
        opts = f"size={n_bytes}" if not os.path.ismount(disk) else f"remount,size={n_bytes}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(disk)], check=False)
        if done.returncode != 0:
            pytest.skip("mounting a small tmpfs needs root")
        return disk

    yield size
    if os.path.ismount(disk):
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs")
def test_disk_full_fails_the_trial_in_one_line_and_loses_nothing(
    tmp_path: Path, cache: Path, small_disk: Any
) -> None:
    from scalinglab.flops import param_counts
    from scalinglab.train.checkpoint import SAVE_MARGIN_BYTES

    path = write_sweep(tmp_path / "s.yaml", {"seed": [0]})
    _, (trial,) = load_sweep(path)
    # Room for the checkpoint of step 25 (params, Adam's mu and nu in f32, about 330 kB on
    # disk) but then less than a save asks for: step 50's checkpoint cannot be written.
    need = 12 * param_counts(trial.config.model)["total"] * 1.02 + SAVE_MARGIN_BYTES
    disk = small_disk(int(need) + 160_000)
    cmd = [sys.executable, "-m", "scalinglab.cli", "sweep", "run", str(path)]
    cmd += ["--out", str(disk / "sw"), "--cache-dir", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in said, said
    assert "cannot save the checkpoint of step 50: no space left on device" in said, said
    assert len(said.strip().splitlines()) <= 5, said
    run_dir = disk / "sw" / trial.trial_id
    status = json.loads((run_dir / rf.STATUS).read_text())
    assert status["status"] == "failed" and "no space left on device" in status["error"]
    assert (run_dir / "checkpoints" / "25").is_dir()

    # Space freed: the trial resumes from step 25 and ends exactly as an uninterrupted run.
    small_disk(64 << 20)
    done = subprocess.run([*cmd, "--retry-failed"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    sweep, trials = load_sweep(path)
    run_sweep(sweep, trials, tmp_path / "ref", cache_dir=cache, workers=2)  # same XLA threads
    ref = tmp_path / "ref" / trial.trial_id
    assert _records(run_dir) == _records(ref)
    assert json.loads((run_dir / rf.STATUS).read_text())["attempts"] == 2
