"""Training objectives: how a model is initialised, what one batch is, and its loss and metrics.

A task pairs a model family with its objective, so the train step, the loop and the run
directory stay the same for every family. `build_task(cfg, model)` is the registry; a task is
a frozen dataclass (hashable, closed over by the jitted step) with:

- `init(key) -> (params, model_state)`: model_state holds non-trained collections (for
  example batch-norm statistics); `{}` when there are none.
- `loss(params, model_state, batch, key, step) -> (loss, (metrics, model_state))`: `key` is
  None in evaluation (dropout, augmentation and random masking off or fixed); `metrics`
  always has "loss" and may add "accuracy".
- `example_batch(batch_size, rng)`: a random batch of the training shape.
- `units_per_example`: what one example adds to D (tokens for sequence tasks, 1 for images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalinglab.config import TrialConfig

Metrics = dict[str, jax.Array]


def split_variables(variables: Any) -> tuple[Any, dict[str, Any]]:
    """Split flax variables into trained params and every other collection."""
    variables = dict(variables)
    return variables.pop("params"), variables


@dataclass(frozen=True)
class NextToken:
    """Causal language modelling: predict token t+1 from tokens <= t; batch is int (B, T+1)."""

    model: nn.Module
    seq_len: int

    @property
    def units_per_example(self) -> int:
        return self.seq_len

    def example_batch(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """A random batch of the training shape (for compile probes and benchmarks)."""
        vocab = min(self.model.cfg.vocab_size, 256)
        return rng.integers(0, vocab, (batch_size, self.seq_len + 1)).astype(np.int32)

    def init(self, key: jax.Array) -> tuple[Any, dict[str, Any]]:
        tokens = jnp.zeros((1, self.seq_len), jnp.int32)
        return split_variables(self.model.init({"params": key}, tokens, deterministic=True))

    def loss(
        self,
        params: Any,
        model_state: dict[str, Any],
        batch_BxT1: jax.Array,
        key: jax.Array | None,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[Metrics, dict[str, Any]]]:
        inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
        rngs = {"dropout": key} if key is not None else None
        logits_BxTxV = self.model.apply(
            {"params": params, **model_state}, inputs_BxT, deterministic=key is None, rngs=rngs
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits_BxTxV.astype(jnp.float32), targets_BxT
        )
        loss = losses.mean()
        return loss, ({"loss": loss}, model_state)


TaskBuilder = Callable[[TrialConfig, nn.Module], Any]
TASKS: dict[str, TaskBuilder] = {
    "gpt": lambda cfg, model: NextToken(model, cfg.data.seq_len),
}


def build_task(cfg: TrialConfig, model: nn.Module) -> Any:
    """The objective for `cfg.model.family`."""
    builder = TASKS.get(cfg.model.family)
    if builder is None:
        raise ValueError(
            f"model.family: no objective for {cfg.model.family!r}; allowed: {', '.join(TASKS)}"
        )
    return builder(cfg, model)
