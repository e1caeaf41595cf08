"""The Ray and submitit (SLURM) executors, run for real on a 2-trial sweep.

Ray and submitit are in the `dev` extra, so these tests run in CI; they are skipped only where
the optional extras are not installed, and the error then names the extra to install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import SWEEP_BASE as BASE
from scalinglab.sweep import expand as expand_sweep
from scalinglab.sweep import load_runs, run_sweep, sweep_from_dict
from scalinglab.sweep.executors import ExecutorUnavailable, make_executor


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "jax_cache"


def _sweep(executor: dict) -> tuple:
    sweep = sweep_from_dict(
        {"name": "x", "base": BASE, "grid": {"seed": [0, 1]}, "executor": executor}
    )
    return sweep, expand_sweep(sweep)


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="install the ray extra: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_runs_a_sweep(ray_runtime, tmp_path: Path, cache: Path) -> None:
    sweep, trials = _sweep({"name": "ray", "num_cpus": 1})
    res = run_sweep(sweep, trials, tmp_path / "out", cache_dir=cache)
    assert res.count("done") == 2, res.outcomes
    runs = load_runs(tmp_path / "out")
    assert (runs["status"] == "done").all() and runs["final_eval_loss"].notna().all()
    pids = {o["pid"] for o in res.outcomes.values()}
    assert pids and __import__("os").getpid() not in pids  # trained in Ray workers


def test_submitit_local_executor_runs_a_sweep(tmp_path: Path, cache: Path) -> None:
    pytest.importorskip("submitit", reason="install the slurm extra: pip install -e '.[slurm]'")
    sweep, trials = _sweep(
        {"name": "slurm", "cluster": "local", "time_min": 5, "array_parallelism": 2}
    )
    res = run_sweep(sweep, trials, tmp_path / "out", cache_dir=cache)
    assert res.count("done") == 2, res.outcomes
    assert (tmp_path / "out" / ".submitit").is_dir()  # submitit's job logs
    assert (load_runs(tmp_path / "out")["status"] == "done").all()


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for module, name, extra in (("ray", "ray", "ray"), ("submitit", "slurm", "slurm")):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
        sweep, _ = _sweep({"name": name})
        with pytest.raises(ExecutorUnavailable, match=rf"pip install 'scalinglab\[{extra}\]'"):
            make_executor(sweep.executor, str(tmp_path))


@pytest.mark.parametrize("cluster", [None, "slurm"])
def test_slurm_without_slurm_is_refused_not_run_locally(
    cluster: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No sbatch here: refuse, instead of submitit's silent fall-back to local jobs."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no sbatch, no squeue
    executor = {"name": "slurm", **({"cluster": cluster} if cluster else {})}
    sweep, _ = _sweep(executor)
    with pytest.raises(ExecutorUnavailable, match="executor slurm: no SLURM on this machine"):
        make_executor(sweep.executor, str(tmp_path))
    local, _ = _sweep({"name": "slurm", "cluster": "local"})  # asked for by name: allowed
    make_executor(local.executor, str(tmp_path))
