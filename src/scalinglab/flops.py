"""Analytic parameter and FLOP counts from a model config alone (no initialisation).

Used for sweep planning (IsoFLOP budgets), run summaries and MFU. Each family owns its
formulas (`param_counts` and `flops_per_token` of its module in `scalinglab.families`, whose
docstring states them); these functions dispatch on `cfg.family` through the registry.
`param_counts` equals `scalinglab.models.count_params` of an initialised model; tests hold
the two together for every family.

FLOPs are per unit of D (per token for sequence models, per example for image classifiers)
and count a training step (forward + backward = 3 x forward) under one of two conventions:

- ``kaplan``: ``6 * N_ne`` with N_ne the non-embedding parameters (Kaplan et al. 2020, C = 6
  N D), or what that means for the family (T5 charges each stack per token it runs on; a
  ResNet counts its convolutions' spatial reuse).
- ``full``: every matmul of the forward pass, attention and the unembedding included, x 3.
  MFU uses ``full``.
"""

from __future__ import annotations

from typing import Literal

from scalinglab.families import get_family
from scalinglab.families.base import FamilyConfig

Counting = Literal["kaplan", "full"]
COUNTINGS: tuple[str, ...] = ("kaplan", "full")


def param_counts(cfg: FamilyConfig) -> dict[str, int]:
    """Total, embedding and non-embedding parameters of the model `cfg` describes (equal to
    `scalinglab.models.count_params` of the initialised model)."""
    return get_family(cfg).param_counts(cfg)


def flops_per_token(cfg: FamilyConfig, seq_len: int, counting: str = "kaplan") -> float:
    """Training FLOPs (forward + backward) per unit of D: per token for sequence models, per
    example for image classifiers (see the family's module for the formulas)."""
    if counting not in COUNTINGS:
        raise ValueError(f"unknown flop counting {counting!r}; allowed: {', '.join(COUNTINGS)}")
    return get_family(cfg).flops_per_token(cfg, seq_len, counting)


def tokens_for_flops(
    flops: float, cfg: FamilyConfig, seq_len: int, counting: str = "kaplan"
) -> float:
    """Training tokens D that spend `flops` on this model: D = C / flops_per_token."""
    return flops / flops_per_token(cfg, seq_len, counting)


def flops_for_tokens(
    tokens: float, cfg: FamilyConfig, seq_len: int, counting: str = "kaplan"
) -> float:
    """Training FLOPs C spent on `tokens` tokens: C = D * flops_per_token."""
    return tokens * flops_per_token(cfg, seq_len, counting)


def model_flops_per_step(cfg: FamilyConfig, seq_len: int, batch_size: int) -> float:
    """Model FLOPs of one training step, the numerator of MFU (always the "full" count)."""
    return flops_per_token(cfg, seq_len, "full") * seq_len * batch_size
