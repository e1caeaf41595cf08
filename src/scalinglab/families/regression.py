"""The regression objective: mean squared error of a one-output model on (x, y) examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.families.common import Metrics, apply_model, example_means, split_variables

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import TrialConfig


@dataclass(frozen=True)
class Regression:
    """Regression on a batch `{"x": float (B, d), "y": float (B,)}`: the model's single output
    is the prediction, the loss the mean squared error over the batch (units of y squared).

    Training (`key` given) draws dropout masks from the key and updates batch-norm running
    averages; evaluation (`key` None) uses neither. Metrics: `loss` and `mse` (the same number,
    under the name that says what it is), so records hold `eval_mse`; validation batches carry
    `weight` (0 for padding) and report their `examples`, as classification's do.
    """

    model: nn.Module
    n_inputs: int

    @classmethod
    def from_config(cls, cfg: TrialConfig, model: nn.Module) -> Regression:
        """The task of an MLP trial on a regression source (its `build_task`)."""
        n_inputs = cfg.model.n_inputs
        assert n_inputs is not None  # filled from the data by MLPConfig.resolve
        return cls(model, n_inputs)

    @property
    def units_per_example(self) -> int:
        return 1

    def example_batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A random batch of the training shape (for compile probes and benchmarks)."""
        return {
            "x": rng.uniform(-1.0, 1.0, (batch_size, self.n_inputs)).astype(np.float32),
            "y": rng.standard_normal(batch_size).astype(np.float32),
        }

    def init(self, key: jax.Array) -> tuple[Any, dict[str, Any]]:
        x = jnp.zeros((1, self.n_inputs), jnp.float32)
        return split_variables(self.model.init({"params": key}, x, train=False))

    def loss(
        self,
        params: Any,
        model_state: dict[str, Any],
        batch: dict[str, jax.Array],
        key: jax.Array | None,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[Metrics, dict[str, Any]]]:
        x_BxD, y_B = batch["x"], batch["y"]
        out_Bx1, model_state = apply_model(self.model, params, model_state, x_BxD, key)
        err_B = out_Bx1.astype(jnp.float32)[:, 0] - y_B.astype(jnp.float32)
        sq_B = err_B * err_B
        metrics = example_means({"loss": sq_B, "mse": sq_B}, batch)
        return metrics["loss"], (metrics, model_state)
