"""The T5 family: an encoder-decoder trained on span corruption.

Span corruption (`span_layout`, `span_corrupt`) is T5's `random_spans_noise_mask` with static
shapes: a sequence of T tokens has exactly `num_noise = round(T * noise_density)` noise
tokens in exactly `num_spans = round(num_noise / mean_span_length)` spans of random positive
lengths, separated by non-noise runs of random positive lengths, with random (possibly empty)
non-noise runs before the first span and after the last. The encoder input replaces
span k by sentinel V + k (length T - num_noise + num_spans); the decoder target is sentinel
k followed by span k, for every k (length num_noise + num_spans). Both lengths are fixed, so
the loss needs no padding, and everything is `jnp` from one key, so it runs inside the jitted
loss and a resumed run draws the same spans.

Vocabulary (`t5_vocab`): ids [0, V) are data tokens, [V, V + S) are the S sentinels that
stand for masked spans (S = the number of spans in a `max_seq_len` sequence, `span_layout`),
and V + S is the decoder's start token.

Counts (per token of text, T = seq_len tokens per example): the token table (data, S
sentinels, start id), an untied head (data and sentinels) and the position tables (learned:
two `max_seq_len` tables; relative: two bucket x head bias tables, `relpos_embed`) are
embedding parameters. Span corruption turns T tokens into Te = T - noise + spans encoder
tokens and Td = noise + spans decoder tokens (`span_layout`). Each parameter is charged per
token of the stack it runs on: N_enc per encoder token (the encoder plus every decoder
layer's cross-attention `kv` projection, which runs on encoder states) and N_dec per decoder
token (the rest; N_enc + N_dec = N_ne). Per text token:
``kaplan`` ``6 * (N_enc * Te + N_dec * Td) / T``;
``full`` ``3 * (Te * (2 N_enc + 4 L_e Te d) + Td * (2 N_dec + 2 L_d Td d + 4 L_d Te d
+ 2 (V + S) d)) / T``: bidirectional encoder attention, causal decoder self-attention,
cross-attention over all Te encoder states, and the unembedding over data tokens and
sentinels.
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
    block_params,
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


class T5Config(TransformerConfig):
    """T5: an encoder-decoder trained on span corruption (the decoder rebuilds masked spans).

    `n_layer` is the encoder depth; `n_decoder_layer` defaults to it.
    """

    family: Literal["t5"] = "t5"
    positions: Literal["relative", "learned"] = "relative"
    n_decoder_layer: int | None = Field(None, ge=1)
    noise_density: float = Field(0.15, gt=0.0, lt=1.0)  # share of tokens inside masked spans
    mean_span_length: float = Field(3.0, ge=1.0)


def build_model(cfg: T5Config) -> nn.Module:
    """The Flax `T5` module."""
    from scalinglab.models.t5 import T5

    return T5(cfg)


# Relative position buckets of each stack, as in T5 (`scalinglab.models.t5`).
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
    layout = span_layout(cfg.position_rows(), cfg.noise_density, cfg.mean_span_length)
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


@dataclass(frozen=True)
class SpanCorruption:
    """T5 span corruption: the encoder reads a (B, T+1) batch's first T tokens with each noise
    span replaced by a sentinel; the decoder rebuilds sentinel + span for every span
    (`span_corrupt`). Loss and accuracy are over every target token (sentinels included, as in
    T5); the target has a fixed length, so nothing is padded. D counts the T text tokens of
    each example."""

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
        span_key, dropout_key = mask_key(key, tokens_BxT)
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
        metrics = masked_metrics(logits_BxUxV, target_BxU)
        return metrics["loss"], (metrics, model_state)


def build_task(cfg: TrialConfig, model: nn.Module) -> SpanCorruption:
    """Span corruption over the trial's sequence length."""
    return SpanCorruption(model, cfg.data.seq_len, data_vocab(cfg))


def _split(cfg: T5Config) -> tuple[int, int]:
    """(N_enc, N_dec): non-embedding parameters run per encoder token and per decoder token."""
    d = cfg.d_model
    cross_kv = 2 * d * d + 2 * d  # per decoder layer, applied to the encoder states
    cross_q_proj = 2 * (d * d + d)
    dec_layer = block_params(cfg) + 2 * d + cross_kv + cross_q_proj  # + norm_3, cross_attn
    n_dec = n_decoder_layer(cfg)
    n_enc_tok = cfg.n_layer * block_params(cfg) + 2 * d + n_dec * cross_kv  # + norm_f
    n_dec_tok = n_dec * (dec_layer - cross_kv) + 2 * d  # + norm_f
    return n_enc_tok, n_dec_tok


def param_counts(cfg: T5Config) -> dict[str, int]:
    """Total, embedding and non-embedding parameters (see the module docstring)."""
    d, vocab = cfg.d_model, t5_vocab(cfg)
    embedding = vocab.embed_rows * d
    if not cfg.tie_embeddings:
        embedding += d * vocab.out_size
    if cfg.positions == "learned":
        embedding += 2 * cfg.position_rows() * d
    else:
        embedding += 2 * NUM_BUCKETS * cfg.n_head
    non_embedding = sum(_split(cfg))
    return {
        "total": embedding + non_embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
    }


def flops_per_token(cfg: T5Config, seq_len: int, counting: str) -> float:
    """Training FLOPs per text token under `counting` (see the module docstring)."""
    layout = span_layout(seq_len, cfg.noise_density, cfg.mean_span_length)
    te, td = layout.enc_len, layout.dec_len
    n_enc, n_dec = _split(cfg)
    if counting == "kaplan":
        return 6.0 * (n_enc * te + n_dec * td) / seq_len
    d, l_dec = cfg.d_model, n_decoder_layer(cfg)
    enc = 2.0 * n_enc + 4.0 * cfg.n_layer * te * d
    dec = 2.0 * n_dec + 2.0 * l_dec * td * d + 4.0 * l_dec * te * d
    dec += 2.0 * t5_vocab(cfg).out_size * d
    return 3.0 * (te * enc + td * dec) / seq_len


def step_temp_bytes(cfg: T5Config, batch_size: int, seq_len: int) -> int:
    """A train step's temporaries: the encoder's and the decoder's blocks."""
    return transformer_step_temp_bytes(cfg, cfg.n_layer + n_decoder_layer(cfg), batch_size, seq_len)


FAMILY = Family(
    name="t5",
    config=T5Config,
    build_model=build_model,
    build_task=build_task,
    param_counts=param_counts,
    flops_per_token=flops_per_token,
    step_temp_bytes=step_temp_bytes,
    data_kinds=("text",),
)
