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
from scalinglab.data.augment import Augment
from scalinglab.models.bert import mask_token_id
from scalinglab.models.t5 import SpanLayout, span_corrupt, span_layout, t5_vocab

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
        variables = {"params": params, **model_state}
        if key is None:
            logits_BxK = self.model.apply(variables, images_BxHxWxC, train=False)
        else:
            aug_key, dropout_key = jax.random.split(key)
            images_BxHxWxC = self.augment(images_BxHxWxC, aug_key)
            logits_BxK, updates = self.model.apply(
                variables,
                images_BxHxWxC,
                train=True,
                rngs={"dropout": dropout_key},
                mutable=list(model_state),
            )
            model_state = {**model_state, **updates}
        logits_BxK = logits_BxK.astype(jnp.float32)
        if logits_BxK.shape[-1] == 1:
            z_B = logits_BxK[:, 0]
            loss = optax.sigmoid_binary_cross_entropy(z_B, labels_B.astype(jnp.float32)).mean()
            pred_B = (z_B > 0).astype(labels_B.dtype)
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B).mean()
            pred_B = jnp.argmax(logits_BxK, axis=-1).astype(labels_B.dtype)
        accuracy = jnp.mean((pred_B == labels_B).astype(jnp.float32))
        return loss, ({"loss": loss, "accuracy": accuracy}, model_state)


# Evaluation draws its masks and spans from this key (folded with the batch), so eval metrics
# are deterministic and comparable across steps.
EVAL_MASK_KEY = 1234


def _mask_key(key: jax.Array | None, batch: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """(masking key, dropout key or None). In evaluation (key None) the masking key is fixed,
    folded with the batch's token sum so different eval batches get different masks."""
    if key is None:
        total = jnp.sum(batch, dtype=jnp.uint32)
        return jax.random.fold_in(jax.random.PRNGKey(EVAL_MASK_KEY), total), None
    mask_key, dropout_key = jax.random.split(key)
    return mask_key, dropout_key


def _masked_metrics(logits_BxKxV: jax.Array, targets_BxK: jax.Array) -> Metrics:
    """Mean cross-entropy and accuracy over the predicted positions."""
    logits_BxKxV = logits_BxKxV.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BxKxV, targets_BxK).mean()
    accuracy = jnp.mean(jnp.argmax(logits_BxKxV, axis=-1) == targets_BxK)
    return {"loss": loss, "accuracy": accuracy}


