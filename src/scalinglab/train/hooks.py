"""Loop hooks: what happens around the optimiser steps (logging, evaluation, divergence, early
stopping, the record write, checkpoints, signals), each a small object with an `every`.

The driver (`scalinglab.train.loop`) dispatches steps and reads nothing back until some hook is
due: a *point*. At a point it reads the losses of the steps since the previous point in one
transfer (`loop.losses`), starts an empty `loop.record`, and runs the hooks in order:

- `observe(loop)` runs at every point (host bookkeeping that must see every loss);
- `__call__(loop)` runs when `due(loop)`: every `every` steps, and at the last step when
  `at_end`; `every=None` means never due by itself;
- a hook ends training by `loop.stop(outcome, ...)`; the hooks after it are skipped, except
  those with `after_stop` (the record write).

Hooks with state that must survive a resume keep it in `loop.host` (`HostState`), which is
checkpointed as JSON with the train state.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from scalinglab.budget import Budget
from scalinglab.rundir import RunDir
from scalinglab.train import checkpoint as ckpt


class TrialInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and re-running resumes from it."""


@dataclass
class HostState:
    """Loop bookkeeping that lives on the host and is checkpointed as JSON (field names are
    the checkpoint format)."""

    losses_since_log: list[float] = field(default_factory=list)
    initial_loss: float | None = None
    best_eval: float | None = None
    last_eval: float | None = None
    last_eval_metrics: dict[str, float] = field(default_factory=dict)
    last_eval_batches: list[float] = field(default_factory=list)
    bad_evals: int = 0
    wall_s: float = 0.0
    data_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Loop:
    """What the hooks see and change: the step, the train state and the host bookkeeping."""

    total_steps: int
    budget: Budget
    state: Any = None
    step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # the last step's, on the device
    host: HostState = field(default_factory=HostState)
    losses: list[tuple[int, float]] = field(default_factory=list)  # read at this point
    record: dict[str, Any] = field(default_factory=dict)  # this point's metrics so far
    outcome: str | None = None  # set by `stop`: "diverged" or "stopped_early"
    reason: str | None = None
    stopped_at: int | None = None
    signum: int | None = None  # set by the Interrupt hook's signal handler
    wall0: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    def stop(self, outcome: str, reason: str | None = None, at: int | None = None) -> None:
        """End training after this point with `outcome` (a reason and step for divergence)."""
        self.outcome, self.reason, self.stopped_at = outcome, reason, at

    def wall(self) -> float:
        """Training wall time, across resumes."""
        return self.wall0 + time.perf_counter() - self.t0

    def full_record(self, step: int, **values: Any) -> dict[str, Any]:
        """A metrics record: step, tokens and FLOPs at `step`, then `values`."""
        return {
            "step": step,
            "tokens": self.budget.tokens_at(step),
            "flops": self.budget.flops_at(step),
            **values,
        }


class Hook:
    """Base hook: never due, does nothing (subclasses override what they need)."""

    every: int | None = None
    at_end: bool = False
    after_stop: bool = False

    def due(self, loop: Loop) -> bool:
        if self.every is None:
            return False
        return loop.step % self.every == 0 or (self.at_end and loop.step == loop.total_steps)

    def open(self, loop: Loop) -> None:
        """Training starts or resumes at `loop.step`."""

    def observe(self, loop: Loop) -> None:
        """At every point, before `__call__`."""

    def __call__(self, loop: Loop) -> None:
        """At the points where `due`."""

    def close(self) -> None:
        """Training ended, however it ended."""


