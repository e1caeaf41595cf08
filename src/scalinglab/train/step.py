"""Pure train and eval steps: `(state, batch) -> (state, metrics)`; jit is applied by the caller.

The objective comes from a task (`scalinglab.train.tasks`), so the same step trains every
model family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from scalinglab.train.state import TrainState


def train_step(
    state: TrainState,
    batch: Any,
    base_key: jax.Array,
    lr_params: Any = None,
    teacher: Any = None,
    *,
    task: Any,
    tx: optax.GradientTransformation,
    lr_fn: Callable[[jax.Array, Any], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step. The random key is folded with the step, so a resumed run draws the
    same dropout masks and augmentations as an uninterrupted one.

    With `lr_fn`, `tx` is an update rule without learning rate and the update is scaled by
    `-lr_fn(step, lr_params)`: the schedule's numbers are arguments, not compiled constants,
    so runs that differ only in budget or learning rate share one compiled step. Without it,
    `tx` is a complete optax chain. `teacher` is a distillation teacher's (params,
    model_state) for the task's objective (`scalinglab.train.distill`), an argument, not trained.
    """
    key = jax.random.fold_in(base_key, state.step)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
        if teacher is not None:
            return task.loss(params, state.model_state, batch, key, state.step, teacher=teacher)
        return task.loss(params, state.model_state, batch, key, state.step)

    (_, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if lr_fn is not None:
        step_size = -lr_fn(state.step, lr_params)
        updates = jax.tree_util.tree_map(lambda u: step_size.astype(u.dtype) * u, updates)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
    )
    return new_state, metrics


def eval_step(state: TrainState, batch: Any, *, task: Any) -> dict[str, jax.Array]:
    """Metrics of one validation batch: no dropout, no augmentation, running statistics."""
    _, (metrics, _) = task.loss(state.params, state.model_state, batch, None, state.step)
    return metrics


def eval_steps(state: TrainState, batches: Any, *, task: Any) -> dict[str, jax.Array]:
    """`eval_step` over a stack of batches (leading axis) in one call: metrics per batch.

    One dispatch and one transfer per evaluation instead of one per batch, with the memory of
    a single batch (a `lax.map`, not one large batch).
    """
    return jax.lax.map(lambda batch: eval_step(state, batch, task=task), batches)
