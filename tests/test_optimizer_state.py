"""Optimiser state memory measured from the trainer's state pytree, against hand counts.

One GPT (1 layer, d_model 128, d_ff 512, 8 positions, vocab 256, tied head), shapes only
(`jax.eval_shape`): Adafactor keeps a row and a column vector for a matrix whose two largest
dimensions are both at least 128 (optax's `min_dim_size_to_factor`), and the full second
moment for anything smaller, with a one-element placeholder for the moments it does not keep.
"""

from __future__ import annotations

import math

import pytest

from scalinglab.config import trial_from_dict
from scalinglab.experiments.optimizer_state import memory_table, param_kind, state_memory
from scalinglab.families.gpt import param_counts

MODEL = {"family": "gpt", "n_layer": 1, "d_model": 128, "n_head": 1}
DATA = {"source": "synthetic", "seq_len": 8}
F32 = 4
# Every parameter of MODEL: name -> shape (the GPT's parameter paths, see models/gpt.py).
SHAPES = {
    "token_embed/embedding": (256, 128),
    "pos_embed/embedding": (8, 128),
    "block_0/attn/qkv/kernel": (128, 384),
    "block_0/attn/qkv/bias": (384,),
    "block_0/attn/proj/kernel": (128, 128),
    "block_0/attn/proj/bias": (128,),
    "block_0/mlp/up/kernel": (128, 512),
    "block_0/mlp/up/bias": (512,),
    "block_0/mlp/down/kernel": (512, 128),
    "block_0/mlp/down/bias": (128,),
    "block_0/norm_1/scale": (128,),
    "block_0/norm_1/bias": (128,),
    "block_0/norm_2/scale": (128,),
    "block_0/norm_2/bias": (128,),
    "norm_f/scale": (128,),
    "norm_f/bias": (128,),
}
COUNT = 4  # the int32 step count Adam and Adafactor keep (not shaped like a parameter)


def _adafactor_floats(shape: tuple[int, ...]) -> int:
    """Hand count: (rows + columns) of a factored matrix plus the 1-element placeholder of the
    full moment, else the full moment plus two 1-element placeholders (row and column)."""
    if len(shape) == 2 and min(shape) >= 128:
        return shape[0] + shape[1] + 1
    return math.prod(shape) + 2


def _memory(name: str) -> dict:
    cfg = trial_from_dict({"model": MODEL, "data": DATA, "optimizer": {"name": name}})
    return state_memory(cfg)


def test_parameters_are_the_hand_listed_ones() -> None:
    mem = _memory("sgd")
    assert {leaf["name"]: tuple(leaf["shape"]) for leaf in mem["leaves"]} == SHAPES
    n = sum(math.prod(s) for s in SHAPES.values())
    cfg = trial_from_dict({"model": MODEL, "data": DATA})
    assert mem["n_params"] == n == param_counts(cfg.model)["total"]
    assert mem["param_bytes"] == F32 * n


@pytest.mark.parametrize(
    ("name", "moments", "per_param", "shared"),
    [("sgd", 0, 0, 0), ("momentum", 1, F32, 0), ("adam", 2, 2 * F32, COUNT)],
)
def test_sgd_momentum_adam_keep_zero_one_two_moments(
    name: str, moments: int, per_param: int, shared: int
) -> None:
    mem = _memory(name)
    n = sum(math.prod(s) for s in SHAPES.values())
    assert mem["moments"] == moments and mem["shared_bytes"] == shared
    assert mem["state_bytes"] == per_param * n + shared
    for leaf in mem["leaves"]:
        assert leaf["state_bytes"] == per_param * leaf["params"] and not leaf["factored"]


def test_adafactor_factors_matrices_at_least_128_wide() -> None:
    mem = _memory("adafactor")
    leaves = {leaf["name"]: leaf for leaf in mem["leaves"]}
    # The hand counts of three leaves: a factored matrix, an unfactored embedding (8 rows is
    # under 128) and a vector.
    assert leaves["block_0/mlp/up/kernel"]["state_bytes"] == F32 * (128 + 512 + 1)
    assert leaves["block_0/mlp/up/kernel"]["factored"]
    assert leaves["pos_embed/embedding"]["state_bytes"] == F32 * (8 * 128 + 2)
    assert not leaves["pos_embed/embedding"]["factored"]
    assert leaves["norm_f/scale"]["state_bytes"] == F32 * (128 + 2)
    for name, shape in SHAPES.items():
        assert leaves[name]["state_bytes"] == F32 * _adafactor_floats(shape), name
    total = F32 * sum(_adafactor_floats(s) for s in SHAPES.values()) + COUNT
    assert mem["moments"] == 3 and mem["shared_bytes"] == COUNT
    assert mem["state_bytes"] == total
    assert mem["bytes_per_param"] == pytest.approx(total / mem["n_params"])
    # Factored: the four block matrices and the token embedding; what is left (vectors, the
    # position table) keeps a full moment: about 4 bytes per parameter.
    factored = [n for n, s in SHAPES.items() if len(s) == 2 and min(s) >= 128]
    assert mem["factored"]["params"] == sum(math.prod(SHAPES[n]) for n in factored)
    assert mem["factored"]["bytes_per_param"] < 0.05
    assert mem["unfactored"]["bytes_per_param"] == pytest.approx(4.0, abs=0.05)
    assert mem["by_kind"]["matrix"]["factored_params"] == 128 * (384 + 128 + 512 + 512)
    assert mem["by_kind"]["embedding"]["factored_params"] == 256 * 128


def test_kinds_and_memory_table_merge_models_and_presets() -> None:
    assert param_kind("token_embed/embedding", (256, 128)) == "embedding"
    assert param_kind("block_0/mlp/up/kernel", (128, 512)) == "matrix"
    assert param_kind("norm_f/bias", (128,)) == "vector"
    base = {"model": MODEL, "data": DATA, "optimizer": {"lr": 0.1}}
    table = memory_table(base, {"d128": {}, "nano": {"size": "nano"}}, ["sgd", "momentum"])
    assert table["momentum"]["d128"]["bytes_per_param"] == F32
    assert "leaves" not in table["momentum"]["d128"]
    # nano: 2 layers of width 64 (the preset's dimensions over MODEL's)
    assert table["sgd"]["nano"]["n_params"] > table["sgd"]["d128"]["n_params"] / 4
    assert table["sgd"]["nano"]["n_params"] != table["sgd"]["d128"]["n_params"]
    assert table["sgd"]["nano"]["state_bytes"] == 0
