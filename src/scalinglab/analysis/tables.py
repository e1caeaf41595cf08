"""Loading a SOURCE for analysis: a CSV/Parquet table or a sweep run directory.

The result always has columns ``N`` (parameters), ``D`` (tokens), ``loss``
(nats per token) and ``C`` (FLOPs; ``6 N D`` when the source has none), every
value finite and positive. Anything else is a ``FitInputError`` with a one-line
message naming the file and the problem, raised before anything is written.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalinglab.errors import FitInputError

REQUIRED = ("N", "D", "loss")


@dataclass
class Source:
    """A validated table of runs, and learning curves when the source has them."""

    runs: pd.DataFrame
    curves: pd.DataFrame | None
    name: str
    compute_from: str  # "column" or "6ND"


def parse_columns(spec: str | None) -> dict[str, str]:
    """``"N=params,D=tokens,loss=val_loss"`` -> {"N": "params", ...} (our name -> theirs)."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value or key not in (*REQUIRED, "C"):
            raise FitInputError(
                f"bad --columns entry {part!r}; expected NAME=COLUMN with NAME one of N, D, loss, C"
            )
        out[key] = value
    return out


def load_source(source: str | Path, columns: str | dict[str, str] | None = None) -> Source:
    """Read and validate ``source``; ``columns`` maps N/D/loss/C onto other column names."""
    path = Path(source)
    mapping = parse_columns(columns) if isinstance(columns, str) or columns is None else columns
    if path.is_dir():
        runs, curves = _load_run_dir(path)
    elif not path.exists():
        raise FitInputError(f"{path}: no such file or directory")
    else:
        runs, curves = _read_table(path), None
    runs = standardise(runs, mapping, str(path))
    if curves is not None:
        try:
            curves = standardise(curves, mapping, f"{path} (learning curves)", strict=False)
        except FitInputError:
            curves = None  # curves only refine approach 1 and the plots; runs suffice
    return Source(runs, curves, path.name, runs.attrs["compute_from"])


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one line
        raise FitInputError(f"{path}: cannot read table ({type(e).__name__}: {e})") from e
    raise FitInputError(f"{path}: unknown table format {suffix!r}; use .csv or .parquet")


def _load_run_dir(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if importlib.util.find_spec("scalinglab.sweep.store") is None:
        raise FitInputError(f"{path}: run-directory sources need the sweep runner")
    store = importlib.import_module("scalinglab.sweep.store")
    runs = store.load_runs(path)
    if "status" in runs:
        runs = runs[runs["status"] == "done"]
    curves = None
    if hasattr(store, "load_curves"):
        curves = store.load_curves(path)
        if "status" in curves:
            curves = curves[curves["status"] == "done"]
    return runs.reset_index(drop=True), curves


def standardise(
    df: pd.DataFrame, mapping: dict[str, str], where: str, strict: bool = True
) -> pd.DataFrame:
    """Rename mapped columns, fill C, and check every value; ``strict=False`` drops bad rows."""
    df = df.copy()
    alias = {
        "loss": ("loss", "final_eval_loss", "eval_loss"),
        "D": ("D", "tokens"),
        "C": ("C", "flops"),
    }
    for key in (*REQUIRED, "C"):
        col = mapping.get(key)
        if col is None:
            col = next((c for c in alias.get(key, (key,)) if c in df.columns), None)
        elif col not in df.columns:
            raise FitInputError(f"{where}: --columns maps {key} to {col!r}, which is not a column")
        if col is None:
            if key == "C":
                continue
            have = ", ".join(map(str, df.columns)) or "none"
            raise FitInputError(
                f"{where}: missing column {key!r} (have: {have}); map one with --columns {key}=..."
            )
        df[key] = pd.to_numeric(df[col], errors="coerce")
    compute_from = "column" if "C" in df.columns else "6ND"
    if compute_from == "6ND":
        df["C"] = 6.0 * df["N"] * df["D"]
    cols = ["N", "D", "loss", "C"]
    bad = ~(np.isfinite(df[cols].to_numpy(float)) & (df[cols].to_numpy(float) > 0))
    if bad.any() and strict:
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        rows = np.flatnonzero(bad[:, j])
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise FitInputError(
            f"{where}: column {cols[j]!r} has {len(rows)} non-positive or non-finite"
            f" value(s) (rows {shown})"
        )
    df = df[~bad.any(axis=1)].reset_index(drop=True)
    if df.empty:
        raise FitInputError(f"{where}: no rows to analyse")
    df.attrs["compute_from"] = compute_from
    return df
