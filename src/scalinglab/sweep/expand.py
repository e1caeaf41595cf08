"""Expansion: a SweepConfig becomes a list of fully resolved, validated trials with stable ids.

Order (fixed, so tables and ids are reproducible): IsoFLOP budgets outermost, then the grid's
cartesian product in the YAML's key order (last key fastest), then zip groups (each group's
lists advance together; several groups multiply).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from scalinglab.config import ConfigError, TrialConfig, format_validation_error
from scalinglab.identity import identity_dump, results_dump, without_added_fields
from scalinglab.sweep.config import SweepConfig, dotted_name

BUDGET_KEY = "train.budget.flops"  # the swept key an IsoFLOP budget sets


@dataclass(frozen=True)
class Trial:
    """One resolved trial of a sweep: its id, config and the values the sweep set."""

    trial_id: str
    config: TrialConfig
    swept: dict[str, Any]  # dotted key -> value, in sweep order (budgets as train.budget.flops)


def _digest(tree: dict[str, Any]) -> str:
    canon = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def trial_id(cfg: TrialConfig) -> str:
    """12 hex digits of sha256 over the canonical JSON (sorted keys) of `identity_dump(cfg)`.

    Any change of a field that can change results changes the id; an unchanged trial keeps its
    id across runs, Python versions and sweeps, so an edited sweep re-trains only what is new.
    Fields that cannot change the losses are left out: the trackers (where metrics go), the
    log/eval/checkpoint cadence, and fields added to the schema later while at their neutral
    value (`identity.ADDED_FIELDS`).
    """
    return _digest(identity_dump(cfg))


def legacy_trial_id(cfg: TrialConfig) -> str:
    """The id the first scheme gave `cfg` (the whole resolved config but the trackers, and the
    fields added since at their neutral value), so a sweep directory written before the cadence
    fields left the id is recognised, not retrained."""
    return _digest(without_added_fields(results_dump(cfg)))


def _combos(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every assignment of swept keys to values (grid x zip groups x budgets)."""
    axes: list[list[dict[str, Any]]] = []
    if sweep.isoflop is not None:
        axes.append([{BUDGET_KEY: c} for c in sweep.isoflop.flops])
    keys = list(sweep.grid)
    axes.append(
        [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*sweep.grid.values())]
    )
    for group in sweep.zip:
        n = len(next(iter(group.values())))
        axes.append([{k: v[i] for k, v in group.items()} for i in range(n)])
    return [{k: v for part in parts for k, v in part.items()} for parts in itertools.product(*axes)]


def _swept_lines(
    sweep: SweepConfig, lines: dict[tuple[str, ...], int]
) -> dict[str, tuple[str, int | None]]:
    """For each swept key: its name in the sweep file and the line that sets it."""
    out: dict[str, tuple[str, int | None]] = {}
    for key in sweep.grid:
        out[key] = (f"grid.{key}", lines.get(("grid", key)))
    for i, group in enumerate(sweep.zip):
        for key in group:
            out[key] = (f"zip[{i}].{key}", lines.get(("zip", str(i), key)))
    if sweep.isoflop is not None:
        out[BUDGET_KEY] = ("isoflop.flops", lines.get(("isoflop", "flops")))
    return out


def _check_keys(sweep: SweepConfig, source: str, where: dict[str, tuple[str, int | None]]) -> None:
    for key, (name, line) in where.items():
        loc = f"{source}:{line}" if line else source
        if not dotted_name(key):
            raise ConfigError(f"{loc}: {name}: not a dotted config path (e.g. model.d_model)")
    groups = [list(sweep.grid)] + [list(g) for g in sweep.zip]
    all_keys = [k for g in groups for k in g]
    for k in all_keys:
        if len([x for x in all_keys if x == k]) > 1:
            name, line = where[k]
            raise ConfigError(f"{source}:{line}: {name}: swept twice (in grid and a zip group)")
        if sweep.isoflop is not None and (k == "train.budget" or k.startswith("train.budget.")):
            name, line = where[k]
            raise ConfigError(
                f"{source}:{line}: {name}: isoflop sets train.budget; do not sweep it as well"
            )


def _apply(base: dict[str, Any], assignment: dict[str, Any], names: dict[str, Any]) -> dict:
    data = copy.deepcopy(base)
    for key, value in assignment.items():
        if key == BUDGET_KEY:
            data.setdefault("train", {})
            if not isinstance(data["train"], dict):
                raise ConfigError("base.train: must be a mapping")
            data["train"]["budget"] = {"flops": value}
            continue
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                name, line = names[key]
                raise ConfigError(f"{line}: {name}: {p!r} is not a mapping in the trial config")
            node = nxt
        node[parts[-1]] = copy.deepcopy(value)
    return data


def expand(
    sweep: SweepConfig, source: str = "<sweep>", lines: dict[tuple[str, ...], int] | None = None
) -> list[Trial]:
    """All trials of `sweep`, validated; duplicates (same resolved config) appear once.

    Raises ConfigError naming the file, the line (of the grid/zip/base entry that produced the
    bad value), the field and the allowed values.
    """
    lines = lines or {}
    where = _swept_lines(sweep, lines)
    _check_keys(sweep, source, where)
    names = {k: (n, f"{source}:{ln}" if ln else source) for k, (n, ln) in where.items()}
    # Trial-error lines: swept keys point at their sweep entry, the rest at `base`.
    trial_lines = {k[1:]: v for k, v in lines.items() if k[:1] == ("base",) and len(k) > 1}
    for key, (_, line) in where.items():
        if line is not None:
            trial_lines[tuple(key.split("."))] = line
    if sweep.isoflop is not None and where[BUDGET_KEY][1] is not None:
        trial_lines[("train", "budget")] = where[BUDGET_KEY][1]

    trials: list[Trial] = []
    errors: list[str] = []
    seen: set[str] = set()
    for assignment in _combos(sweep):
        data = _apply(sweep.base, assignment, names)
        try:
            cfg = TrialConfig.model_validate(data)
        except ValidationError as e:
            for msg in format_validation_error(e, source, trial_lines).splitlines():
                if msg not in errors:
                    errors.append(msg)
            continue
        tid = trial_id(cfg)
        if tid not in seen:
            seen.add(tid)
            trials.append(Trial(tid, cfg, dict(assignment)))
    if errors:
        raise ConfigError("\n".join(errors))
    return trials
