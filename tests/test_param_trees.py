"""Parameter paths and shapes of GPT, BERT and T5, pinned before the models were reshaped
around one attention module (tests/data/param_trees.json, written by the earlier code): a
checkpoint written before must still restore into today's models."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from scalinglab.config import BertConfig, ModelConfig, T5Config
from scalinglab.models import build_model

PINNED = json.loads((Path(__file__).parent / "data" / "param_trees.json").read_text())
BASE = dict(n_layer=2, d_model=32, n_head=4, vocab_size=64, max_seq_len=8)
T5_BASE = dict(BASE, n_decoder_layer=2)
UNTIED_SWIGLU = dict(tie_embeddings=False, activation="swiglu")
CONFIGS = {
    "gpt-learned-tied": ModelConfig(**BASE),
    "gpt-rotary-untied-swiglu": ModelConfig(**BASE, positions="rotary", **UNTIED_SWIGLU),
    "bert-learned-tied": BertConfig(**BASE),
    "bert-rotary-untied-swiglu": BertConfig(**BASE, positions="rotary", **UNTIED_SWIGLU),
    "t5-relative-tied": T5Config(**T5_BASE),
    "t5-learned-untied": T5Config(**T5_BASE, positions="learned", tie_embeddings=False),
}


def param_tree(cfg: ModelConfig) -> dict[str, list[int]]:
    """'/'-joined parameter path -> shape, from an abstract (shape-only) init."""
    args = [jnp.zeros((2, 8), jnp.int32)]
    if cfg.family == "t5":
        args = [jnp.zeros((2, 7), jnp.int32), jnp.zeros((2, 5), jnp.int32)]
    params = jax.eval_shape(build_model(cfg).init, jax.random.key(0), *args)["params"]
    return {
        "/".join(str(k.key) for k in path): list(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_tree_is_unchanged(name: str) -> None:
    assert param_tree(CONFIGS[name]) == PINNED[name]
