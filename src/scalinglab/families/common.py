"""Pieces of objectives that several families share.

A task (what a family's `build_task` returns) is a frozen dataclass (hashable, closed over by
the jitted step) with:

- `init(key) -> (params, model_state)`: model_state holds non-trained collections (for
  example batch-norm statistics); `{}` when there are none.
- `loss(params, model_state, batch, key, step) -> (loss, (metrics, model_state))`: `key` is
  None in evaluation (dropout, augmentation and random masking off or fixed); `metrics`
  always has "loss" and may add "accuracy" (classifiers) or "mse" (regression).
- `example_batch(batch_size, rng)`: a random batch of the training shape.
- `units_per_example`: what one example adds to D (tokens for sequence tasks, 1 for images
  and regression examples).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import TrialConfig

Metrics = dict[str, jax.Array]

# Evaluation draws its masks and spans from this key (folded with the batch), so eval metrics
# are deterministic and comparable across steps.
EVAL_MASK_KEY = 1234


def example_means(per_example: dict[str, jax.Array], batch: dict[str, jax.Array]) -> Metrics:
    """Each per-example value's mean over the batch. A training batch holds only real
    examples; a validation batch carries `weight` (0 for padding), so its means are weighted
    and `examples` (the real count) lets the evaluation weight each batch."""
    if "weight" not in batch:
        return {name: v.mean() for name, v in per_example.items()}
    w_B = batch["weight"]
    n = jnp.maximum(w_B.sum(), 1.0)
    return {**{name: (w_B * v).sum() / n for name, v in per_example.items()}, "examples": w_B.sum()}


def apply_model(
    model: Any, params: Any, model_state: dict[str, Any], inputs: jax.Array, key: jax.Array | None
) -> tuple[jax.Array, dict[str, Any]]:
    """The model on one batch and its model state after it: in evaluation mode when `key` is
    None, else in training mode with dropout drawn from `key` and the mutable collections
    (batch-norm statistics) updated."""
    variables = {"params": params, **model_state}
    if key is None:
        return model.apply(variables, inputs, train=False), model_state
    out, updates = model.apply(
        variables, inputs, train=True, rngs={"dropout": key}, mutable=list(model_state)
    )
    return out, {**model_state, **updates}


def split_variables(variables: Any) -> tuple[Any, dict[str, Any]]:
    """Split flax variables into trained params and every other collection."""
    variables = dict(variables)
    return variables.pop("params"), variables


def data_vocab(cfg: TrialConfig) -> int:
    """Tokens the data can hold: the synthetic language's alphabet, else the model vocabulary."""
    if cfg.data.source == "synthetic":
        return min(cfg.data.synthetic.vocab_size, cfg.model.vocab_size)
    return cfg.model.vocab_size


def mask_key(key: jax.Array | None, batch: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """(masking key, dropout key or None). In evaluation (key None) the masking key is fixed,
    folded with the batch's token sum so different eval batches get different masks."""
    if key is None:
        total = jnp.sum(batch, dtype=jnp.uint32)
        return jax.random.fold_in(jax.random.PRNGKey(EVAL_MASK_KEY), total), None
    masking_key, dropout_key = jax.random.split(key)
    return masking_key, dropout_key


def masked_metrics(logits_BxKxV: jax.Array, targets_BxK: jax.Array) -> Metrics:
    """Mean cross-entropy and accuracy over the predicted positions."""
    logits_BxKxV = logits_BxKxV.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxKxV, targets_BxK).mean()
    accuracy = jnp.mean(jnp.argmax(logits_BxKxV, axis=-1) == targets_BxK)
    return {"loss": loss, "accuracy": accuracy}


def classification_task(cfg: TrialConfig, model: nn.Module) -> Any:
    """`build_task` of the image families: `Classification` with the trial's augmentation."""
    # Imported here: scalinglab.data imports the config schema, which imports this package.
    from scalinglab.families.classification import Classification

    return Classification.from_config(cfg, model)


def regression_task(cfg: TrialConfig, model: nn.Module) -> Any:
    """`build_task` of an MLP on a regression source: `Regression` (mean squared error)."""
    from scalinglab.families.regression import Regression

    return Regression.from_config(cfg, model)
