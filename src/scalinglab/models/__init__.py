"""The Flax modules of every family, `build_model` (through the family registry) and
parameter counting from a parameter pytree. The module classes are imported on first use,
so importing a submodule (the `generate` command) does not load Flax."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.families.base import FamilyConfig

_CLASSES = {
    "Bert": "scalinglab.models.bert",
    "GPT": "scalinglab.models.gpt",
    "MLP": "scalinglab.models.mlp",
    "ResNet": "scalinglab.models.resnet",
    "T5": "scalinglab.models.t5",
}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'scalinglab.models' has no attribute {name!r}")


def build_model(cfg: FamilyConfig) -> nn.Module:
    """The Flax module of `cfg.family` (its `Family.build_model`); an unknown family is an
    error listing the registered ones."""
    from scalinglab.families import get_family

    return get_family(cfg).build_model(cfg)


def is_embedding_path(path: str) -> bool:
    """Whether a '/'-joined parameter path is an (un)embedding matrix.

    Token and position embeddings (`*embed*`) and an untied output head (`lm_head`) count as
    embedding parameters, so tying or untying the head leaves the non-embedding count unchanged.
    """
    return "embed" in path or path.startswith("lm_head") or "/lm_head" in path


def count_params(params: Any) -> dict[str, int]:
    """Total, embedding and non-embedding parameter counts of a parameter pytree.

    Non-embedding follows Kaplan et al. (2020): every parameter except the token embedding,
    the position embedding and the unembedding (the untied `lm_head`; a tied head shares the
    token embedding). LayerNorm parameters and biases count as non-embedding.
    """
    import jax

    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    counts = {"total": 0, "embedding": 0, "non_embedding": 0}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
        path = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)
        n = int(np.prod(leaf.shape))
        counts["total"] += n
        counts["embedding" if is_embedding_path(path) else "non_embedding"] += n
    return counts


__all__ = ["GPT", "MLP", "Bert", "ResNet", "T5", "build_model", "count_params", "is_embedding_path"]
