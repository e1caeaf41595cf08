"""Trial ids pinned before the round-2 refactor: moving code must not change what a sweep
directory's ids mean, or every existing sweep would retrain. A change here is a deliberate,
documented change of the id scheme, never a side effect."""

from __future__ import annotations

from typing import Any

import pytest

from scalinglab.config import trial_from_dict
from scalinglab.sweep.expand import trial_id

TEXT: dict[str, Any] = {
    "source": "synthetic",
    "seq_len": 32,
    "synthetic": {"vocab_size": 32, "n_tokens": 60000, "branching": 4},
}
TRAIN: dict[str, Any] = {
    "batch_size": 8,
    "budget": {"steps": 40},
    "eval_every": 10,
    "log_every": 5,
    "eval_tokens": 2048,
    "checkpoint_every": 10,
}
IMAGE_MODEL: dict[str, Any] = {"image_size": 8, "in_channels": 1, "n_classes": 10}

# (config, id computed by the code at commit f290a0a, before any of it moved)
PINNED: dict[str, tuple[dict[str, Any], str]] = {
    "gpt": (
        {
            "seed": 0,
            "model": {"family": "gpt", "n_layer": 1, "d_model": 32, "n_head": 2},
            "data": TEXT,
            "train": TRAIN,
        },
        "2522a6c11359",
    ),
    "gpt_rotary_untied": (
        {
            "seed": 3,
            "model": {
                "family": "gpt",
                "n_layer": 2,
                "d_model": 64,
                "n_head": 4,
                "positions": "rotary",
                "tie_embeddings": False,
                "activation": "swiglu",
            },
            "data": TEXT,
            "optimizer": {"name": "adam", "lr": 1e-3},
            "train": {**TRAIN, "budget": {"flops": 1e11}},
        },
        "85966b4a4aa6",
    ),
    "bert": (
        {
            "seed": 0,
            "model": {"family": "bert", "n_layer": 1, "d_model": 32, "n_head": 2},
            "data": TEXT,
            "train": TRAIN,
        },
        "fbe58906dcf3",
    ),
    "t5": (
        {
            "seed": 0,
            "model": {"family": "t5", "n_layer": 1, "d_model": 32, "n_head": 2},
            "data": TEXT,
            "train": TRAIN,
        },
        "db67ffd88ea7",
    ),
    "mlp": (
        {
            "seed": 0,
            "model": {"family": "mlp", "width": 32, "depth": 2, **IMAGE_MODEL},
            "data": {"source": "digits"},
            "train": {**TRAIN, "budget": {"tokens": 5000}},
        },
        "f6e22d1bdca0",
    ),
    "resnet": (
        {
            "seed": 1,
            "model": {"family": "resnet", **IMAGE_MODEL},
            "data": {"source": "digits"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "train": {**TRAIN, "budget": {"tokens": 5000}},
        },
        "22c32fc2fab0",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_trial_id_is_unchanged_by_refactors(name: str) -> None:
    cfg, expected = PINNED[name]
    assert trial_id(trial_from_dict(cfg)) == expected
