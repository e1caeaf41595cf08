"""`run_trial(cfg, run_dir)`: train one config to its budget, writing the run directory.

Resuming is exact: batches are a pure function of (seed, step), the dropout key is folded
with the step, and the host-side bookkeeping (losses since the last log point, early-stopping
counters, divergence reference, wall time) is checkpointed with the state. On resume,
metrics.jsonl is cut back to the restored step, so the file ends up identical (but for
wall-clock fields) to that of an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from scalinglab import flops as flops_mod
from scalinglab import runfiles as rf
from scalinglab.config import TrialConfig, dump_trial
from scalinglab.data import build_dataset
from scalinglab.errors import TrialError  # noqa: F401  (re-exported)
from scalinglab.hostmem import configure_host_memory, trial_temp_bytes
from scalinglab.models import build_model, count_params
from scalinglab.optim import build_update_rule, lr_at, schedule_params
from scalinglab.train import checkpoint as ckpt
from scalinglab.train import mesh as mesh_mod
from scalinglab.train.state import abstract_state, init_state
from scalinglab.train.step import eval_steps, train_step
from scalinglab.train.tasks import build_task

# Fields of a metrics record that depend on the wall clock, not on the computation.
WALL_CLOCK_FIELDS = ("wall_s", "tokens_per_s")

ProgressFn = Callable[[dict[str, Any]], None]


class TrialInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and re-running resumes from it."""


def plan_steps(cfg: TrialConfig) -> int:
    """Number of optimiser steps the budget buys (whole steps, never more than the budget)."""
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    budget = cfg.train.budget
    if budget.steps is not None:
        return budget.steps
    if budget.tokens is not None:
        tokens, what = budget.tokens, f"train.budget.tokens ({budget.tokens:g})"
    else:
        fpt = flops_mod.flops_per_token(cfg.model, cfg.data.seq_len, cfg.train.flop_counting)
        tokens, what = budget.flops / fpt, f"train.budget.flops ({budget.flops:g})"
    steps = int(tokens // tokens_per_step)
    if steps < 1:
        raise TrialError(
            f"{what} is smaller than one step: one step of train.batch_size "
            f"{cfg.train.batch_size} x data.seq_len {cfg.data.seq_len} is "
            f"{tokens_per_step} tokens"
            + (f" ({tokens_per_step * fpt:.3g} FLOPs)" if budget.flops is not None else "")
        )
    return steps


@dataclass
class _Host:
    """Loop bookkeeping that lives on the host and is checkpointed as JSON."""

    losses_since_log: list[float] = field(default_factory=list)
    initial_loss: float | None = None
    best_eval: float | None = None
    last_eval: float | None = None
    last_eval_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    wall_s: float = 0.0
    data_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class Trainer(NamedTuple):
    """The compiled pieces of one trial: objective, optimiser, schedule and jitted steps."""

    task: Any
    tx: optax.GradientTransformation  # the update rule; the step scales it by -schedule(step)
    schedule: Callable[[int], Any]  # host-side (numpy) learning rate at a step, for the logs
    step_fn: Callable[..., Any]  # (state, batch, key) -> (state, metrics); donates state
    eval_fn: Callable[..., Any]  # (state, stacked batches) -> metrics per batch


def build_trainer(cfg: TrialConfig, total_steps: int) -> Trainer:
    """Model, objective, optimiser and jitted train/eval steps for `cfg` (no state yet).

    The jitted steps are shared by every trial of this process whose model, data and update
    rule match (`_jitted_steps`); the trial's own learning rate and schedule are bound here.
    """
    name = cfg.optimizer.schedule.name
    hp = schedule_params(cfg.optimizer.schedule, cfg.optimizer.lr, total_steps)
    opt = cfg.optimizer.model_dump(mode="json", exclude={"lr", "schedule"})
    key = json.dumps(
        [cfg.model.model_dump(mode="json"), cfg.data.model_dump(mode="json"), opt, name],
        sort_keys=True,
    )
    task, tx, step, eval_fn = _jitted_steps(_Keyed(key, cfg))
    step_fn = functools.partial(step, lr_params=hp)
    return Trainer(task, tx, functools.partial(lr_at, hp=hp, name=name, xp=np), step_fn, eval_fn)


class _Keyed(NamedTuple):
    """A config hashed and compared by `key` alone (the parts the jitted steps depend on)."""

    key: str
    cfg: TrialConfig

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Keyed) and other.key == self.key


