"""Pure train and eval steps: `(state, batch) -> (state, metrics)`; jit is applied by the caller."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scalinglab.train.state import TrainState


def cross_entropy(
    params: Any, model: nn.Module, batch_BxT1: jax.Array, key: jax.Array | None
) -> jax.Array:
    """Mean next-token cross-entropy in nats; dropout is on when a key is given."""
    inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
    rngs = {"dropout": key} if key is not None else None
    logits_BxTxV = model.apply({"params": params}, inputs_BxT, deterministic=key is None, rngs=rngs)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.astype(jnp.float32), targets_BxT
    )
    return losses.mean()


def train_step(
    state: TrainState,
    batch_BxT1: jax.Array,
    dropout_key: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    use_dropout: bool,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step; the dropout key is folded with the step so resumes replay exactly."""
    key = jax.random.fold_in(dropout_key, state.step) if use_dropout else None
    loss, grads = jax.value_and_grad(cross_entropy)(state.params, model, batch_BxT1, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch_BxT1: jax.Array, *, model: nn.Module) -> jax.Array:
    """Mean cross-entropy of one validation batch, dropout off."""
    return cross_entropy(params, model, batch_BxT1, None)