def mlm_mask(
    key: jax.Array,
    tokens_BxT: jax.Array,
    *,
    mask_rate: float,
    mask_id: int,
    random_vocab: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BERT masking: (inputs (B, T), positions (B, K), targets (B, K)).

    Exactly K = max(1, round(mask_rate * T)) distinct positions per sequence are selected
    (a static count, so shapes stay fixed under jit); of those, 80% become `mask_id`, 10% a
    uniformly random token in [0, random_vocab) and 10% stay unchanged. Targets are the
    original tokens at the selected positions.
    """
    b, t = tokens_BxT.shape
    k = min(max(round(mask_rate * t), 1), t)
    k_pos, k_kind, k_rand = jax.random.split(key, 3)
    _, positions_BxK = jax.lax.top_k(jax.random.uniform(k_pos, (b, t)), k)
    targets_BxK = jnp.take_along_axis(tokens_BxT, positions_BxK, axis=1)
    kind_BxK = jax.random.uniform(k_kind, (b, k))
    random_BxK = jax.random.randint(k_rand, (b, k), 0, random_vocab, tokens_BxT.dtype)
    replaced_BxK = jnp.where(
        kind_BxK < 0.8, mask_id, jnp.where(kind_BxK < 0.9, random_BxK, targets_BxK)
    ).astype(tokens_BxT.dtype)
    inputs_BxT = tokens_BxT.at[jnp.arange(b)[:, None], positions_BxK].set(replaced_BxK)
    return inputs_BxT, positions_BxK, targets_BxK


@dataclass(frozen=True)
class MaskedLM:
    """Masked language modelling (BERT): predict the selected tokens of a (B, T+1) batch's
    first T tokens from the whole corrupted sequence (`mlm_mask`); loss and accuracy over the
    selected positions only."""

    model: nn.Module
    seq_len: int
    random_vocab: int  # replacement tokens are drawn from [0, random_vocab): the data vocabulary

    @property
    def units_per_example(self) -> int:
        return self.seq_len

    def example_batch(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """A random batch of the training shape (for compile probes and benchmarks)."""
        return rng.integers(0, self.random_vocab, (batch_size, self.seq_len + 1)).astype(np.int32)

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
        tokens_BxT = batch_BxT1[:, : self.seq_len]
        mask_key, dropout_key = _mask_key(key, tokens_BxT)
        cfg = self.model.cfg
        inputs_BxT, positions_BxK, targets_BxK = mlm_mask(
            mask_key,
            tokens_BxT,
            mask_rate=cfg.mask_rate,
            mask_id=mask_token_id(cfg),
            random_vocab=self.random_vocab,
        )
        rngs = {"dropout": dropout_key} if dropout_key is not None else None
        logits_BxTxV = self.model.apply(
            {"params": params, **model_state},
            inputs_BxT,
            deterministic=dropout_key is None,
            rngs=rngs,
        )
        logits_BxKxV = jnp.take_along_axis(logits_BxTxV, positions_BxK[..., None], axis=1)
        metrics = _masked_metrics(logits_BxKxV, targets_BxK)
        return metrics["loss"], (metrics, model_state)


@dataclass(frozen=True)
class SpanCorruption:
    """T5 span corruption: the encoder reads a (B, T+1) batch's first T tokens with each noise
    span replaced by a sentinel; the decoder rebuilds sentinel + span for every span
    (`scalinglab.models.t5.span_corrupt`). Loss and accuracy are over every target token
    (sentinels included, as in T5); the target has a fixed length, so nothing is padded.
    D counts the T text tokens of each example."""

    model: nn.Module
    seq_len: int
    data_vocab: int  # for example batches only

    @property
    def units_per_example(self) -> int:
        return self.seq_len

    @property
    def layout(self) -> SpanLayout:
        cfg = self.model.cfg
        return span_layout(self.seq_len, cfg.noise_density, cfg.mean_span_length)

    def example_batch(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """A random batch of the training shape (for compile probes and benchmarks)."""
        return rng.integers(0, self.data_vocab, (batch_size, self.seq_len + 1)).astype(np.int32)

    def init(self, key: jax.Array) -> tuple[Any, dict[str, Any]]:
        enc = jnp.zeros((1, self.layout.enc_len), jnp.int32)
        dec = jnp.zeros((1, self.layout.dec_len), jnp.int32)
        return split_variables(self.model.init({"params": key}, enc, dec, deterministic=True))

    def loss(
        self,
        params: Any,
        model_state: dict[str, Any],
        batch_BxT1: jax.Array,
        key: jax.Array | None,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[Metrics, dict[str, Any]]]:
        tokens_BxT = batch_BxT1[:, : self.seq_len]
        span_key, dropout_key = _mask_key(key, tokens_BxT)
        layout, vocab = self.layout, t5_vocab(self.model.cfg)
        keys_B = jax.random.split(span_key, tokens_BxT.shape[0])
        enc_BxS, dec_in_BxU, target_BxU = jax.vmap(lambda k, x: span_corrupt(k, x, layout, vocab))(
            keys_B, tokens_BxT
        )
        rngs = {"dropout": dropout_key} if dropout_key is not None else None
        logits_BxUxV = self.model.apply(
            {"params": params, **model_state},
            enc_BxS,
            dec_in_BxU,
            deterministic=dropout_key is None,
            rngs=rngs,
        )
        metrics = _masked_metrics(logits_BxUxV, target_BxU)
        return metrics["loss"], (metrics, model_state)


def _data_vocab(cfg: TrialConfig) -> int:
    """Tokens the data can hold: the synthetic language's alphabet, else the model vocabulary."""
    if cfg.data.source == "synthetic":
        return min(cfg.data.synthetic.vocab_size, cfg.model.vocab_size)
    return cfg.model.vocab_size


TaskBuilder = Callable[[TrialConfig, nn.Module], Any]
TASKS: dict[str, TaskBuilder] = {
    "gpt": lambda cfg, model: NextToken(model, cfg.data.seq_len),
    "bert": lambda cfg, model: MaskedLM(model, cfg.data.seq_len, _data_vocab(cfg)),
    "t5": lambda cfg, model: SpanCorruption(model, cfg.data.seq_len, _data_vocab(cfg)),
    "mlp": Classification.from_config,
    "resnet": Classification.from_config,
}


def build_task(cfg: TrialConfig, model: nn.Module) -> Any:
    """The objective for `cfg.model.family`."""
    builder = TASKS.get(cfg.model.family)
    if builder is None:
        raise ValueError(
            f"model.family: no objective for {cfg.model.family!r}; allowed: {', '.join(TASKS)}"
        )
    return builder(cfg, model)