@functools.lru_cache(maxsize=8)
def _jitted_steps(keyed: _Keyed) -> tuple[Any, Any, Any, Any]:
    """Task, update rule and jitted train/eval steps for the parts of the config that the key
    names (model, data, optimiser without its lr and schedule numbers).

    Memoised on `key` so that a sweep worker's next trial of the same model (another budget,
    learning rate or seed) reuses the traced and compiled steps instead of tracing, lowering
    and loading them from the persistent cache again (about 0.5 s a trial for small models).
    """
    cfg = keyed.cfg
    task = build_task(cfg, build_model(cfg.model))
    tx = build_update_rule(cfg.optimizer)
    lr_fn = functools.partial(lr_at, name=cfg.optimizer.schedule.name)
    step = jax.jit(functools.partial(train_step, task=task, tx=tx, lr_fn=lr_fn), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_steps, task=task))
    return task, tx, step, eval_fn


def _batch_placement(batch: Any, mesh: Any, *, stacked: bool = False) -> Any:
    """Split a batch (or, `stacked`, a stack of such batches along their second axis) over the
    data mesh when it divides evenly; otherwise replicate it."""
    n = len(jax.tree_util.tree_leaves(batch)[0])
    if n % mesh.size:
        return mesh_mod.replicated(mesh)
    return mesh_mod.stacked_batch_sharded(mesh) if stacked else mesh_mod.batch_sharded(mesh)


def _status(run_dir: Path, status: str, **extra: Any) -> None:
    old = rf.read_json(run_dir / rf.STATUS) or {}
    rec = {"status": status, "attempts": old.get("attempts", 0), "error": None, **extra}
    rec["updated"] = time.time()
    rf.write_json(run_dir / rf.STATUS, rec)


