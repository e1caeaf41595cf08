"""The train state: a pytree of arrays only (step, params, optimiser state), so orbax saves it
as is and jit can donate it. The model and optimiser are passed to the step as static code."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    """Everything that changes during training and must be checkpointed."""

    step: jax.Array
    params: Any
    opt_state: Any


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    seq_len: int,
    sharding: jax.sharding.Sharding | None = None,
) -> TrainState:
    """Initialise parameters and optimiser state in one jitted call, placed by `sharding`
    directly (never built on one device and moved)."""

    def _init(key: jax.Array) -> TrainState:
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        params = model.init({"params": key}, tokens, deterministic=True)["params"]
        return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(_init, out_shardings=sharding)(key)


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, seq_len: int) -> TrainState:
    """Shapes and dtypes of the state without allocating it (the restore target)."""
    return jax.eval_shape(lambda k: init_state(model, tx, k, seq_len), jax.random.PRNGKey(0))
