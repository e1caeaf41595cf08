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


# Per-family counters (STYLE.md #8): each family adds its pair here.
PARAM_COUNTS: dict[str, Callable[[Any], dict[str, int]]] = {"gpt": _gpt_param_counts}
FLOPS_PER_TOKEN: dict[str, Callable[[Any, int, str], float]] = {"gpt": _gpt_flops_per_token}


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
