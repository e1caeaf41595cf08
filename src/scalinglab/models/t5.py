"""T5-style encoder-decoder for span corruption (Flax linen).

Encoder: token embedding, pre-LayerNorm blocks with bidirectional self-attention, final
LayerNorm. Decoder: the same token embedding, pre-LayerNorm blocks of causal self-attention,
cross-attention over the encoder output (every decoder position sees every encoder position)
and a feed-forward block, final LayerNorm, then a tied or untied output head.

Positions (`model.positions`):
- `relative` (T5's): a learned scalar per head and relative-position bucket added to the
  self-attention scores, one table per stack (`encoder/relpos_embed`, `decoder/relpos_embed`)
  shared by all its layers; bidirectional buckets in the encoder, causal in the decoder;
  cross-attention has none. 32 buckets, max distance 128, as in T5.
- `learned`: absolute position tables `encoder/pos_embed` and `decoder/pos_embed`
  (`max_seq_len` rows each) added to the embeddings.
Both kinds count as position embeddings (paths contain "embed"): excluded from non-embedding
N and from weight decay, like the GPT's position table.

Vocabulary (`t5_vocab`): ids [0, V) are data tokens, [V, V + S) are the S sentinels that
stand for masked spans (S = the number of spans in a `max_seq_len` sequence, `span_layout`),
and V + S is the decoder's start token. The token table has V + S + 1 rows; logits cover the
V + S ids a target can hold.

Span corruption (the objective) and the vocabulary layout live in `scalinglab.families.t5`.

Departures from T5, for comparability with the GPT: LayerNorm with biases (not RMSNorm),
biases in every Dense, no output rescaling when the head is tied, no end-of-sequence token.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab.families.t5 import (  # noqa: F401  (span corruption re-exported)
    MAX_DISTANCE,
    NUM_BUCKETS,
    SpanLayout,
    T5Config,
    T5Vocab,
    n_decoder_layer,
    noise_spans,
    span_corrupt,
    span_layout,
    t5_vocab,
)
from scalinglab.models.attention import Attention, RelativePositionBias
from scalinglab.models.blocks import Block, Mlp
from scalinglab.models.gpt import PositionEmbed
from scalinglab.models.layers import INIT_STD, LayerNorm, dense_init, lookup, on_rows


class DecoderBlock(nn.Module):
    """Pre-LayerNorm decoder block: causal self-attention (with the stack's relative bias),
    cross-attention over the encoder output, feed-forward; dropout on each residual branch."""

    cfg: T5Config
    out_std: float

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        enc_BxSxD: jax.Array,
        *,
        bias_HxTxT: jax.Array | None,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        drop = nn.Dropout(cfg.dropout)
        attn = dict(n_head=cfg.n_head, dropout=cfg.dropout, out_std=self.out_std, dtype=dtype)
        h = LayerNorm(dtype=dtype, name="norm_1")(x_BxTxD)
        h = Attention(**attn, causal=True, name="attn")(
            h, bias=bias_HxTxT, deterministic=deterministic
        )
        x_BxTxD = x_BxTxD + drop(h, deterministic=deterministic)
        h = LayerNorm(dtype=dtype, name="norm_2")(x_BxTxD)
        h = Attention(**attn, name="cross_attn")(h, enc_BxSxD, deterministic=deterministic)
        x_BxTxD = x_BxTxD + drop(h, deterministic=deterministic)
        h = LayerNorm(dtype=dtype, name="norm_3")(x_BxTxD)
        h = Mlp(
            d_ff=cfg.ff_dim,
            activation=cfg.activation,
            dropout=cfg.dropout,
            out_std=self.out_std,
            dtype=dtype,
            name="mlp",
        )(h, deterministic=deterministic)
        return x_BxTxD + drop(h, deterministic=deterministic)


def _positions(
    cfg: T5Config, x_BxTxD: jax.Array, *, bidirectional: bool
) -> tuple[jax.Array, jax.Array | None]:
    """Inside a stack's compact call: add learned absolute positions (`pos_embed`), or build
    the stack's relative bias (H, T, T) from its `relpos_embed` table."""
    t = x_BxTxD.shape[1]
    if cfg.positions == "learned":
        pos_TxD = PositionEmbed(cfg.position_rows(t), cfg.d_model, name="pos_embed")(t)
        return x_BxTxD + pos_TxD.astype(x_BxTxD.dtype)[None], None
    bias_HxTxT = RelativePositionBias(
        n_head=cfg.n_head,
        bidirectional=bidirectional,
        num_buckets=NUM_BUCKETS,
        max_distance=MAX_DISTANCE,
        name="relpos_embed",
    )(t, t)
    return x_BxTxD, bias_HxTxT


class Encoder(nn.Module):
    """Embedded inputs (B, S, D) -> encoder states (B, S, D)."""

    cfg: T5Config

    @nn.compact
    def __call__(self, x_BxSxD: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        x_BxSxD, bias = _positions(cfg, x_BxSxD, bidirectional=True)
        x_BxSxD = nn.Dropout(cfg.dropout)(x_BxSxD, deterministic=deterministic)
        out_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        for i in range(cfg.n_layer):
            x_BxSxD = Block(
                n_head=cfg.n_head,
                d_ff=cfg.ff_dim,
                activation=cfg.activation,
                dropout=cfg.dropout,
                mlp_dropout=cfg.dropout,
                out_std=out_std,
                dtype=dtype,
                name=f"block_{i}",
            )(x_BxSxD, bias=bias, deterministic=deterministic)
        return LayerNorm(dtype=dtype, name="norm_f")(x_BxSxD)


class Decoder(nn.Module):
    """Embedded decoder inputs (B, T, D) and encoder states (B, S, D) -> states (B, T, D)."""

    cfg: T5Config

    @nn.compact
    def __call__(
        self, x_BxTxD: jax.Array, enc_BxSxD: jax.Array, *, deterministic: bool = True
    ) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        x_BxTxD, bias = _positions(cfg, x_BxTxD, bidirectional=False)
        x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
        n_dec = n_decoder_layer(cfg)
        out_std = INIT_STD / math.sqrt(3 * n_dec)  # three residual branches per block
        for i in range(n_dec):
            x_BxTxD = DecoderBlock(cfg, out_std, name=f"block_{i}")(
                x_BxTxD, enc_BxSxD, bias_HxTxT=bias, deterministic=deterministic
            )
        return LayerNorm(dtype=dtype, name="norm_f")(x_BxTxD)


class T5(nn.Module):
    """Encoder-decoder: encoder tokens (B, S) and decoder input tokens (B, T), int32 ids in
    [0, V + S] (`t5_vocab`) -> float32 logits (B, T, V + S) for the next target token.

    `encode` and `decode` expose the two halves (`model.apply(..., method=T5.encode)`).
    Dropout draws from the "dropout" rng and is active only when `deterministic=False`.
    """

    cfg: T5Config

    def setup(self) -> None:
        cfg = self.cfg
        self.vocab = t5_vocab(cfg)
        self.token_embed = nn.Embed(
            self.vocab.embed_rows,
            cfg.d_model,
            embedding_init=dense_init(),
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.float32,
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Dense(
                self.vocab.out_size,
                use_bias=False,
                kernel_init=dense_init(),
                dtype=jnp.dtype(cfg.dtype),
                param_dtype=jnp.float32,
            )

    def encode(self, enc_tokens_BxS: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Encoder states (B, S, D) of the corrupted input."""
        x_BxSxD = lookup(self.token_embed, enc_tokens_BxS)
        return self.encoder(x_BxSxD, deterministic=deterministic)

    def decode(
        self, enc_BxSxD: jax.Array, dec_tokens_BxT: jax.Array, *, deterministic: bool = True
    ) -> jax.Array:
        """Logits (B, T, V + S) from encoder states and decoder input tokens."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        x_BxTxD = lookup(self.token_embed, dec_tokens_BxT)
        x_BxTxD = self.decoder(x_BxTxD, enc_BxSxD, deterministic=deterministic)
        if cfg.tie_embeddings:
            # Unembed with data and sentinel rows only: the start id is never a target.
            table_OxD = self.token_embed.embedding[: self.vocab.out_size].astype(dtype)
            logits_BxTxO = on_rows(lambda x_NxD: x_NxD @ table_OxD.T, x_BxTxD)
        else:
            logits_BxTxO = on_rows(self.lm_head, x_BxTxD)
        return logits_BxTxO.astype(jnp.float32)

    def __call__(
        self, enc_tokens_BxS: jax.Array, dec_tokens_BxT: jax.Array, *, deterministic: bool = True
    ) -> jax.Array:
        enc_BxSxD = self.encode(enc_tokens_BxS, deterministic=deterministic)
        return self.decode(enc_BxSxD, dec_tokens_BxT, deterministic=deterministic)
