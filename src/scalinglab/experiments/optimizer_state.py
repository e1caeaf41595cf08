"""Optimiser state memory per parameter, measured from the state the trainer builds.

`state_memory(cfg)` builds a trial's model, objective and update rule exactly as the trainer
does (`build_task`, `build_update_rule`, `abstract_state`: `jax.eval_shape`, so nothing is
allocated, however large the model) and counts the bytes of every leaf of the optimiser state.
Each part of the state shaped like the parameter tree (Adam's two moments, the momentum trace,
Adafactor's row, column and full second moments) is matched leaf by leaf to the parameter it
belongs to, so the total splits into what each parameter costs; leaves shaped otherwise (step
counters) are `shared_bytes`. Nothing is assumed about an optimiser: Adafactor's factored
moments are whatever optax's `scale_by_factored_rms` keeps for each parameter's shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from scalinglab.config import TrialConfig, trial_from_dict

KINDS = ("matrix", "embedding", "vector")


def leaf_bytes(leaf: Any) -> int:
    """Bytes of one array or `jax.ShapeDtypeStruct`."""
    return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def _name(path: tuple[Any, ...]) -> str:
    """A parameter's path as `block_0/attn/qkv/kernel`."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_kind(name: str, shape: tuple[int, ...]) -> str:
    """`embedding` (token or position table), `matrix` (any other >= 2-D weight) or `vector`
    (norm scales and biases)."""
    if "embed" in name.lower():
        return "embedding"
    return "matrix" if len(shape) >= 2 else "vector"


def abstract_train_state(cfg: TrialConfig) -> Any:
    """The trial's train state (params and opt_state) as shapes and dtypes, built as the
    trainer builds it and never allocated."""
    from scalinglab.models import build_model
    from scalinglab.optim import build_update_rule
    from scalinglab.train.state import abstract_state
    from scalinglab.train.tasks import build_task

    task = build_task(cfg, build_model(cfg.model))
    return abstract_state(task, build_update_rule(cfg.optimizer))


def _moment_trees(opt_state: Any, params_def: Any) -> tuple[list[Any], list[Any]]:
    """The subtrees of `opt_state` shaped like the parameters, and every other leaf."""

    def like_params(node: Any) -> bool:
        return jax.tree_util.tree_structure(node) == params_def

    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=like_params)
    trees = [n for n in nodes if like_params(n)]
    others = [n for n in nodes if not like_params(n)]
    return trees, others


def _summed(leaves: list[dict[str, Any]]) -> dict[str, Any]:
    """Parameters, state bytes and bytes per parameter (None without parameters) of `leaves`."""
    n, b = sum(m["params"] for m in leaves), sum(m["state_bytes"] for m in leaves)
    return {"params": n, "state_bytes": b, "bytes_per_param": b / n if n else None}


def state_memory(cfg: TrialConfig) -> dict[str, Any]:
    """Optimiser state bytes of `cfg`'s trial, measured from its pytree.

    Returns the parameter count and bytes, the state's bytes and bytes per parameter,
    `moments` (how many parameter-shaped trees the state holds), `shared_bytes` (leaves not
    shaped like the parameters), `by_kind` (matrix / embedding / vector: parameters, state
    bytes, bytes per parameter and how many of them have a factored state, one smaller than
    the parameter itself), `factored` and `unfactored` (parameters, state bytes and bytes per
    parameter of the parameters whose state is, or is not, factored) and `leaves` (per
    parameter: name, shape, kind, state bytes, factored).
    """
    state = abstract_train_state(cfg)
    flat, params_def = jax.tree_util.tree_flatten_with_path(state.params)
    trees, others = _moment_trees(state.opt_state, params_def)
    per_leaf = np.zeros(len(flat), dtype=np.int64)
    for tree in trees:
        per_leaf += np.array([leaf_bytes(x) for x in jax.tree_util.tree_leaves(tree)], np.int64)
    leaves = []
    for (path, p), b in zip(flat, per_leaf, strict=True):
        name, shape = _name(path), tuple(int(s) for s in p.shape)
        leaves.append(
            {
                "name": name,
                "shape": list(shape),
                "kind": param_kind(name, shape),
                "params": int(np.prod(shape, dtype=np.int64)),
                "param_bytes": leaf_bytes(p),
                "state_bytes": int(b),
                "factored": bool(0 < b < leaf_bytes(p)),
            }
        )
    shared = sum(leaf_bytes(x) for x in others)
    n_params = sum(leaf["params"] for leaf in leaves)
    total = int(per_leaf.sum()) + shared
    by_kind = {
        kind: {
            **_summed([leaf for leaf in leaves if leaf["kind"] == kind]),
            "factored_params": sum(
                m["params"] for m in leaves if m["kind"] == kind and m["factored"]
            ),
        }
        for kind in KINDS
        if any(leaf["kind"] == kind for leaf in leaves)
    }
    return {
        "optimizer": cfg.optimizer.name,
        "n_params": n_params,
        "param_bytes": sum(leaf["param_bytes"] for leaf in leaves),
        "state_bytes": total,
        "bytes_per_param": total / n_params,
        "moments": len(trees),
        "shared_bytes": shared,
        "by_kind": by_kind,
        "factored": _summed([leaf for leaf in leaves if leaf["factored"]]),
        "unfactored": _summed([leaf for leaf in leaves if not leaf["factored"]]),
        "leaves": leaves,
    }


def memory_table(
    base: dict[str, Any], models: dict[str, dict[str, Any]], optimizers: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """`{optimizer: {model label: state_memory(...) without its per-leaf list}}` for the
    trial mapping `base` with each model (a `model` mapping, merged over base's) and each
    optimizer (`optimizer.name`; the rest of base's optimizer section kept). A model naming a
    `size` preset takes the preset's dimensions over base's."""
    table: dict[str, dict[str, Any]] = {}
    for opt in optimizers:
        table[opt] = {}
        for label, model in models.items():
            data = {
                **base,
                "model": {**base.get("model", {}), **model},
                "optimizer": {**base.get("optimizer", {}), "name": opt},
            }
            row = state_memory(trial_from_dict(data, f"<{opt}, {label}>"))
            row.pop("leaves")
            table[opt][label] = row
    return table
