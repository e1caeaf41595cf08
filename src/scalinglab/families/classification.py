"""The image families' objective: classification with on-the-fly augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalinglab.data.augment import Augment
from scalinglab.families.common import Metrics, apply_model, example_means, split_variables

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import TrialConfig


@dataclass(frozen=True)
class Classification:
    """Image classification; a batch is `{"image": float (B, H, W, C), "label": int (B,)}`.

    Training (`key` given) augments the images with one half of the key and draws dropout
    masks from the other; batch norm normalises by batch statistics and returns updated running
    averages as the new model_state. Evaluation (`key` None) uses neither augmentation nor
    dropout, and the running averages. A model with one output logit is a binary classifier
    (sigmoid cross-entropy); otherwise softmax cross-entropy. Metrics: loss (nats per example)
    and accuracy.
    """

    model: nn.Module
    image_shape: tuple[int, int, int]  # (H, W, C)
    n_classes: int
    augment: Augment = Augment()

    @classmethod
    def from_config(cls, cfg: TrialConfig, model: nn.Module) -> Classification:
        """The task of an image family's trial (its `build_task`)."""
        m = cfg.model
        shape = (m.image_size, m.image_size, m.in_channels)
        return cls(model, shape, m.n_classes, Augment.from_config(cfg.data.augment))

    @property
    def units_per_example(self) -> int:
        return 1

    def example_batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A random batch of the training shape (for compile probes and benchmarks)."""
        return {
            "image": rng.random((batch_size, *self.image_shape), dtype=np.float32),
            "label": rng.integers(0, self.n_classes, batch_size).astype(np.int32),
        }

    def init(self, key: jax.Array) -> tuple[Any, dict[str, Any]]:
        images = jnp.zeros((1, *self.image_shape), jnp.float32)
        return split_variables(self.model.init({"params": key}, images, train=False))

    def loss(
        self,
        params: Any,
        model_state: dict[str, Any],
        batch: dict[str, jax.Array],
        key: jax.Array | None,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[Metrics, dict[str, Any]]]:
        images_BxHxWxC, labels_B = batch["image"], batch["label"]
        if key is not None:  # training: augment, then dropout from the second half of the key
            aug_key, key = jax.random.split(key)
            images_BxHxWxC = self.augment(images_BxHxWxC, aug_key)
        logits_BxK, model_state = apply_model(self.model, params, model_state, images_BxHxWxC, key)
        logits_BxK = logits_BxK.astype(jnp.float32)
        if logits_BxK.shape[-1] == 1:
            z_B = logits_BxK[:, 0]
            loss_B = optax.sigmoid_binary_cross_entropy(z_B, labels_B.astype(jnp.float32))
            pred_B = (z_B > 0).astype(labels_B.dtype)
        else:
            loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
            pred_B = jnp.argmax(logits_BxK, axis=-1).astype(labels_B.dtype)
        correct_B = (pred_B == labels_B).astype(jnp.float32)
        metrics = example_means({"loss": loss_B, "accuracy": correct_B}, batch)
        return metrics["loss"], (metrics, model_state)
