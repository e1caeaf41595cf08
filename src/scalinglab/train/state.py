"""The train state: a pytree of arrays only (step, params, optimiser state, model state), so
orbax saves it as is and jit can donate it. The task and optimiser are passed to the step as
static code."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything that changes during training and must be checkpointed.

    `model_state` holds non-trained variables such as batch-norm running statistics (empty for
    models without any).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any = struct.field(default_factory=dict)


def init_state(
    task: Any,
    tx: optax.GradientTransformation,
    key: jax.Array,
    sharding: jax.sharding.Sharding | None = None,
) -> TrainState:
    """Initialise parameters and optimiser state in one jitted call, placed by `sharding`
    directly (never built on one device and moved)."""

    def _init(key: jax.Array) -> TrainState:
        params, model_state = task.init(key)
        return TrainState(
            step=jnp.zeros([], jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=model_state,
        )

    return jax.jit(_init, out_shardings=sharding)(key)


def abstract_state(task: Any, tx: optax.GradientTransformation) -> TrainState:
    """Shapes and dtypes of the state without allocating it (the restore target)."""
    return jax.eval_shape(lambda k: init_state(task, tx, k), jax.random.PRNGKey(0))
