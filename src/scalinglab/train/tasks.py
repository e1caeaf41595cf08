"""Training objectives, by family: `build_task(cfg, model)` and the task classes.

Each family owns its objective (`scalinglab.families.<name>`); this module dispatches through
the registry and re-exports the task classes under their historical import path. The task
protocol is described in `scalinglab.families.common`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalinglab.families import get_family
from scalinglab.families.bert import MaskedLM, mlm_mask
from scalinglab.families.classification import Classification
from scalinglab.families.common import EVAL_MASK_KEY, Metrics, split_variables
from scalinglab.families.gpt import NextToken
from scalinglab.families.regression import Regression
from scalinglab.families.t5 import SpanCorruption

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import TrialConfig


def build_task(cfg: TrialConfig, model: nn.Module) -> Any:
    """The objective of `cfg.model.family` (its `Family.build_task`)."""
    return get_family(cfg.model).build_task(cfg, model)


__all__ = [
    "EVAL_MASK_KEY",
    "Classification",
    "MaskedLM",
    "Metrics",
    "NextToken",
    "Regression",
    "SpanCorruption",
    "build_task",
    "mlm_mask",
    "split_variables",
]
