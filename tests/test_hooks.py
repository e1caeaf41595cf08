"""Each loop hook on its own, against hand-computed values (no training loop involved)."""

from __future__ import annotations

import math
import os
import signal
import statistics
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab import runfiles as rf
from scalinglab.budget import Budget
from scalinglab.rundir import RunDir
from scalinglab.train import checkpoint as ckpt
from scalinglab.train import hooks as hk
from scalinglab.train.state import TrainState


def _loop(step: int = 0, total: int = 20, **kw: Any) -> hk.Loop:
    loop = hk.Loop(total_steps=total, budget=Budget(total, 256, 1000.0), **kw)
    loop.step = step
    return loop


def test_every_and_at_end() -> None:
    log = hk.Log(5, lambda s: 0.0)
    ckpt_hook = hk.Checkpoint(5, manager=None)
    due = [s for s in range(1, 23) if log.due(_loop(s, total=22))]
    assert due == [5, 10, 15, 20, 22]  # at_end: the last step too
    assert [s for s in range(1, 23) if ckpt_hook.due(_loop(s, total=22))] == [5, 10, 15, 20]
    assert not hk.Divergence(3.0).due(_loop(5))  # rides along, never due by itself


def test_divergence_on_blow_up_and_non_finite() -> None:
    loop = _loop(3)
    loop.losses = [(1, 2.0), (2, 5.9), (3, 6.1)]
    hk.Divergence(3.0).observe(loop)
    assert loop.host.initial_loss == 2.0
    assert (loop.outcome, loop.stopped_at) == ("diverged", 3)
    assert "6.1 at step 3 exceeds 3x the initial 2" in loop.reason
    loop = _loop(2)
    loop.losses = [(1, 2.0), (2, float("nan"))]
    hk.Divergence(3.0).observe(loop)
    assert (loop.outcome, loop.stopped_at, loop.reason) == (
        "diverged",
        2,
        "non-finite train loss at step 2",
    )


def test_log_means_the_losses_since_the_last_log() -> None:
    hook = hk.Log(4, schedule=lambda s: 0.5 / (s + 1))
    loop = _loop(2)
    hook.open(loop)
    loop.losses = [(1, 3.0), (2, 2.0)]
    hook.observe(loop)  # a point (e.g. an eval) that is not a log point
    loop.step, loop.losses = 4, [(3, 1.5), (4, 1.0)]
    loop.metrics = {"grad_norm": jnp.float32(0.25)}
    hook.observe(loop)
    hook(loop)
    assert loop.record["train_loss"] == pytest.approx((3.0 + 2.0 + 1.5 + 1.0) / 4)
    assert loop.record["grad_norm"] == 0.25
    assert loop.record["lr"] == pytest.approx(0.5 / 4)  # the rate step 4 was taken with
    assert loop.record["tokens_per_s"] > 0
    assert loop.host.losses_since_log == []


def test_evaluate_mean_and_standard_error() -> None:
    per_batch = [2.0, 2.5, 1.5, 3.0]
    hook = hk.Evaluate(10, lambda state, val: {"loss": np.array(per_batch)}, val=None)
    loop = _loop(10)
    hook(loop)
    assert loop.record["eval_loss"] == pytest.approx(statistics.fmean(per_batch))
    se = statistics.stdev(per_batch) / math.sqrt(len(per_batch))
    assert loop.record["eval_loss_se"] == pytest.approx(se, rel=1e-12)
    assert loop.host.last_eval_metrics == loop.record
    assert loop.host.last_eval_batches == per_batch  # kept for the paired noise of the sweep
    assert hk.standard_error([1.0]) is None
    bad = hk.Evaluate(10, lambda state, val: {"loss": np.array([1.0, np.inf])}, val=None)
    loop = _loop(10)
    bad(loop)
    assert loop.outcome == "diverged" and "eval_loss" in loop.record


def test_early_stopping_counts_evals_without_improvement() -> None:
    hook = hk.EarlyStopping(10, patience=2, min_delta=0.1)
    loop = _loop(10)
    outcomes = []
    for ev in [3.0, 2.95, 2.8, 2.75, 2.72]:
        loop.host.last_eval = ev
        hook(loop)
        outcomes.append((loop.host.best_eval, loop.host.bad_evals, loop.outcome))
    # 2.95 is not 0.1 below 3.0; 2.8 is; then two more without a 0.1 gain stop it.
    assert outcomes == [
        (3.0, 0, None),
        (3.0, 1, None),
        (2.8, 0, None),
        (2.8, 1, None),
        (2.8, 2, "stopped_early"),
    ]
    never = hk.EarlyStopping(10)
    loop = _loop(10)
    for ev in [3.0, 3.5, 4.0, 2.0]:
        loop.host.last_eval = ev
        never(loop)
    assert loop.outcome is None and loop.host.best_eval == 2.0


