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
from scalinglab.train.trackers import TENSORBOARD_DIR, build_trackers


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


def test_trackers_are_validated_and_leave_the_trial_id_alone() -> None:
    with pytest.raises(ConfigError, match=r"unknown tracker 'wandb'; allowed: jsonl, tensorboard"):
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
