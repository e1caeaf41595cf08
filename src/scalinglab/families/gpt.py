"""The GPT family: a decoder-only language model trained on next-token prediction.

Counts, with N_ne the non-embedding parameters, L = n_layer, T = seq_len, d = d_model,
V = vocab_size (FLOPs per training token, forward + backward = 3 x forward):

- embedding parameters (Kaplan's exclusion): the token embedding, the learned position table
  (`max_seq_len` rows) and an untied unembedding;
- ``kaplan``: ``6 * N_ne`` (Kaplan et al. 2020, C = 6 N D with non-embedding N);
- ``full``: ``3 * (2 * N_ne + 2 * V * d + 2 * L * T * d)``: Kaplan's Table 1 forward count
  (``C_forward = 2 N + 2 n_layer n_ctx d_attn``, the attention term being QK^T and AV averaged
  over causal positions) plus the unembedding matmul ``2 V d``, tied or not. Embedding
  lookups and position additions cost no matmul FLOPs and are not counted. MFU uses ``full``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalinglab.families.base import (
    Family,
    TransformerConfig,
    stack_flops_per_token,
    stack_param_counts,
    transformer_step_temp_bytes,
)
from scalinglab.families.common import Metrics, split_variables

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import TrialConfig


class GPTConfig(TransformerConfig):
    """GPT: a decoder-only language model (`model.family: gpt`, the default)."""

    family: Literal["gpt"] = "gpt"
    MUP_WIDTH: ClassVar[str | None] = "d_model"  # muP scales with this width
    positions: Literal["learned", "rotary"] = "learned"


def build_model(cfg: GPTConfig) -> nn.Module:
    """The Flax `GPT` module."""
    from scalinglab.models.gpt import GPT

    return GPT(cfg)


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


def build_task(cfg: TrialConfig, model: nn.Module) -> NextToken:
    """Next-token prediction over the trial's sequence length."""
    return NextToken(model, cfg.data.seq_len)


def param_counts(cfg: GPTConfig) -> dict[str, int]:
    """Total, embedding and non-embedding parameters (see the module docstring)."""
    return stack_param_counts(cfg, cfg.vocab_size)


def flops_per_token(cfg: GPTConfig, seq_len: int, counting: str) -> float:
    """Training FLOPs per token under `counting` (see the module docstring)."""
    n_ne = param_counts(cfg)["non_embedding"]
    return stack_flops_per_token(cfg, n_ne, seq_len, counting, attention=2.0)


def step_temp_bytes(cfg: GPTConfig, batch_size: int, seq_len: int) -> int:
    """A train step's temporaries: `n_layer` transformer blocks."""
    return transformer_step_temp_bytes(cfg, cfg.n_layer, batch_size, seq_len)


FAMILY = Family(
    name="gpt",
    config=GPTConfig,
    build_model=build_model,
    build_task=build_task,
    param_counts=param_counts,
    flops_per_token=flops_per_token,
    step_temp_bytes=step_temp_bytes,
    data_kinds=("text",),
)
