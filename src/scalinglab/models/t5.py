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

Span corruption (`span_layout`, `span_corrupt`) is T5's `random_spans_noise_mask` with static
shapes: a sequence of T tokens has exactly `num_noise = round(T * noise_density)` noise
tokens in exactly `num_spans = round(num_noise / mean_span_length)` spans of random positive
lengths, separated by non-noise runs of random positive lengths, with random (possibly empty)
non-noise runs before the first span and after the last. The encoder input replaces
span k by sentinel V + k (length T - num_noise + num_spans); the decoder target is sentinel
k followed by span k, for every k (length num_noise + num_spans). Both lengths are fixed, so
the loss needs no padding, and everything is `jnp` from one key, so it runs inside the jitted
loss and a resumed run draws the same spans.

Departures from T5, for comparability with the GPT: LayerNorm with biases (not RMSNorm),
biases in every Dense, no output rescaling when the head is tied, no end-of-sequence token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab.config import T5Config
from scalinglab.models.attention import Attention, RelativePositionBias
from scalinglab.models.blocks import Block, Mlp
from scalinglab.models.gpt import PositionEmbed
from scalinglab.models.layers import INIT_STD, LayerNorm, dense_init, lookup, on_rows

NUM_BUCKETS = 32
MAX_DISTANCE = 128


@dataclass(frozen=True)
class SpanLayout:
    """Static shapes of span corruption for one sequence length."""

    seq_len: int
    num_noise: int
    num_spans: int

    @property
    def enc_len(self) -> int:
        """Encoder input length: non-noise tokens plus one sentinel per span."""
        return self.seq_len - self.num_noise + self.num_spans

    @property
    def dec_len(self) -> int:
        """Decoder target length: each span's sentinel followed by its tokens."""
        return self.num_noise + self.num_spans


def span_layout(seq_len: int, noise_density: float, mean_span_length: float) -> SpanLayout:
    """Noise tokens and spans of a `seq_len` sequence: round(T * density) noise tokens (at
    least 1, at most T - 1) in round(noise / mean length) spans (at least 1; at most as many as
    there are noise tokens, or non-noise tokens to separate them)."""
    if seq_len < 2:
        raise ValueError(f"span corruption needs data.seq_len >= 2 (got {seq_len})")
    num_noise = min(max(round(seq_len * noise_density), 1), seq_len - 1)
    num_spans = round(num_noise / mean_span_length)
    num_spans = min(max(num_spans, 1), num_noise, seq_len - num_noise)
    return SpanLayout(seq_len, num_noise, num_spans)


@dataclass(frozen=True)
class T5Vocab:
    """Token ids: data [0, data), sentinels [data, data + sentinels), then the start id."""

    data: int
    sentinels: int

    @property
    def start_id(self) -> int:
        return self.data + self.sentinels

    @property
    def out_size(self) -> int:
        """Logit width: data tokens and sentinels (the start id is never a target)."""
        return self.data + self.sentinels

    @property
    def embed_rows(self) -> int:
        return self.data + self.sentinels + 1


def t5_vocab(cfg: T5Config) -> T5Vocab:
    """The vocabulary of a T5 config: one sentinel per span of a `max_seq_len` sequence."""
    if cfg.max_seq_len is None:
        raise ValueError("model.max_seq_len must be set (TrialConfig fills it from data.seq_len)")
    layout = span_layout(cfg.max_seq_len, cfg.noise_density, cfg.mean_span_length)
    return T5Vocab(cfg.vocab_size, layout.num_spans)


def n_decoder_layer(cfg: T5Config) -> int:
    """Decoder depth: `n_decoder_layer`, defaulting to the encoder's `n_layer`."""
    return cfg.n_decoder_layer if cfg.n_decoder_layer is not None else cfg.n_layer


def _random_segmentation(key: jax.Array, num_items: int, num_segments: int) -> jax.Array:
    """Random positive lengths (num_segments,) summing to num_items, uniform over all such
    compositions: cut [0, num_items) at num_segments - 1 distinct random interior points."""
    cuts = jax.random.permutation(key, num_items - 1)[: num_segments - 1] + 1
    bounds = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.sort(cuts), jnp.full(1, num_items)])
    return jnp.diff(bounds).astype(jnp.int32)