def _prepare_dir(cfg: TrialConfig, run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise rf.RunDirError(f"{run_dir}: cannot create run directory ({e.strerror})") from None
    text = dump_trial(cfg)
    existing = run_dir / rf.CONFIG
    if existing.exists() and existing.read_text() != text:
        raise TrialError(
            f"{run_dir}: holds a different trial's config.yaml; choose another --out directory"
        )
    rf.atomic_write_text(existing, text)


def run_trial(
    cfg: TrialConfig,
    run_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train `cfg` in `run_dir` (resuming if it holds a checkpoint) and return the summary.

    A finished trial (summary.json present) is not trained again. Bad input raises
    TrialError/DataError before any compile; any failure is recorded in status.json.
    """
    run_dir = Path(run_dir)
    # Before anything starts JAX in this process (scalinglab.hostmem explains why).
    configure_host_memory(trial_temp_bytes(cfg))
    _prepare_dir(cfg, run_dir)
    done = rf.read_json(run_dir / rf.SUMMARY)
    if done is not None:
        return done
    old = rf.read_json(run_dir / rf.STATUS) or {}
    rf.write_json(
        run_dir / rf.STATUS,
        {
            "status": "running",
            "attempts": old.get("attempts", 0) + 1,
            "error": None,
            "updated": time.time(),
        },
    )
    try:
        return _train(cfg, run_dir, progress)
    except TrialInterrupted:
        raise
    except BaseException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        _status(run_dir, "failed", error=f"{type(e).__name__}: {msg}")
        raise


def _train(cfg: TrialConfig, run_dir: Path, progress: ProgressFn | None) -> dict[str, Any]:
    total_steps = plan_steps(cfg)
    dataset = build_dataset(cfg.data)
    vocab = getattr(cfg.model, "vocab_size", None)
    if vocab is not None and dataset.vocab_size > vocab:
        raise TrialError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the data's vocabulary "
            f"({dataset.vocab_size})"
        )
    B, T = cfg.train.batch_size, cfg.data.seq_len
    val_host = dataset.val_batches(B, cfg.train.eval_tokens)

    task, tx, schedule, step_fn, eval_fn = build_trainer(cfg, total_steps)
    init_key, step_key = jax.random.split(jax.random.PRNGKey(cfg.seed))

    manager = ckpt.open_manager(run_dir / rf.CHECKPOINTS, cfg.train.keep_checkpoints)
    mesh = mesh_mod.data_mesh(B)
    state_sharding, batch_sharding = mesh_mod.replicated(mesh), mesh_mod.batch_sharded(mesh)
    target = mesh_mod.with_sharding(abstract_state(task, tx), state_sharding)
    val_stack = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *val_host)
    val = jax.device_put(val_stack, _batch_placement(val_host[0], mesh, stacked=True))
    restored = ckpt.restore_latest(manager, target)
    if restored is None:
        state, host = init_state(task, tx, init_key, state_sharding), _Host()
        records: list[dict[str, Any]] = []
    else:
        state, host_json = restored
        host = _Host(**host_json)
        records = [r for r in rf.read_jsonl(run_dir / rf.METRICS) if r["step"] <= int(state.step)]
    rf.rewrite_jsonl(run_dir / rf.METRICS, records)
    if host.data_sha256 not in (None, dataset.info.get("sha256")):
        raise TrialError(
            f"{run_dir}: checkpoint was trained on different data (sha256 "
            f"{host.data_sha256[:12]}, now {str(dataset.info.get('sha256'))[:12]})"
        )
    host.data_sha256 = dataset.info.get("sha256")

    counts = count_params(state.params)
    fpt = flops_mod.flops_per_token(cfg.model, T, cfg.train.flop_counting)
    tokens_per_step = B * task.units_per_example
    step = int(state.step)
    if progress:
        progress({"event": "start", "step": step, "total_steps": total_steps, **counts})

    outcome, diverged_at = "done", None
    log_t0, log_step0, t_resume, wall0 = time.perf_counter(), step, time.perf_counter(), host.wall_s

    def wall() -> float:
        return wall0 + time.perf_counter() - t_resume

    def record(s: int, **values: Any) -> dict[str, Any]:
        tokens = s * tokens_per_step
        return {"step": s, "tokens": tokens, "flops": fpt * tokens, **values}

    def check(s: int, loss: float) -> str | None:
        """Divergence: a non-finite loss, or one far above the first step's."""
        if not math.isfinite(loss):
            return f"non-finite train loss at step {s}"
        if host.initial_loss is None:
            host.initial_loss = loss
        elif loss > cfg.train.divergence_factor * host.initial_loss:
            return (
                f"train loss {loss:.4g} at step {s} exceeds {cfg.train.divergence_factor:g}x "
                f"the initial {host.initial_loss:.4g}"
            )
        return None

    # Losses stay on the device until the next log/eval/checkpoint point and are then read in
    # one transfer: no per-step host sync, so the host prepares batch t+1 while step t runs.
    pending: list[tuple[int, jax.Array]] = []
    reason = None
    with _StopFlag() as stop:
        while step < total_steps:
            batch = jax.device_put(dataset.train_batch(step, B, cfg.seed), batch_sharding)
            state, metrics = step_fn(state, batch, step_key)
            step += 1
            pending.append((step, metrics["loss"]))
            is_log = step % cfg.train.log_every == 0 or step == total_steps
            is_eval = step % cfg.train.eval_every == 0 or step == total_steps
            is_ckpt = step % cfg.train.checkpoint_every == 0
            if not (is_log or is_eval or is_ckpt or stop.signum):
                continue
            losses = jax.device_get([loss for _, loss in pending])
            for (s, _), loss in zip(pending, losses, strict=True):
                reason = check(s, float(loss))
                host.losses_since_log.append(float(loss))
                if reason:
                    diverged_at = s
                    break
            pending = []
            if reason:
                break
            rec: dict[str, Any] = {}
            if is_log:
                now = time.perf_counter()
                rec["train_loss"] = float(np.mean(host.losses_since_log))
                rec["grad_norm"] = float(metrics["grad_norm"])
                rec["lr"] = float(schedule(step - 1))
                rec["tokens_per_s"] = (step - log_step0) * tokens_per_step / (now - log_t0)
                host.losses_since_log = []
                log_t0, log_step0 = now, step
            if is_eval:
                evals = jax.device_get(eval_fn(state, val))  # {name: (n_batches,)}
                for name, per_batch in evals.items():
                    rec[f"eval_{name}"] = float(np.mean([float(x) for x in per_batch]))
                ev = rec["eval_loss"]
                host.last_eval = ev
                host.last_eval_metrics = {k: v for k, v in rec.items() if k.startswith("eval_")}
                if not math.isfinite(ev):
                    reason, diverged_at = f"non-finite eval loss at step {step}", step
                improved = host.best_eval is None or ev < host.best_eval - (
                    cfg.train.early_stopping.min_delta if cfg.train.early_stopping else 0.0
                )
                if improved:
                    host.best_eval, host.bad_evals = ev, 0
                else:
                    host.bad_evals += 1
            if rec:
                rec = record(step, **rec, wall_s=wall())
                rf.append_jsonl(run_dir / rf.METRICS, [rec])
                if progress:
                    progress({"event": "log", "total_steps": total_steps, **rec})
            if reason:
                break
            es = cfg.train.early_stopping
            if is_eval and es is not None and host.bad_evals >= es.patience:
                outcome = "stopped_early"
                break
            if is_ckpt or stop.signum:
                host.wall_s = wall()
                ckpt.save(manager, state, host.to_json())
            if stop.signum:
                _status(
                    run_dir,
                    "interrupted",
                    step=step,
                    total_steps=total_steps,
                    error=f"signal {stop.signum} at step {step}; re-run to resume",
                )
                manager.close()
                raise TrialInterrupted(f"interrupted at step {step}; checkpoint saved")

    if reason:
        outcome = "diverged"
        rf.append_jsonl(run_dir / rf.METRICS, [record(diverged_at, diverged=reason)])
    host.wall_s = wall()
    if outcome != "diverged":
        ckpt.save(manager, state, host.to_json())
    manager.close()

    tokens = step * tokens_per_step
    summary = {
        "status": outcome,
        "N": counts["total"],
        "N_nonembed": counts["non_embedding"],
        "N_embed": counts["embedding"],
        "D": tokens,
        "C": fpt * tokens,
        "flop_counting": cfg.train.flop_counting,
        "flops_per_token": fpt,
        "steps": step,
        "planned_steps": total_steps,
        "final_eval_loss": host.last_eval,
        **{f"final_{k}": v for k, v in host.last_eval_metrics.items() if k != "eval_loss"},
        "best_eval_loss": host.best_eval,
        "diverged": reason,
        "diverged_step": diverged_at,
        "wall_s": host.wall_s,
        "seed": cfg.seed,
        "devices": mesh.size,
        "data": dataset.info,
    }
    metrics = rf.read_jsonl(run_dir / rf.METRICS)
    train_losses = [r["train_loss"] for r in metrics if "train_loss" in r]
    summary["final_train_loss"] = train_losses[-1] if train_losses else None
    _status(run_dir, outcome, step=step, total_steps=total_steps, error=reason)
    rf.write_json(run_dir / rf.SUMMARY, summary)
    return summary
