"""BERT-style encoder for masked language modelling (Flax linen).

Token embedding, learned or rotary positions, pre-LayerNorm blocks with bidirectional
self-attention (every position sees every other), a final LayerNorm and a tied or untied
output head over the data vocabulary.

Vocabulary: the token table has `vocab_size + 1` rows; the extra id `vocab_size`
(`mask_token_id`) is [MASK], so it never collides with a data token (byte 255, say). Logits
cover the `vocab_size` data tokens only: [MASK] is never a target.

Departures from the original BERT, for comparability with the GPT in scaling studies:
pre-LayerNorm (trains without warm-up tuning), no token-type embeddings or next-sentence
objective, no pooler and no extra transform layer in the MLM head.

Parameter paths mirror the GPT's: `token_embed/embedding`, `pos_embed/embedding`,
`block_i/{norm_1, attn/{qkv, proj}, norm_2, mlp/{up, gate, down}}`, `norm_f`, `lm_head/kernel`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab.families.bert import BertConfig
from scalinglab.models.attention import FeedForward, MultiHeadAttention
from scalinglab.models.gpt import PositionEmbed
from scalinglab.models.layers import INIT_STD, LayerNorm, dense_init, untied_head

EXTRA_TOKENS = 1  # [MASK]


class EncoderBlock(nn.Module):
    """Pre-LayerNorm block: x + drop(attn(norm_1(x))), then x + drop(mlp(norm_2(x))).

    `mask` (bool, broadcastable to (B, H, T, T)) and `bias_HxTxT` go to the attention; None
    for both is BERT's bidirectional attention. Shared with the T5 encoder.
    """

    n_head: int
    d_ff: int
    activation: str
    dropout: float
    out_std: float
    rotary: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        *,
        mask: jax.Array | None = None,
        bias_HxTxT: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        drop = nn.Dropout(self.dropout)
        h = LayerNorm(dtype=self.dtype, name="norm_1")(x_BxTxD)
        h = MultiHeadAttention(
            n_head=self.n_head,
            dropout=self.dropout,
            rotary=self.rotary,
            out_std=self.out_std,
            dtype=self.dtype,
            name="attn",
        )(h, mask=mask, bias_HxTxS=bias_HxTxT, deterministic=deterministic)
        x_BxTxD = x_BxTxD + drop(h, deterministic=deterministic)
        h = LayerNorm(dtype=self.dtype, name="norm_2")(x_BxTxD)
        h = FeedForward(
            d_ff=self.d_ff,
            activation=self.activation,
            dropout=self.dropout,
            out_std=self.out_std,
            dtype=self.dtype,
            name="mlp",
        )(h, deterministic=deterministic)
        return x_BxTxD + drop(h, deterministic=deterministic)


class Bert(nn.Module):
    """Bidirectional encoder: int32 tokens (B, T) in [0, vocab_size] -> float32 logits
    (B, T, vocab_size). Dropout draws from the "dropout" rng and is active only when
    `deterministic=False`."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        b, t = tokens_BxT.shape
        token_embed = nn.Embed(
            cfg.vocab_size + EXTRA_TOKENS,
            cfg.d_model,
            embedding_init=dense_init(),
            dtype=dtype,
            param_dtype=jnp.float32,
            name="token_embed",
        )
        x_BxTxD = token_embed(tokens_BxT)
        if cfg.positions == "learned":
            pos_TxD = PositionEmbed(cfg.position_rows(t), cfg.d_model, name="pos_embed")(t)
            x_BxTxD = x_BxTxD + pos_TxD.astype(dtype)[None]
        x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
        out_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        for i in range(cfg.n_layer):
            x_BxTxD = EncoderBlock(
                n_head=cfg.n_head,
                d_ff=cfg.ff_dim,
                activation=cfg.activation,
                dropout=cfg.dropout,
                out_std=out_std,
                rotary=cfg.positions == "rotary",
                dtype=dtype,
                name=f"block_{i}",
            )(x_BxTxD, deterministic=deterministic)
        x_BTxD = LayerNorm(dtype=dtype, name="norm_f")(x_BxTxD).reshape(b * t, cfg.d_model)
        if cfg.tie_embeddings:
            # Unembed with the data-token rows only: [MASK] is never predicted.
            table_VxD = token_embed.embedding[: cfg.vocab_size].astype(dtype)
            logits_BTxV = x_BTxD @ table_VxD.T
        else:
            logits_BTxV = untied_head(cfg.vocab_size, dtype)(x_BTxD)
        return logits_BTxV.astype(jnp.float32).reshape(b, t, cfg.vocab_size)