class _Collect:
    def __init__(self) -> None:
        self.got: list[tuple[int, dict]] = []

    def log(self, step: int, record: dict) -> None:
        self.got.append((step, record))


def test_record_writes_step_tokens_flops_then_the_metrics() -> None:
    sink = _Collect()
    hook = hk.Record([sink])
    loop = _loop(7)
    assert not hook.due(loop)
    loop.record = {"train_loss": 1.25}
    assert hook.due(loop)
    hook(loop)
    ((step, rec),) = sink.got
    assert step == 7 and list(rec) == ["step", "tokens", "flops", "train_loss", "wall_s"]
    assert rec["tokens"] == 7 * 256 and rec["flops"] == 7 * 256 * 1000.0


def test_run_point_skips_hooks_after_a_stop_but_writes_the_record() -> None:
    sink = _Collect()
    log = hk.Log(1, lambda s: 0.0)
    loop = _loop(1)
    log.open(loop)
    loop.losses, loop.metrics = [(1, float("inf"))], {"grad_norm": 0.0}
    hk.run_point([hk.Divergence(3.0), log, hk.Record([sink])], loop)
    assert loop.outcome == "diverged" and loop.record == {} and sink.got == []


def test_checkpoint_saves_state_and_host_bookkeeping(tmp_path: Path) -> None:
    manager = ckpt.open_manager(tmp_path / "ckpt", keep=2)
    state = TrainState(step=jnp.int32(6), params={"w": jnp.arange(3.0)}, opt_state={})
    loop = _loop(6, state=state)
    loop.host.best_eval, loop.host.losses_since_log = 1.5, [2.0, 1.0]
    hook = hk.Checkpoint(3, manager)
    assert hook.due(loop)
    hook(loop)
    restored, host = ckpt.restore_latest(manager, state)
    manager.close()
    assert int(restored.step) == 6 and np.array_equal(restored.params["w"], [0.0, 1.0, 2.0])
    assert hk.HostState(**host) == loop.host
    loop = _loop(7)
    assert not hook.due(loop)
    loop.signum = signal.SIGTERM
    assert hook.due(loop)  # a signal checkpoints at once


def test_checkpoint_refuses_only_when_free_space_is_below_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save's space check: state bytes + 2% + 1 MiB, counted here by hand (a 4000-float
    state: 16000 bytes). Exactly that much free saves; one byte less refuses, with both
    figures in the message."""
    import shutil
    from collections import namedtuple

    from scalinglab.errors import DiskFullError

    manager = ckpt.open_manager(tmp_path / "ckpt", keep=3)
    params = {"w": jnp.zeros(4000, jnp.float32)}
    need = (4 + 16000) * 1.02 + 2**20  # the int32 step, then the float32 weights
    usage = namedtuple("usage", "total used free")

    def state(step: int) -> TrainState:
        return TrainState(step=jnp.int32(step), params=params, opt_state={})

    free = {"bytes": need}
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 40, 0, free["bytes"]))
    ckpt.save(manager, state(1), {})
    assert manager.all_steps() == [1]
    free["bytes"] = need - 1
    with pytest.raises(DiskFullError) as err:
        ckpt.save(manager, state(2), {})
    assert f"needs about {need / 1e6:.1f} MB, {(need - 1) / 1e6:.1f} MB free" in str(err.value)
    assert manager.all_steps() == [1]
    manager.close()


def test_interrupt_catches_the_signal_and_marks_the_run(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.start()
    hook, loop = hk.Interrupt(rd), _loop(4)
    before = signal.getsignal(signal.SIGTERM)
    hook.open(loop)
    try:
        assert not hook.due(loop)
        os.kill(os.getpid(), signal.SIGTERM)
        assert loop.signum == signal.SIGTERM and hook.due(loop)
        with pytest.raises(hk.TrialInterrupted, match="step 4"):
            hook(loop)
    finally:
        hook.close()
    assert signal.getsignal(signal.SIGTERM) is before
    status = rf.read_json(tmp_path / rf.STATUS)
    assert status["status"] == "interrupted" and status["attempts"] == 1
    assert (status["step"], status["total_steps"]) == (4, 20)