class Divergence(Hook):
    """A non-finite train loss, or one above `factor` x the first step's, ends the trial."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def observe(self, loop: Loop) -> None:
        host = loop.host
        for s, loss in loop.losses:
            if not math.isfinite(loss):
                return loop.stop("diverged", f"non-finite train loss at step {s}", s)
            if host.initial_loss is None:
                host.initial_loss = loss
            elif loss > self.factor * host.initial_loss:
                return loop.stop(
                    "diverged",
                    f"train loss {loss:.4g} at step {s} exceeds {self.factor:g}x the initial "
                    f"{host.initial_loss:.4g}",
                    s,
                )
        return None


class Log(Hook):
    """Every `every` steps and at the end: mean train loss since the last log, the last step's
    gradient norm, its learning rate and the throughput since the last log."""

    at_end = True

    def __init__(self, every: int, schedule: Callable[[int], Any]) -> None:
        self.every, self.schedule = every, schedule
        self.t0, self.step0 = 0.0, 0

    def open(self, loop: Loop) -> None:
        self.t0, self.step0 = time.perf_counter(), loop.step

    def observe(self, loop: Loop) -> None:
        loop.host.losses_since_log.extend(loss for _, loss in loop.losses)

    def __call__(self, loop: Loop) -> None:
        now = time.perf_counter()
        rec = loop.record
        rec["train_loss"] = float(np.mean(loop.host.losses_since_log))
        rec["grad_norm"] = float(loop.metrics["grad_norm"])
        rec["lr"] = float(self.schedule(loop.step - 1))
        units = (loop.step - self.step0) * loop.budget.units_per_step
        rec["tokens_per_s"] = units / (now - self.t0)
        loop.host.losses_since_log = []
        self.t0, self.step0 = now, loop.step


class Evaluate(Hook):
    """Every `every` steps and at the end: the mean of each eval metric over the validation
    batches (over examples, with `eval_examples`, when the task reports each batch's count),
    and `eval_loss_se`, the standard error of that mean loss (sample standard deviation over
    the batches / sqrt(batches); null with one batch or a non-finite loss). The last
    evaluation's per-batch losses are kept for the summary (``eval_loss_batches``): runs
    scored on the same batches are compared through them (``sweep.store``). A non-finite
    eval loss ends the trial as diverged (after its record is written)."""

    at_end = True

    def __init__(self, every: int, eval_fn: Callable[..., Any], val: Any) -> None:
        self.every, self.eval_fn, self.val = every, eval_fn, val

    def __call__(self, loop: Loop) -> None:
        evals = jax.device_get(self.eval_fn(loop.state, self.val))  # {name: (n_batches,)}
        rec = loop.record
        # A task whose batches carry padding reports each batch's `examples`: its metrics are
        # then means over examples, and the record says how many were scored.
        weights = evals.pop("examples", None)
        if weights is not None:
            rec["eval_examples"] = int(round(float(np.sum(weights))))
        for name, per_batch in evals.items():
            values = np.asarray(per_batch, dtype=np.float64)
            rec[f"eval_{name}"] = float(np.average(values, weights=weights))
        batches = [float(x) for x in evals["loss"]]
        rec["eval_loss_se"] = standard_error(batches)
        ev = rec["eval_loss"]
        loop.host.last_eval_batches = batches
        loop.host.last_eval = ev
        loop.host.last_eval_metrics = {k: v for k, v in rec.items() if k.startswith("eval_")}
        if not math.isfinite(ev):
            loop.stop("diverged", f"non-finite eval loss at step {loop.step}", loop.step)


def standard_error(values: Sequence[float]) -> float | None:
    """Standard error of the mean of `values` (ddof 1); None for fewer than two or any
    non-finite value."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


class EarlyStopping(Hook):
    """At each evaluation: track the best eval loss (an improvement must beat it by
    `min_delta`); with a `patience`, stop after that many evaluations without one."""

    at_end = True

    def __init__(self, every: int, patience: int | None = None, min_delta: float = 0.0) -> None:
        self.every, self.patience, self.min_delta = every, patience, min_delta

    def __call__(self, loop: Loop) -> None:
        host, ev = loop.host, loop.host.last_eval
        if host.best_eval is None or ev < host.best_eval - self.min_delta:
            host.best_eval, host.bad_evals = ev, 0
        else:
            host.bad_evals += 1
        if self.patience is not None and host.bad_evals >= self.patience:
            loop.stop("stopped_early")


class Record(Hook):
    """Writes the point's record (with step, tokens, FLOPs and wall time) to every tracker;
    runs after a stop too, so the evaluation that diverged is recorded."""

    after_stop = True

    def __init__(self, trackers: Sequence[Any]) -> None:
        self.trackers = trackers

    def due(self, loop: Loop) -> bool:
        return bool(loop.record)

    def __call__(self, loop: Loop) -> None:
        rec = loop.full_record(loop.step, **loop.record, wall_s=loop.wall())
        for tracker in self.trackers:
            tracker.log(loop.step, rec)


class Checkpoint(Hook):
    """Every `every` steps, and when a signal arrived: save the train state and the host
    bookkeeping (orbax, synchronously)."""

    def __init__(self, every: int, manager: Any) -> None:
        self.every, self.manager = every, manager

    def due(self, loop: Loop) -> bool:
        return super().due(loop) or loop.signum is not None

    def __call__(self, loop: Loop) -> None:
        loop.host.wall_s = loop.wall()
        ckpt.save(self.manager, loop.state, loop.host.to_json())


class Interrupt(Hook):
    """SIGTERM/SIGINT (main thread only) set `loop.signum`; at the next point, after the
    checkpoint, the run directory is marked interrupted and TrialInterrupted is raised."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self._old: dict[int, Any] = {}

    def open(self, loop: Loop) -> None:
        if threading.current_thread() is threading.main_thread():

            def handle(signum: int, frame: Any) -> None:
                loop.signum = signum

            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, handle)

    def due(self, loop: Loop) -> bool:
        return loop.signum is not None

    def __call__(self, loop: Loop) -> None:
        self.run_dir.set_status(
            "interrupted",
            step=loop.step,
            total_steps=loop.total_steps,
            error=f"signal {loop.signum} at step {loop.step}; re-run to resume",
        )
        raise TrialInterrupted(f"interrupted at step {loop.step}; checkpoint saved")

    def close(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def run_point(hooks: Sequence[Hook], loop: Loop) -> None:
    """One point: every hook's `observe`, and `__call__` where due, in order; after a stop only
    the `after_stop` hooks still run."""
    for hook in hooks:
        if loop.outcome is not None and not hook.after_stop:
            continue
        hook.observe(loop)
        if (loop.outcome is None or hook.after_stop) and hook.due(loop):
            hook(loop)