def _span_runs(key: jax.Array, layout: SpanLayout) -> jax.Array:
    """int32 (T,): the index r of the run each token is in. Runs alternate non-noise (r even)
    and noise (r odd, span r // 2): [keep_0, span_0, keep_1, ..., span_{S-1}, keep_S], where
    the inner non-noise runs are at least one token long and the outer two may be empty, so a
    span can start anywhere (T5's original layout always ends in a span; seqio's `random_roll`
    fixes that by rolling the mask, which can split a span and change the shapes)."""
    k_noise, k_keep = jax.random.split(key)
    s = layout.num_spans
    noise_lengths = _random_segmentation(k_noise, layout.num_noise, s)
    # S + 1 positive parts of (non-noise + 2), then one token off each outer part.
    keep_lengths = _random_segmentation(k_keep, layout.seq_len - layout.num_noise + 2, s + 1)
    keep_lengths = keep_lengths.at[jnp.array([0, s])].add(-1)
    lengths_2S = jnp.stack([keep_lengths[:s], noise_lengths], axis=1).reshape(-1)
    starts = jnp.cumsum(lengths_2S)  # where each run after the first starts (T: empty keep_S)
    # `add` counts runs that start at the same token (an empty keep_0 starts where span_0 does).
    boundaries_T = jnp.zeros(layout.seq_len, jnp.int32).at[starts].add(1, mode="drop")
    return jnp.cumsum(boundaries_T)


def noise_spans(key: jax.Array, layout: SpanLayout) -> jax.Array:
    """int32 (T,): -1 on non-noise tokens, k on the tokens of noise span k."""
    run_T = _span_runs(key, layout)
    return jnp.where(run_T % 2 == 1, run_T // 2, -1)


def span_corrupt(
    key: jax.Array, tokens_T: jax.Array, layout: SpanLayout, vocab: T5Vocab
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One sequence -> (encoder input (enc_len,), decoder input (dec_len,), target (dec_len,)).

    The encoder input keeps the non-noise tokens and puts sentinel data + k where span k was;
    the target is, for every k, sentinel data + k then span k's tokens; the decoder input is
    the target shifted right behind the start id.
    """
    span_T = noise_spans(key, layout)
    noise_T = span_T >= 0
    first_T = noise_T & jnp.concatenate([jnp.ones(1, bool), span_T[1:] != span_T[:-1]])
    sentinel_T = (vocab.data + span_T).astype(tokens_T.dtype)
    # Encoder: a span's first token becomes its sentinel, the rest of the span is dropped.
    enc_full = jnp.where(first_T, sentinel_T, tokens_T)
    (enc_idx,) = jnp.nonzero(~noise_T | first_T, size=layout.enc_len)
    # Target: noise token i goes after the i-1 noise tokens and k + 1 sentinels before it;
    # span k's sentinel just before its first token. Non-noise tokens scatter out of range.
    noise_i = noise_T.astype(jnp.int32)
    pos_T = jnp.cumsum(noise_i) - noise_i + span_T + 1
    out = layout.dec_len
    target = jnp.zeros(out, tokens_T.dtype)
    target = target.at[jnp.where(noise_T, pos_T, out)].set(tokens_T, mode="drop")
    target = target.at[jnp.where(first_T, pos_T - 1, out)].set(sentinel_T, mode="drop")
    dec_in = jnp.concatenate([jnp.full(1, vocab.start_id, target.dtype), target[:-1]])
    return enc_full[enc_idx], dec_in, target


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
        if cfg.max_seq_len is None:
            raise ValueError("model.max_seq_len must be set for learned positions")
        if t > cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds model.max_seq_len {cfg.max_seq_len}")
        pos_TxD = PositionEmbed(cfg.max_seq_len, cfg.d_model, name="pos_embed")(t)
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
