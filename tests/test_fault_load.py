"""Fault load: two runners share a 20-trial sweep while runners and workers are killed with
SIGKILL again and again. Nothing may be lost or trained twice, and every trial's metrics must
equal those of an uninterrupted sweep, record for record."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from conftest import SWEEP_BASE
from scalinglab import runfiles as rf
from scalinglab.sweep import load_runs, load_sweep, run_sweep
from test_sweep_run import _alive, _busy_trial, _records, _runner, _wait

N_TRIALS = 20
KILLS = ("worker", "runner", "worker", "runner")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "jax_cache_fault"


def _sweep(path: Path) -> Path:
    base = json.loads(json.dumps(SWEEP_BASE))
    base["train"].update(budget={"steps": 80}, checkpoint_every=10, eval_every=30)
    doc = {
        "name": "fault",
        "base": base,
        "grid": {"seed": list(range(N_TRIALS))},
        # One XLA thread per worker whatever the worker count, so the uninterrupted reference
        # (two workers in one runner) and the runners under fault compute the same floats.
        "executor": {"name": "local", "threads": 1},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_two_runners_under_repeated_kill_9_lose_nothing_and_train_nothing_twice(
    tmp_path: Path, cache: Path
) -> None:
    path = _sweep(tmp_path / "s.yaml")
    sweep, trials = load_sweep(path)
    ref = tmp_path / "ref"
    assert run_sweep(sweep, trials, ref, cache_dir=cache, workers=2).count("done") == N_TRIALS

    out = tmp_path / "out"
    runners = [_runner(path, out, cache, workers=1) for _ in range(2)]
    killed = {"worker": 0, "runner": 0}
    try:
        for what in KILLS:
            done_before = len(list(out.glob("*/summary.json")))
            _, worker = _wait(lambda: _busy_trial(out, 20), 120, "a trial past step 20")
            if what == "worker":
                os.kill(worker, signal.SIGKILL)
            else:  # the runner whose worker that is
                i = [r.pid for r in runners].index(_parent(worker))
                runners[i].send_signal(signal.SIGKILL)
                runners[i].wait(30)
                _wait(lambda w=worker: not _alive(w), 60, "the dead runner's worker to exit")
                runners[i] = _runner(path, out, cache, workers=1)
            killed[what] += 1
            # Let the sweep make progress before the next kill.
            _wait(
                lambda n=done_before: len(list(out.glob("*/summary.json"))) > n,
                120,
                "a trial to finish",
            )
        for r in runners:
            _, err = r.communicate(timeout=300)
            assert r.returncode == 0, err[-2000:]
    finally:
        for r in runners:
            r.kill()
    assert killed == {"worker": 2, "runner": 2}

    runs = load_runs(out).set_index("trial_id")
    assert len(runs) == N_TRIALS and (runs["status"] == "done").all()  # nothing lost
    assert runs["attempts"].max() >= 2  # something was resumed
    for t in trials:
        got = _records(out / t.trial_id)
        steps = [r["step"] for r in rf.read_jsonl(out / t.trial_id / rf.METRICS)]
        assert steps == sorted(set(steps)), t.trial_id  # one writer, no step twice
        assert got == _records(ref / t.trial_id), t.trial_id  # nothing lost or repeated
