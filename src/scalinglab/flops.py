"""Analytic parameter and FLOP counts from a model config alone (no initialisation).

Used for sweep planning (IsoFLOP budgets), run summaries and MFU. `param_counts` equals
`scalinglab.models.count_params` of an initialised model; tests hold the two together.

FLOPs per training token (forward + backward = 3 x forward), with N_ne the non-embedding
parameter count, L = n_layer, T = seq_len, d = d_model, V = vocab_size:

- ``kaplan``: ``6 * N_ne`` (Kaplan et al. 2020, C = 6 N D with non-embedding N).
- ``full``:   ``3 * (2 * N_ne + 2 * V * d + 2 * L * T * d)``: Kaplan's Table 1 forward count
  (``C_forward = 2 N + 2 n_layer n_ctx d_attn``, the attention term being QK^T and AV averaged
  over causal positions) plus the unembedding matmul ``2 V d``, tied or not. Embedding
  lookups and position additions cost no matmul FLOPs and are not counted. MFU uses ``full``.

Image classifiers (`mlp`, `resnet`) count FLOPs per training EXAMPLE (the `seq_len` argument is
ignored) and have no embedding parameters. Counted are matmuls and convolutions (2 FLOPs per
multiply-add), forward x 3 for training; biases, norms, activations, pooling and residual sums
are not:

- ``mlp``: ``kaplan`` is ``6 * N`` as for the GPT (every weight is used once per example);
  ``full`` is ``3 * 2 * sum(fan_in * fan_out)`` over the dense layers (no biases or norms).
- ``resnet``: ``6 * N`` would be wrong by the number of positions a kernel slides over, so
  both conventions count each 3x3 convolution as ``2 * 9 * C_in * C_out * H * W`` (SAME
  padding: output size = input size) plus the head's ``2 * C * n_out``, times 3. Compute is then
  comparable across families, which is what an IsoFLOP sweep over families needs.

Encoders (`bert`, `t5`) count per token of text, T = seq_len tokens per example, like the GPT.
Their token tables carry extra rows (BERT: [MASK]; T5: S sentinels and a start id, see
`scalinglab.models.t5`), all counted as embedding parameters, as are T5's relative position
bias tables (`relpos_embed`: 32 buckets x n_head per stack), the position embeddings they stand
in for.

- ``bert``: the GPT's formulas with full (bidirectional) attention, every query seeing T keys:
  ``kaplan`` ``6 * N_ne``; ``full`` ``3 * (2 * N_ne + 2 * V * d + 4 * L * T * d)`` (logits are
  computed at every position; the loss uses the masked ones).
- ``t5``: span corruption turns T tokens into Te = T - noise + spans encoder tokens and
  Td = noise + spans decoder tokens (`span_layout`). Each parameter is charged per token of the
  stack it runs on: N_enc per encoder token (the encoder plus every decoder layer's
  cross-attention `kv` projection, which runs on encoder states) and N_dec per decoder token
  (the rest; N_enc + N_dec = N_ne). Per text token:
  ``kaplan`` ``6 * (N_enc * Te + N_dec * Td) / T``;
  ``full`` ``3 * (Te * (2 N_enc + 4 L_e Te d) + Td * (2 N_dec + 2 L_d Td d + 4 L_d Te d
  + 2 (V + S) d)) / T``: bidirectional encoder attention, causal decoder self-attention,
  cross-attention over all Te encoder states, and the unembedding over data tokens and
  sentinels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from scalinglab.config import ModelConfig

Counting = Literal["kaplan", "full"]
COUNTINGS: tuple[str, ...] = ("kaplan", "full")


def _layer_params(cfg: ModelConfig) -> int:
    d, f = cfg.d_model, cfg.ff_dim
    norms = 2 * (2 * d)  # norm_1, norm_2: scale and bias
    attn = (d * 3 * d + 3 * d) + (d * d + d)  # fused qkv, output projection
    n_in = 2 if cfg.activation == "swiglu" else 1  # swiglu: gate and up projections
    mlp = n_in * (d * f + f) + (f * d + d)
    return norms + attn + mlp


def _gpt_param_counts(cfg: ModelConfig) -> dict[str, int]:
    """GPT: embedding parameters (Kaplan's exclusion) are the token embedding, the learned
    position table (`max_seq_len` rows) and an untied unembedding."""
    d = cfg.d_model
    embedding = cfg.vocab_size * d
    if cfg.positions == "learned":
        if cfg.max_seq_len is None:
            raise ValueError("model.max_seq_len must be set for learned positions")
        embedding += cfg.max_seq_len * d
    if not cfg.tie_embeddings:
        embedding += d * cfg.vocab_size
    non_embedding = cfg.n_layer * _layer_params(cfg) + 2 * d  # + norm_f
    return {
        "total": embedding + non_embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
    }


def _gpt_flops_per_token(cfg: ModelConfig, seq_len: int, counting: str) -> float:
    n_ne = _gpt_param_counts(cfg)["non_embedding"]
    if counting == "kaplan":
        return 6.0 * n_ne
    if counting == "full":
        d = cfg.d_model
        forward = 2.0 * n_ne + 2.0 * cfg.vocab_size * d + 2.0 * cfg.n_layer * seq_len * d
        return 3.0 * forward
    raise ValueError(f"unknown flop counting {counting!r}; allowed: {', '.join(COUNTINGS)}")


def _mlp_layers(cfg: Any) -> list[tuple[int, int, bool]]:
    """(fan_in, fan_out, followed_by_norm) of each dense layer of the MLP, head last."""
    g = 2 if cfg.activation == "swiglu" else 1  # swiglu: gate and value projections
    n_out = 1 if cfg.n_classes == 2 else cfg.n_classes  # binary: one sigmoid logit
    fan_ins = [cfg.image_size**2 * cfg.in_channels] + [cfg.width] * (cfg.depth - 1)
    hidden = [(f, g * cfg.width, cfg.batch_norm) for f in fan_ins]
    return [*hidden, (cfg.width, n_out, False)]


def _layer_count(fan_in: int, fan_out: int, norm: bool, taps: int = 1) -> int:
    """Weights, plus a bias, or a norm's scale and shift instead of the bias."""
    return taps * fan_in * fan_out + (2 * fan_out if norm else fan_out)


def _mlp_param_counts(cfg: Any) -> dict[str, int]:
    """MLP: dense layers (biases, or batch-norm scale and shift), no embedding parameters."""
    n = sum(_layer_count(*layer) for layer in _mlp_layers(cfg))
    return {"total": n, "embedding": 0, "non_embedding": n}


def _mlp_flops_per_token(cfg: Any, seq_len: int, counting: str) -> float:
    if counting == "kaplan":
        return 6.0 * _mlp_param_counts(cfg)["non_embedding"]
    return 3.0 * sum(2.0 * f_in * f_out for f_in, f_out, _ in _mlp_layers(cfg))


def _resnet_convs(cfg: Any) -> list[tuple[int, int, int]]:
    """(C_in, C_out, side) of each 3x3 convolution of the ResNet, in order."""
    g = 2 if cfg.activation == "swiglu" else 1  # swiglu: gate and value channels
    convs = []
    c_prev = cfg.in_channels
    for s in range(cfg.stages):
        c, side = cfg.width * 2**s, cfg.image_size >> s
        convs.append((c_prev, g * c, side))  # stem, or the stage transition after its pool
        for _ in range(cfg.depth):
            convs += [(c, g * c, side), (c, c, side)]
        c_prev = c
    return convs


def _resnet_param_counts(cfg: Any) -> dict[str, int]:
    """ResNet: 3x3 convolutions (a bias, or batch-norm scale and shift) and a dense head."""
    c_last = cfg.width * 2 ** (cfg.stages - 1)
    n_out = 1 if cfg.n_classes == 2 else cfg.n_classes
    n = sum(_layer_count(c_in, c_out, cfg.batch_norm, 9) for c_in, c_out, _ in _resnet_convs(cfg))
    n += _layer_count(c_last, n_out, False)
    return {"total": n, "embedding": 0, "non_embedding": n}


def _resnet_flops_per_token(cfg: Any, seq_len: int, counting: str) -> float:
    c_last = cfg.width * 2 ** (cfg.stages - 1)
    n_out = 1 if cfg.n_classes == 2 else cfg.n_classes
    forward = sum(2.0 * 9 * c_in * c_out * side**2 for c_in, c_out, side in _resnet_convs(cfg))
    return 3.0 * (forward + 2.0 * c_last * n_out)


def _bert_param_counts(cfg: Any) -> dict[str, int]:
    """BERT: the GPT's blocks; embedding parameters are the token table with its [MASK] row,
    the learned position table and an untied head (data vocabulary only)."""
    d, v = cfg.d_model, cfg.vocab_size
    embedding = (v + 1) * d
    if cfg.positions == "learned":
        if cfg.max_seq_len is None:
            raise ValueError("model.max_seq_len must be set for learned positions")
        embedding += cfg.max_seq_len * d
    if not cfg.tie_embeddings:
        embedding += d * v
    non_embedding = cfg.n_layer * _layer_params(cfg) + 2 * d  # + norm_f
    return {
        "total": embedding + non_embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
    }


def _bert_flops_per_token(cfg: Any, seq_len: int, counting: str) -> float:
    n_ne = _bert_param_counts(cfg)["non_embedding"]
    if counting == "kaplan":
        return 6.0 * n_ne
    d = cfg.d_model
    forward = 2.0 * n_ne + 2.0 * cfg.vocab_size * d + 4.0 * cfg.n_layer * seq_len * d
    return 3.0 * forward


def _t5_split(cfg: Any) -> tuple[int, int]:
    """(N_enc, N_dec): non-embedding parameters run per encoder token and per decoder token."""
    # The T5 helpers are imported lazily: importing them loads flax, which `sweep plan`
    # and config-only users of this module do not need.
    from scalinglab.models.t5 import n_decoder_layer

    d = cfg.d_model
    cross_kv = 2 * d * d + 2 * d  # per decoder layer, applied to the encoder states
    cross_q_proj = 2 * (d * d + d)
    dec_layer = _layer_params(cfg) + 2 * d + cross_kv + cross_q_proj  # + norm_3, cross_attn
    n_dec = n_decoder_layer(cfg)
    n_enc_tok = cfg.n_layer * _layer_params(cfg) + 2 * d + n_dec * cross_kv  # + norm_f
    n_dec_tok = n_dec * (dec_layer - cross_kv) + 2 * d  # + norm_f
    return n_enc_tok, n_dec_tok


def _t5_param_counts(cfg: Any) -> dict[str, int]:
    """T5: encoder and decoder stacks; embedding parameters are the token table (data,
    sentinels, start id), an untied head (data and sentinels), and the position tables
    (learned: two `max_seq_len` tables; relative: two bucket x head bias tables)."""
    from scalinglab.models.t5 import NUM_BUCKETS, t5_vocab

    d, vocab = cfg.d_model, t5_vocab(cfg)
    embedding = vocab.embed_rows * d
    if not cfg.tie_embeddings:
        embedding += d * vocab.out_size
    if cfg.positions == "learned":
        embedding += 2 * cfg.max_seq_len * d
    else:
        embedding += 2 * NUM_BUCKETS * cfg.n_head
    non_embedding = sum(_t5_split(cfg))
    return {
        "total": embedding + non_embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
    }


def _t5_flops_per_token(cfg: Any, seq_len: int, counting: str) -> float:
    from scalinglab.models.t5 import n_decoder_layer, span_layout, t5_vocab

    layout = span_layout(seq_len, cfg.noise_density, cfg.mean_span_length)
    te, td = layout.enc_len, layout.dec_len
    n_enc, n_dec = _t5_split(cfg)
    if counting == "kaplan":
        return 6.0 * (n_enc * te + n_dec * td) / seq_len
    d, l_dec = cfg.d_model, n_decoder_layer(cfg)
    enc = 2.0 * n_enc + 4.0 * cfg.n_layer * te * d
    dec = 2.0 * n_dec + 2.0 * l_dec * td * d + 4.0 * l_dec * te * d
    dec += 2.0 * t5_vocab(cfg).out_size * d
    return 3.0 * (te * enc + td * dec) / seq_len


# Per-family counters (STYLE.md #8): each family adds its pair here.
PARAM_COUNTS: dict[str, Callable[[Any], dict[str, int]]] = {
    "gpt": _gpt_param_counts,
    "bert": _bert_param_counts,
    "t5": _t5_param_counts,
    "mlp": _mlp_param_counts,
    "resnet": _resnet_param_counts,
}
FLOPS_PER_TOKEN: dict[str, Callable[[Any, int, str], float]] = {
    "gpt": _gpt_flops_per_token,
    "bert": _bert_flops_per_token,
    "t5": _t5_flops_per_token,
    "mlp": _mlp_flops_per_token,
    "resnet": _resnet_flops_per_token,
}


def _family(table: dict[str, Any], cfg: Any) -> Any:
    fn = table.get(cfg.family)
    if fn is None:
        raise ValueError(f"model.family: no counts for {cfg.family!r}; allowed: {', '.join(table)}")
    return fn


def param_counts(cfg: Any) -> dict[str, int]:
    """Total, embedding and non-embedding parameters of the model `cfg` describes (equal to
    `scalinglab.models.count_params` of the initialised model)."""
    return _family(PARAM_COUNTS, cfg)(cfg)


def flops_per_token(cfg: Any, seq_len: int, counting: str = "kaplan") -> float:
    """Training FLOPs (forward + backward) per unit of D: per token for sequence models, per
    example for image classifiers. See the module docstring for the formulas."""
    if counting not in COUNTINGS:
        raise ValueError(f"unknown flop counting {counting!r}; allowed: {', '.join(COUNTINGS)}")
    return _family(FLOPS_PER_TOKEN, cfg)(cfg, seq_len, counting)


def tokens_for_flops(
    flops: float, cfg: ModelConfig, seq_len: int, counting: str = "kaplan"
) -> float:
    """Training tokens D that spend `flops` on this model: D = C / flops_per_token."""
    return flops / flops_per_token(cfg, seq_len, counting)


def flops_for_tokens(
    tokens: float, cfg: ModelConfig, seq_len: int, counting: str = "kaplan"
) -> float:
    """Training FLOPs C spent on `tokens` tokens: C = D * flops_per_token."""
    return tokens * flops_per_token(cfg, seq_len, counting)


def model_flops_per_step(cfg: ModelConfig, seq_len: int, batch_size: int) -> float:
    """Model FLOPs of one training step, the numerator of MFU (always the "full" count)."""
    return flops_per_token(cfg, seq_len, "full") * seq_len * batch_size
