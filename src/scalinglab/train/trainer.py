"""The compiled pieces of a trial (objective, update rule, schedule, jitted train and eval
steps), memoised per process, and the restore of a run directory's latest train state."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from scalinglab import mup
from scalinglab import runfiles as rf
from scalinglab.budget import plan_steps
from scalinglab.config import TrialConfig
from scalinglab.models import build_model
from scalinglab.optim import build_update_rule, lr_at, schedule_params
from scalinglab.train import checkpoint as ckpt
from scalinglab.train import mesh as mesh_mod
from scalinglab.train.distill import teacher_config, wrap_task
from scalinglab.train.state import TrainState, abstract_state
from scalinglab.train.step import eval_steps, train_step
from scalinglab.train.tasks import build_task


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
    parts = [cfg.model.model_dump(mode="json"), cfg.data.model_dump(mode="json"), opt, name]
    if cfg.train.distill is not None:  # the teacher's shape and the objective's constants
        d = cfg.train.distill
        parts.append([teacher_config(cfg).model.model_dump(mode="json"), d.temperature, d.weight])
    key = json.dumps(parts, sort_keys=True)
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
    tx = build_update_rule(cfg.optimizer, mup.scales(cfg, task))
    task = wrap_task(cfg, task)  # distillation wraps the objective, not the parameters
    lr_fn = functools.partial(lr_at, name=cfg.optimizer.schedule.name)
    step = jax.jit(functools.partial(train_step, task=task, tx=tx, lr_fn=lr_fn), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_steps, task=task))
    return task, tx, step, eval_fn


def batch_placement(batch: Any, mesh: Any, *, stacked: bool = False) -> Any:
    """Split a batch (or, `stacked`, a stack of such batches along their second axis) over the
    data mesh when it divides evenly; otherwise replicate it."""
    n = len(jax.tree_util.tree_leaves(batch)[0])
    if n % mesh.size:
        return mesh_mod.replicated(mesh)
    return mesh_mod.stacked_batch_sharded(mesh) if stacked else mesh_mod.batch_sharded(mesh)


def load_state(cfg: TrialConfig, run_dir: str | Path) -> TrainState | None:
    """The latest complete checkpoint of a run directory on one device, read with exactly the
    shapes, dtypes and tree the trainer wrote; None when there is none."""
    trainer = build_trainer(cfg, plan_steps(cfg))
    sharding = mesh_mod.replicated(mesh_mod.data_mesh(1))
    target = mesh_mod.with_sharding(abstract_state(trainer.task, trainer.tx), sharding)
    manager = ckpt.open_manager(Path(run_dir) / rf.CHECKPOINTS, cfg.train.keep_checkpoints)
    try:
        restored = ckpt.restore_latest(manager, target)
    finally:
        manager.close()
    return None if restored is None else restored[0]
