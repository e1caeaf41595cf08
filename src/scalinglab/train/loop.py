"""`run_trial(cfg, run_dir)`: train one config to its budget, writing the run directory.

The step loop only dispatches steps; everything around them is a hook
(`scalinglab.train.hooks`) and metrics go to trackers (`scalinglab.train.trackers`).

Resuming is exact: batches are a pure function of (seed, step), the dropout key is folded
with the step, and the host-side bookkeeping (losses since the last log point, early-stopping
counters, divergence reference, wall time) is checkpointed with the state. On resume,
metrics.jsonl is cut back to the restored step, so the file ends up identical (but for
wall-clock fields) to that of an uninterrupted run.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scalinglab import runfiles as rf
from scalinglab.budget import Budget, plan_steps  # noqa: F401  (old location, re-exported)
from scalinglab.config import TrialConfig
from scalinglab.data import build_dataset
from scalinglab.errors import TrialError
from scalinglab.hostmem import configure_host_memory, trial_temp_bytes
from scalinglab.models import count_params
from scalinglab.rundir import RunDir
from scalinglab.train import checkpoint as ckpt
from scalinglab.train import hooks as hk
from scalinglab.train import mesh as mesh_mod
from scalinglab.train.distill import load_teacher
from scalinglab.train.hooks import TrialInterrupted
from scalinglab.train.state import abstract_state, init_state
from scalinglab.train.trackers import ProgressFn, Tracker, build_trackers
from scalinglab.train.trainer import Trainer, batch_placement, build_trainer  # noqa: F401

# Fields of a metrics record that depend on the wall clock, not on the computation.
WALL_CLOCK_FIELDS = ("wall_s", "tokens_per_s")


def run_trial(
    cfg: TrialConfig,
    run_dir: str | Path,
    *,
    progress: ProgressFn | Tracker | None = None,
) -> dict[str, Any]:
    """Train `cfg` in `run_dir` (resuming if it holds a checkpoint) and return the summary.

    A finished trial (summary.json present) is not trained again. Bad input raises
    TrialError/DataError before any compile; any failure is recorded in status.json.
    `progress` is one more tracker: a `Tracker`, or a callback `progress(event)` that receives
    `{"event": "start", ...}` and then `{"event": "log", **record}` per metrics record.
    """
    rd = RunDir(run_dir)
    # Before anything starts JAX in this process (scalinglab.hostmem explains why).
    configure_host_memory(trial_temp_bytes(cfg))
    rd.prepare(cfg)
    done = rd.summary()
    if done is not None:
        return done
    rd.start()
    try:
        return _train(cfg, rd, progress)
    except TrialInterrupted:
        raise
    except BaseException as e:
        rd.fail(e)
        raise


def _train(cfg: TrialConfig, rd: RunDir, progress: ProgressFn | Tracker | None) -> dict[str, Any]:
    budget = Budget.of(cfg)
    trackers = build_trackers(cfg.train.trackers, rd.path, progress)
    try:
        return _run(cfg, rd, budget, trackers)
    finally:
        for tracker in trackers:
            tracker.finish()


def _run(cfg: TrialConfig, rd: RunDir, budget: Budget, trackers: list[Tracker]) -> dict[str, Any]:
    dataset = build_dataset(cfg.data)
    vocab = getattr(cfg.model, "vocab_size", None)
    if vocab is not None and dataset.vocab_size > vocab:
        raise TrialError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the data's vocabulary "
            f"({dataset.vocab_size})"
        )
    B = cfg.train.batch_size
    val_host = dataset.val_batches(B, cfg.train.eval_tokens)
    trainer = build_trainer(cfg, budget.steps)
    if cfg.train.distill is not None:  # restored once, passed to every step as an argument
        teacher = jax.device_put(
            load_teacher(cfg, rd.path), mesh_mod.replicated(mesh_mod.data_mesh(B))
        )
        trainer = trainer._replace(step_fn=functools.partial(trainer.step_fn, teacher=teacher))
    init_key, step_key = jax.random.split(jax.random.PRNGKey(cfg.seed))

    manager = ckpt.open_manager(rd.checkpoints, cfg.train.keep_checkpoints)
    mesh = mesh_mod.data_mesh(B)
    state_sharding, batch_sharding = mesh_mod.replicated(mesh), mesh_mod.batch_sharded(mesh)
    target = mesh_mod.with_sharding(abstract_state(trainer.task, trainer.tx), state_sharding)
    val_stack = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *val_host)
    val = jax.device_put(val_stack, batch_placement(val_host[0], mesh, stacked=True))
    loop = hk.Loop(total_steps=budget.steps, budget=budget)
    restored = ckpt.restore_latest(manager, target)
    if restored is None:
        loop.state = init_state(trainer.task, trainer.tx, init_key, state_sharding)
    else:
        loop.state, host_json = restored
        loop.host = hk.HostState(**host_json)
    loop.step = int(loop.state.step)
    sha = dataset.info.get("sha256")
    if loop.host.data_sha256 not in (None, sha):
        raise TrialError(
            f"{rd.path}: checkpoint was trained on different data (sha256 "
            f"{loop.host.data_sha256[:12]}, now {str(sha)[:12]})"
        )
    loop.host.data_sha256 = sha
    counts = count_params(loop.state.params)
    info = {"total_steps": budget.steps, **counts, "config": cfg.model_dump(mode="json")}
    es = cfg.train.early_stopping
    hooks: list[hk.Hook] = [
        hk.Divergence(cfg.train.divergence_factor),
        hk.Log(cfg.train.log_every, trainer.schedule),
        hk.Evaluate(cfg.train.eval_every, trainer.eval_fn, val),
        hk.EarlyStopping(
            cfg.train.eval_every, es.patience if es else None, es.min_delta if es else 0.0
        ),
        hk.Record(trackers),
        hk.Checkpoint(cfg.train.checkpoint_every, manager),
        hk.Interrupt(rd),
    ]
    try:
        for tracker in trackers:
            tracker.start(loop.step, info)
        _steps(loop, hooks, trainer.step_fn, step_key, dataset, batch_sharding, cfg)
        if loop.outcome == "diverged":
            marker = loop.full_record(loop.stopped_at, diverged=loop.reason)
            for tracker in trackers:
                tracker.log(loop.stopped_at, marker)
        loop.host.wall_s = loop.wall()
        if loop.outcome != "diverged":
            ckpt.save(manager, loop.state, loop.host.to_json())
    finally:
        manager.close()
    summary = _summary(cfg, loop, counts, mesh.size, dataset.info, rd)
    rd.finish(summary, budget.steps)
    return summary


def _steps(
    loop: hk.Loop,
    hooks: list[hk.Hook],
    step_fn: Any,
    step_key: jax.Array,
    dataset: Any,
    batch_sharding: Any,
    cfg: TrialConfig,
) -> None:
    """The step loop. Losses stay on the device until a hook is due and are then read in one
    transfer: no per-step host sync, so the host prepares batch t+1 while step t runs."""
    B, seed = cfg.train.batch_size, cfg.seed
    loop.wall0, loop.t0 = loop.host.wall_s, time.perf_counter()
    pending: list[tuple[int, jax.Array]] = []
    for hook in hooks:
        hook.open(loop)
    try:
        while loop.step < loop.total_steps and loop.outcome is None:
            batch = jax.device_put(dataset.train_batch(loop.step, B, seed), batch_sharding)
            loop.state, loop.metrics = step_fn(loop.state, batch, step_key)
            loop.step += 1
            pending.append((loop.step, loop.metrics["loss"]))
            if not any(hook.due(loop) for hook in hooks):
                continue
            losses = jax.device_get([loss for _, loss in pending])
            loop.losses = [(s, float(x)) for (s, _), x in zip(pending, losses, strict=True)]
            pending, loop.record = [], {}
            hk.run_point(hooks, loop)
    finally:
        for hook in hooks:
            hook.close()


def _summary(
    cfg: TrialConfig,
    loop: hk.Loop,
    counts: dict[str, int],
    devices: int,
    data_info: dict[str, Any],
    rd: RunDir,
) -> dict[str, Any]:
    host, step = loop.host, loop.step
    diverged = loop.reason if loop.outcome == "diverged" else None
    summary = {
        "status": loop.outcome or "done",
        "N": counts["total"],
        "N_nonembed": counts["non_embedding"],
        "N_embed": counts["embedding"],
        "D": loop.budget.tokens_at(step),
        "C": loop.budget.flops_at(step),
        "flop_counting": cfg.train.flop_counting,
        "flops_per_token": loop.budget.flops_per_token,
        "steps": step,
        "planned_steps": loop.total_steps,
        "final_eval_loss": host.last_eval,
        **{f"final_{k}": v for k, v in host.last_eval_metrics.items() if k != "eval_loss"},
        "best_eval_loss": host.best_eval,
        "eval_loss_batches": host.last_eval_batches,
        "diverged": diverged,
        "diverged_step": loop.stopped_at if diverged else None,
        "wall_s": host.wall_s,
        "seed": cfg.seed,
        "devices": devices,
        "data": data_info,
    }
    train_losses = [r["train_loss"] for r in rf.read_jsonl(rd.metrics) if "train_loss" in r]
    summary["final_train_loss"] = train_losses[-1] if train_losses else None
    return summary
