"""Trackers: what each backend wrote, read back with its own library's reader, equals
metrics.jsonl; selecting them in the config; a missing library names the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_trial
from scalinglab import runfiles as rf
from scalinglab.errors import ConfigError, TrialError
from scalinglab.sweep.expand import trial_id
from scalinglab.train import run_trial
from scalinglab.train.trackers import MLFLOW_DB, TENSORBOARD_DIR, build_trackers


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(directory), size_guidance={ea_mod.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _from_jsonl(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in rf.read_jsonl(run_dir / rf.METRICS):
        for k, v in rec.items():
            if k != "step" and isinstance(v, int | float) and v is not None:
                out.setdefault(k, []).append((rec["step"], v))
    return out


def _assert_same(tb: dict, jl: dict, skip: tuple[str, ...] = ()) -> None:
    assert set(tb) == set(jl)
    for tag in set(jl) - set(skip):
        steps = [s for s, _ in tb[tag]]
        assert steps == [s for s, _ in jl[tag]], tag
        # TensorBoard stores float32 scalars.
        want = np.array([v for _, v in jl[tag]], dtype=np.float32)
        assert np.array_equal(np.array([v for _, v in tb[tag]], dtype=np.float32), want), tag


class _Display:
    """A Tracker, as the CLI's progress bar is one."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.started: tuple[int, int] | None = None
        self.finished = False

    def start(self, step: int, info: dict) -> None:
        self.started = (step, info["total_steps"])

    def log(self, step: int, record: dict) -> None:
        assert step == record["step"]
        self.records.append(record)

    def finish(self) -> None:
        self.finished = True


def test_tensorboard_events_equal_metrics_jsonl(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    cfg = tiny_trial(**{"train.trackers": "[tensorboard]", "train.budget": "{steps: 20}"})
    assert cfg.train.trackers == ["jsonl", "tensorboard"]
    display = _Display()
    run_trial(cfg, tmp_path, progress=display)
    # The progress display is a tracker too: it saw the start and exactly the file's records.
    assert display.started == (0, 20) and display.finished
    assert display.records == rf.read_jsonl(tmp_path / rf.METRICS)
    tb, jl = _scalars(tmp_path / TENSORBOARD_DIR), _from_jsonl(tmp_path)
    assert {"train_loss", "eval_loss", "eval_loss_se", "lr", "grad_norm"} <= set(tb)
    _assert_same(tb, jl)


def test_tensorboard_after_a_resume_drops_the_replayed_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    cfg = tiny_trial(**{"train.trackers": "[tensorboard]", "train.budget": "{steps: 30}"})

    class Stop(Exception):
        pass

    def stop(ev: dict) -> None:
        if ev.get("step") == 25:  # logged past the checkpoint at 20
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, tmp_path, progress=stop)
    assert max(s for s, _ in _scalars(tmp_path / TENSORBOARD_DIR)["train_loss"]) == 25
    run_trial(cfg, tmp_path)
    tb, jl = _scalars(tmp_path / TENSORBOARD_DIR), _from_jsonl(tmp_path)
    # Wall-clock values differ between the two attempts; the steps must not repeat.
    _assert_same(tb, jl, skip=("wall_s", "tokens_per_s"))
    assert [s for s, _ in tb["train_loss"]] == [5, 10, 15, 20, 25, 30]


def _mlflow_run(run_dir: Path) -> tuple:
    """The one MLflow run in run_dir/mlflow.db and its metric histories, read back with
    MLflow's own client."""
    tracking = pytest.importorskip("mlflow.tracking")
    client = tracking.MlflowClient(tracking_uri=f"sqlite:///{run_dir / MLFLOW_DB}")
    exp = client.get_experiment_by_name(run_dir.name)
    (run,) = client.search_runs([exp.experiment_id])
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }
    return run, {k: sorted(v) for k, v in history.items()}


def test_mlflow_run_equals_metrics_jsonl_and_a_resume_continues_it(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    steps = {"train.budget": "{steps: 30}"}
    cfg = tiny_trial(**{"train.trackers": "[mlflow]", **steps})
    assert cfg.train.trackers == ["jsonl", "mlflow"]

    class Stop(Exception):
        pass

    def stop_at(step: int):
        def stop(ev: dict) -> None:
            if ev.get("step") == step:
                raise Stop

        return stop

    # Checkpoints every 10 steps. Without the tracker up to step 15 (resumed from 10); with it
    # up to 25 (resumed from 20); then to the end.
    with pytest.raises(Stop):
        run_trial(tiny_trial(**steps), tmp_path, progress=stop_at(15))
    with pytest.raises(Stop):
        run_trial(cfg, tmp_path, progress=stop_at(25))
    first, ml = _mlflow_run(tmp_path)
    assert first.info.status == "FAILED" and first.data.tags["scalinglab.status"] == "running"
    # Steps 5 and 10 copied from metrics.jsonl, then 15-25 logged.
    assert [s for s, _ in ml["train_loss"]] == [5, 10, 15, 20, 25]
    assert first.data.params["model.d_model"] == "32"
    assert first.data.params["train.budget.steps"] == "30"

    run_trial(cfg, tmp_path)
    run, ml = _mlflow_run(tmp_path)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["scalinglab.status"] == "done"
    jl = _from_jsonl(tmp_path)
    assert {"train_loss", "eval_loss", "eval_loss_se", "lr", "grad_norm"} <= set(ml)
    assert set(ml) == set(jl)
    # Steps 21-25 ran twice: MLflow keeps the first attempt's records of them (the same
    # losses; the wall-clock fields differ), and no step is there twice.
    for key in set(jl) - {"wall_s", "tokens_per_s"}:
        assert ml[key] == jl[key], key
    assert [s for s, _ in ml["train_loss"]] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in ml["eval_loss"]] == [10, 20, 30]


def test_trackers_are_validated_and_leave_the_trial_id_alone() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown tracker 'wandb'; allowed: jsonl, tensorboard, mlflow"
    ):
        tiny_trial(**{"train.trackers": "[wandb]"})
    plain, tb = tiny_trial(), tiny_trial(**{"train.trackers": "[tensorboard, jsonl]"})
    assert plain.train.trackers == ["jsonl"] and tb.train.trackers == ["jsonl", "tensorboard"]
    assert trial_id(plain) == trial_id(tb)
    assert trial_id(plain) != trial_id(tiny_trial(seed=1))


def test_adding_a_tracker_reuses_the_run_directory(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    cfg = tiny_trial(**{"train.budget": "{steps: 10}"})
    first = run_trial(cfg, tmp_path)
    again = run_trial(
        tiny_trial(**{"train.budget": "{steps: 10}", "train.trackers": "[tensorboard]"}), tmp_path
    )
    assert again == first  # finished: not trained again, and not refused as another trial
    assert "tensorboard" in (tmp_path / rf.CONFIG).read_text()


def test_missing_tracker_library_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for module in ("tensorboard", "tensorboard.compat.proto", "tensorboard.summary.writer"):
        monkeypatch.setitem(sys.modules, module, None)  # makes importing it fail
    with pytest.raises(TrialError, match=r"scalinglab\[trackers\]"):
        build_trackers(["jsonl", "tensorboard"], tmp_path)


def test_missing_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for module in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(TrialError, match=r"'mlflow' needs .*scalinglab\[trackers\]"):
        build_trackers(["jsonl", "mlflow"], tmp_path)
