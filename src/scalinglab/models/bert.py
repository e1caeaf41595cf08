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
from scalinglab.models.blocks import Block
from scalinglab.models.gpt import PositionEmbed
from scalinglab.models.layers import (
    INIT_STD,
    LayerNorm,
    dense_init,
    lookup,
    on_rows,
    untied_head,
)

EXTRA_TOKENS = 1  # [MASK]


class Bert(nn.Module):
    """Bidirectional encoder: int32 tokens (B, T) in [0, vocab_size] -> float32 logits
    (B, T, vocab_size). Dropout draws from the "dropout" rng and is active only when
    `deterministic=False`."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        t = tokens_BxT.shape[1]
        token_embed = nn.Embed(
            cfg.vocab_size + EXTRA_TOKENS,
            cfg.d_model,
            embedding_init=dense_init(),
            dtype=dtype,
            param_dtype=jnp.float32,
            name="token_embed",
        )
        x_BxTxD = lookup(token_embed, tokens_BxT)
        if cfg.positions == "learned":
            pos_TxD = PositionEmbed(cfg.position_rows(t), cfg.d_model, name="pos_embed")(t)
            x_BxTxD = x_BxTxD + pos_TxD.astype(dtype)[None]
        x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
        out_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        for i in range(cfg.n_layer):
            x_BxTxD = Block(
                n_head=cfg.n_head,
                d_ff=cfg.ff_dim,
                activation=cfg.activation,
                rotary=cfg.positions == "rotary",
                dropout=cfg.dropout,
                mlp_dropout=cfg.dropout,
                out_std=out_std,
                dtype=dtype,
                name=f"block_{i}",
            )(x_BxTxD, deterministic=deterministic)
        x_BxTxD = LayerNorm(dtype=dtype, name="norm_f")(x_BxTxD)
        if cfg.tie_embeddings:
            # Unembed with the data-token rows only: [MASK] is never predicted.
            table_VxD = token_embed.embedding[: cfg.vocab_size].astype(dtype)
            logits_BxTxV = on_rows(lambda x_NxD: x_NxD @ table_VxD.T, x_BxTxD)
        else:
            logits_BxTxV = untied_head(x_BxTxD, cfg.vocab_size, dtype)
        return logits_BxTxV.astype(jnp.float32)
