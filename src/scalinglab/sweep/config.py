"""The sweep schema (`SweepConfig`): a base trial, grid/zip over dotted keys, IsoFLOP budgets and
the executor that runs the trials. Validated once at the edge, with located errors.

The base trial stays a plain mapping here: it is validated as a `TrialConfig` after the grid,
zip and budgets are applied (`scalinglab.sweep.expand`), so an error in a swept value points at
the line of the sweep that produced it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scalinglab.config import ConfigError, load_yaml
from scalinglab.families.base import Strict


class _Strict(Strict):
    """Unknown keys, non-finite numbers and booleans given as numbers are errors (as in
    trial configs)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LocalExecutorConfig(_Strict):
    """Worker processes on this machine, each with `threads` XLA threads (default cores/workers)."""

    name: Literal["local"] = "local"
    workers: int = Field(2, ge=1)
    threads: int | None = Field(None, ge=1)


class RayExecutorConfig(_Strict):
    """Trials as Ray tasks; `address` None starts a local Ray runtime."""

    name: Literal["ray"] = "ray"
    address: str | None = None
    num_cpus: float = Field(1.0, gt=0)  # resources each trial requests
    num_gpus: float = Field(0.0, ge=0)
    max_retries: int = Field(2, ge=0)  # re-runs after a worker crash (the trial resumes)


class SlurmExecutorConfig(_Strict):
    """Trials as a SLURM job array through submitit (`cluster: local` runs them as local jobs)."""

    name: Literal["slurm"] = "slurm"
    partition: str | None = None
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int = Field(60, ge=1)
    array_parallelism: int = Field(16, ge=1)
    folder: str | None = None  # submitit logs; default DIR/.submitit
    cluster: Literal["slurm", "local", "debug"] | None = None  # None: SLURM when available
    max_requeues: int = Field(3, ge=0)  # time limits the trial resumes after (preemptions: any)


ExecutorConfig = Annotated[
    LocalExecutorConfig | RayExecutorConfig | SlurmExecutorConfig, Field(discriminator="name")
]
EXECUTORS: tuple[str, ...] = ("local", "ray", "slurm")


class IsoflopConfig(_Strict):
    """Compute budgets: every model size of the sweep is trained at every budget C (FLOPs)."""

    flops: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)


class SweepConfig(_Strict):
    """A sweep: `base` trial, `grid` (cartesian), `zip` groups (advance together), `isoflop`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    zip: list[dict[str, list[Any]]] = []
    isoflop: IsoflopConfig | None = None
    executor: ExecutorConfig = LocalExecutorConfig()

    @field_validator("grid")
    @classmethod
    def _non_empty_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: needs at least one value")
        return grid

    @field_validator("zip")
    @classmethod
    def _equal_lengths(cls, groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for i, group in enumerate(groups):
            lengths = {k: len(v) for k, v in group.items()}
            if not group or len(set(lengths.values())) != 1 or 0 in lengths.values():
                raise ValueError(
                    f"zip group {i}: lists must be non-empty and of equal length (got {lengths})"
                )
        return groups


_EXECUTOR_MODELS: dict[str, type[BaseModel]] = {
    "local": LocalExecutorConfig,
    "ray": RayExecutorConfig,
    "slurm": SlurmExecutorConfig,
}


def _sweep_model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic model at a sweep error's location (discriminator tags included)."""
    model: type[BaseModel] = SweepConfig
    for i, part in enumerate(loc):
        if i == 1 and loc[0] == "executor" and part in _EXECUTOR_MODELS:
            model = _EXECUTOR_MODELS[part]
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        subs = [c for c in getattr(ann, "__args__", (ann,)) if isinstance(c, type)]
        sub = next((c for c in subs if issubclass(c, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return model


def format_sweep_error(err: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> str:
    """`source:line: field: message` per problem, like `scalinglab.config`'s trial errors."""
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        # The discriminator tag is a pydantic artefact, not a YAML key.
        yaml_loc = loc[:1] + loc[2:] if loc[:1] == ("executor",) and len(loc) > 2 else loc
        line = next(
            (lines[yaml_loc[:k]] for k in range(len(yaml_loc), 0, -1) if yaml_loc[:k] in lines),
            None,
        )
        where = f"{source}:{line}" if line else source
        field = ".".join(yaml_loc) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = _sweep_model_at(loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see docs/sweeps.md"
            msg = f"unknown field; allowed: {allowed}"
        elif e["type"] in ("literal_error", "union_tag_invalid"):
            msg = f"not allowed; expected one of {', '.join(EXECUTORS)}"
        elif e["type"] == "string_pattern_mismatch":
            msg = "must be letters, digits, '_', '-' or '.' (it names the run directory)"
        if e["type"] == "value_error":  # our validators' messages say what they got
            out.append(f"{where}: {field}: {msg.removeprefix('Value error, ')}")
            continue
        out.append(f"{where}: {field}: {msg} (got {e.get('input')!r})")
    return "\n".join(out)


def sweep_from_dict(
    data: dict[str, Any], source: str = "<sweep>", lines: dict[tuple[str, ...], int] | None = None
) -> SweepConfig:
    """Validate a mapping into a SweepConfig (the trials themselves are checked by `expand`)."""
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_sweep_error(e, source, lines or {})) from None


def load_sweep_yaml(path: str | Path) -> tuple[SweepConfig, dict[tuple[str, ...], int]]:
    """Read and validate a sweep YAML; returns the config and its line index (for `expand`)."""
    data, lines = load_yaml(path)
    return sweep_from_dict(data, str(path), lines), lines


def dotted_name(key: str) -> bool:
    """Whether `key` looks like a dotted config path (`model.d_model`, `seed`)."""
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key) is not None
