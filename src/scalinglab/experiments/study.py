"""The study format: `experiments/<name>/study.yaml`, its sweeps and their smoke settings.

A study is a folder holding `study.yaml` (the question, the full run's time on 2 CPU cores,
the figure its analysis writes, and its sweep files, each with a `smoke` setting), the sweep
YAMLs, `analysis.py` (`analyse(sweeps, out) -> findings`) and `README.md`. The `smoke` setting
is a small sweep written over the full one: its `base` entries are dotted overrides of the
sweep's base trial (as `--set` gives them), and a `grid`, `zip`, `isoflop` or `executor` it
names replaces the sweep's own (`isoflop: null` removes it). Studies live in a source
checkout's `experiments/` folder, found by `experiments_dir`.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scalinglab.errors import ConfigError
from scalinglab.yamlio import load_yaml, set_dotted

STUDY_FILE = "study.yaml"
ANALYSIS_FILE = "analysis.py"
ENV_VAR = "SCALINGLAB_EXPERIMENTS"  # a folder of studies, when neither --dir nor ./experiments
REPLACED = ("grid", "zip", "isoflop", "executor")  # smoke keys that replace the sweep's own


class _Strict(BaseModel):
    """Unknown keys are errors, so a misspelt field is reported, not ignored."""

    model_config = ConfigDict(extra="forbid")


class SmokeSpec(_Strict):
    """The smallest setting of one sweep: base overrides and replaced sweep sections."""

    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] | None = None
    zip: list[dict[str, list[Any]]] | None = None
    isoflop: dict[str, Any] | None = None
    executor: dict[str, Any] | None = None


class SweepEntry(_Strict):
    """One sweep of a study: its YAML (relative to the study folder) and its smoke setting."""

    file: str = Field(min_length=1)
    smoke: SmokeSpec


class StudyFile(_Strict):
    """`study.yaml`: what the study asks, how long its full run takes, what it runs."""

    question: str = Field(min_length=1)
    runtime_s: float = Field(gt=0)  # a full run on 2 CPU cores (measured; the README says how)
    figure: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # the main figure, FIGURE.png in --out
    sweeps: list[SweepEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Study:
    """A study found on disk: its name (the folder's), folder and validated `study.yaml`."""

    name: str
    path: Path
    spec: StudyFile

    @property
    def question(self) -> str:
        return self.spec.question

    def sweep_files(self) -> list[Path]:
        """The study's sweep YAMLs, in `study.yaml` order."""
        return [self.path / s.file for s in self.spec.sweeps]


def _package_checkout() -> Path:
    """`experiments/` of the source checkout this package runs from (src/scalinglab/...)."""
    return Path(__file__).resolve().parents[3] / "experiments"


def experiments_dir(explicit: str | Path | None = None) -> Path:
    """The folder of studies: `--dir`, else `./experiments`, else `$SCALINGLAB_EXPERIMENTS`,
    else the `experiments/` of the source checkout the package is installed from."""
    if explicit is not None:
        root = Path(explicit)
        if not root.is_dir():
            raise ConfigError(f"--dir {root}: no such directory")
        return root
    env = os.environ.get(ENV_VAR, "").strip()
    candidates = [Path("experiments"), *([Path(env)] if env else []), _package_checkout()]
    for root in candidates:
        if root.is_dir() and any((p / STUDY_FILE).is_file() for p in root.iterdir()):
            return root
    raise ConfigError(
        "no experiments/ folder found: studies ship with a source checkout of scalinglab; "
        "run from its root or pass --dir PATH"
    )


def _format(err: ValidationError, path: Path, lines: dict[tuple[str, ...], int]) -> str:
    """`file:line: field: message` per problem (the line of the nearest key that has one); a
    misspelt field is one line (its unknown key, naming the missing field it resembles)."""
    errors = [(tuple(str(p) for p in e["loc"]), e) for e in err.errors()]
    missing = [loc for loc, e in errors if e["type"] == "missing"]
    meant: dict[tuple[str, ...], str] = {}  # unknown key -> the missing sibling it resembles
    for loc, e in errors:
        if e["type"] == "extra_forbidden":
            siblings = [m[-1] for m in missing if m[:-1] == loc[:-1]]
            near = difflib.get_close_matches(loc[-1], siblings, n=1)
            if near:
                meant[loc] = near[0]
    explained = {(*loc[:-1], name) for loc, name in meant.items()}
    out = []
    for loc, e in errors:
        if loc in explained and e["type"] == "missing":
            continue  # said with the misspelt key
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = {1: StudyFile, 3: SweepEntry, 4: SmokeSpec}.get(len(loc), StudyFile)
            hint = f" (did you mean {meant[loc]!r}?)" if loc in meant else ""
            msg = f"unknown field{hint}; allowed: {', '.join(parent.model_fields)}"
        line = next((lines[loc[:k]] for k in range(len(loc), 0, -1) if loc[:k] in lines), None)
        where = f"{path}:{line}" if line else str(path)
        out.append(f"{where}: {'.'.join(loc) or '<root>'}: {msg}")
    return "\n".join(out)


def load_study(folder: str | Path) -> Study:
    """Read and validate `folder/study.yaml`; errors name the file, line and field."""
    folder = Path(folder)
    path = folder / STUDY_FILE
    data, lines = load_yaml(path)
    try:
        spec = StudyFile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, path, lines)) from None
    for i, entry in enumerate(spec.sweeps):
        if not (folder / entry.file).is_file():
            line = lines.get(("sweeps", str(i), "file"))
            where = f"{path}:{line}" if line else str(path)
            raise ConfigError(f"{where}: sweeps.{i}.file: {entry.file!r} not found in {folder}")
    return Study(folder.name, folder, spec)


def find_studies(root: str | Path) -> list[Study]:
    """Every study (a subfolder with `study.yaml`) of `root`, sorted by name."""
    root = Path(root)
    return [load_study(p) for p in sorted(root.iterdir()) if (p / STUDY_FILE).is_file()]


def find_study(root: str | Path, name: str) -> Study:
    """The study `name` of `root`; an unknown name is one line listing the known ones."""
    root = Path(root)
    known = sorted(p.name for p in root.iterdir() if (p / STUDY_FILE).is_file())
    if name not in known:
        raise ConfigError(
            f"unknown experiment {name!r}; known: {', '.join(known) or 'none'} (in {root})"
        )
    return load_study(root / name)


def smoke_sweep(data: dict[str, Any], smoke: SmokeSpec, source: str) -> dict[str, Any]:
    """The sweep mapping `data` with the smoke setting applied (see the module docstring)."""
    out = copy.deepcopy(data)
    base = out.setdefault("base", {})
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: base: must be a mapping")
    for key, value in smoke.base.items():
        try:
            set_dotted(base, key, copy.deepcopy(value))
        except ConfigError as e:  # "--set KEY: why"; here the override is the smoke's
            why = str(e).split(": ", 1)[-1]
            raise ConfigError(f"{source}: smoke.base.{key}: {why}") from None
    for key in REPLACED:
        if key in smoke.model_fields_set:
            value = getattr(smoke, key)
            if value is None:
                out.pop(key, None)
            else:
                out[key] = copy.deepcopy(value)
    return out
