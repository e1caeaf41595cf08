"""The budget object and the run-directory type: arithmetic, status transitions, skip rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_trial
from scalinglab import runfiles as rf
from scalinglab.budget import Budget
from scalinglab.errors import TrialError
from scalinglab.flops import param_counts
from scalinglab.rundir import RunDir, shown_status


def test_budget_in_steps_tokens_and_flops() -> None:
    cfg = tiny_trial(**{"train.budget": "{tokens: 2600}"})  # 8 x 32 = 256 tokens a step
    b = Budget.of(cfg)
    assert (b.steps, b.units_per_step, b.tokens) == (10, 256, 2560)
    n = param_counts(cfg.model)["non_embedding"]
    # Kaplan counting: C = 6 N D, N the non-embedding parameters.
    assert b.flops_per_token == pytest.approx(6 * n)
    assert b.flops_at(3) == pytest.approx(b.flops_per_token * 3 * 256)
    flops = 7.5 * 256 * b.flops_per_token
    assert Budget.of(tiny_trial(**{"train.budget": f"{{flops: {flops}}}"})).steps == 7
    with pytest.raises(TrialError, match="smaller than one step"):
        Budget.of(tiny_trial(**{"train.budget": "{tokens: 100}"}))
    assert Budget.of_or_none(tiny_trial(**{"train.budget": "{tokens: 100}"})) is None


def test_status_transitions_keep_the_file_format(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "t")
    rd.prepare(tiny_trial())
    assert rd.status() == "pending" and rd.skip() is None
    rd.start()
    rd.start()
    rec = rf.read_json(rd.path / rf.STATUS)
    assert list(rec) == ["status", "attempts", "error", "updated"]
    assert (rec["status"], rec["attempts"], rec["error"]) == ("running", 2, None)
    rd.fail(ValueError("bad thing\nmore"))
    rec = rf.read_json(rd.path / rf.STATUS)
    assert (rec["status"], rec["attempts"], rec["error"]) == ("failed", 2, "ValueError: bad thing")
    assert rd.skip() == {"status": "failed", "error": "ValueError: bad thing"}
    assert rd.skip(retry_failed=True) is None
    rd.mark_interrupted("interrupted; re-run to resume")
    assert rd.status() == "interrupted" and rd.skip() is None
    summary = {"status": "stopped_early", "steps": 30, "diverged": None}
    rd.finish(summary, total_steps=40)
    rec = rf.read_json(rd.path / rf.STATUS)
    assert list(rec) == ["status", "attempts", "error", "step", "total_steps", "updated"]
    assert (rec["status"], rec["step"], rec["total_steps"]) == ("stopped_early", 30, 40)
    assert json.loads((rd.path / rf.SUMMARY).read_text()) == summary
    assert rd.skip(retry_failed=True) == {"status": "stopped_early", "summary": summary}
    with pytest.raises(ValueError, match="unknown run status 'finished'"):
        rd.set_status("finished")


def test_prepare_refuses_another_trial(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.prepare(tiny_trial())
    with pytest.raises(TrialError, match="different trial"):
        rd.prepare(tiny_trial(seed=1))
    rd.prepare(tiny_trial(**{"train.trackers": "[tensorboard]"}))  # observation only


def test_shown_status() -> None:
    live = {"host": "h", "pid": 7}
    assert shown_status("running", None, live) == ("running", "h:7")
    assert shown_status("pending", None, live) == ("running", "h:7")
    assert shown_status("running", None, None)[0] == "interrupted"
    assert shown_status("pending", None, None) == ("pending", "")
    assert shown_status("failed", "ValueError: x", None) == ("failed", "ValueError: x")
    assert shown_status("done", "ignored", None) == ("done", "")
