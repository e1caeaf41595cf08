"""The BERT family: a bidirectional encoder trained by masked language modelling.

Counts (per token of text, T = seq_len tokens per example, as for the GPT): the GPT's blocks
with full (bidirectional) attention, every query seeing T keys. Embedding parameters are the
token table with its [MASK] row, the learned position table and an untied head (data
vocabulary only). ``kaplan``: ``6 * N_ne``; ``full``: ``3 * (2 * N_ne + 2 * V * d + 4 * L * T
* d)`` (logits are computed at every position; the loss uses the masked ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from scalinglab.families.base import (
    Family,
    TransformerConfig,
    stack_flops_per_token,
    stack_param_counts,
    transformer_step_temp_bytes,
)
from scalinglab.families.common import (
    Metrics,
    data_vocab,
    mask_key,
    masked_metrics,
    split_variables,
)

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import TrialConfig


class BertConfig(TransformerConfig):
    """BERT: an encoder with bidirectional attention, trained by masked language modelling."""

    family: Literal["bert"] = "bert"
    positions: Literal["learned", "rotary"] = "learned"
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0)  # share of tokens selected for prediction


def mask_token_id(cfg: BertConfig) -> int:
    """The id of [MASK]: one past the data vocabulary."""
    return cfg.vocab_size


def build_model(cfg: BertConfig) -> nn.Module:
    """The Flax `Bert` module."""
    from scalinglab.models.bert import Bert

    return Bert(cfg)


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
        masking_key, dropout_key = mask_key(key, tokens_BxT)
        cfg = self.model.cfg
        inputs_BxT, positions_BxK, targets_BxK = mlm_mask(
            masking_key,
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
        metrics = masked_metrics(logits_BxKxV, targets_BxK)
        return metrics["loss"], (metrics, model_state)


def build_task(cfg: TrialConfig, model: nn.Module) -> MaskedLM:
    """Masked language modelling; random replacements come from the data's vocabulary."""
    return MaskedLM(model, cfg.data.seq_len, data_vocab(cfg))


def param_counts(cfg: BertConfig) -> dict[str, int]:
    """Total, embedding and non-embedding parameters (see the module docstring)."""
    return stack_param_counts(cfg, cfg.vocab_size + 1)  # + one [MASK] row


def flops_per_token(cfg: BertConfig, seq_len: int, counting: str) -> float:
    """Training FLOPs per token under `counting` (see the module docstring)."""
    n_ne = param_counts(cfg)["non_embedding"]
    return stack_flops_per_token(cfg, n_ne, seq_len, counting, attention=4.0)


def step_temp_bytes(cfg: BertConfig, batch_size: int, seq_len: int) -> int:
    """A train step's temporaries: `n_layer` transformer blocks."""
    return transformer_step_temp_bytes(cfg, cfg.n_layer, batch_size, seq_len)


FAMILY = Family(
    name="bert",
    config=BertConfig,
    build_model=build_model,
    build_task=build_task,
    param_counts=param_counts,
    flops_per_token=flops_per_token,
    step_temp_bytes=step_temp_bytes,
    data_kinds=("text",),
)
