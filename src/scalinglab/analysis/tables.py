"""Loading a SOURCE for analysis: a CSV/Parquet table or a sweep run directory.

The result always has columns ``N`` (parameters), ``D`` (tokens), ``loss``
(nats per token) and ``C`` (FLOPs; ``6 N D`` when the source has none), every
value finite and positive.

``N`` is the parameter count that ``C`` counts: runs trained under
``flop_counting: kaplan`` spend C = 6 N_nonembed D, so their ``N`` is ``N_nonembed``
(the total stays in ``N_total``); under ``full`` counting, or for tables without that
information, ``N`` is the given count. ``--columns N=...`` overrides the choice. The
FLOPs per parameter-token ``k = C / (N D)`` follow from the table (``flops_per_param_token``).
The choice is recorded in ``Source.n_column`` and ``Source.counting``.

Anything else is a ``FitInputError`` with a one-line message naming the file and the
problem, raised before anything is written.
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
    n_column: str = "N"  # the column N was taken from (N_nonembed under Kaplan counting)
    counting: str = "unknown"  # flop counting of the runs: kaplan, full, mixed or unknown


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
        if curves is not None and "trial_id" in curves and "trial_id" in runs:
            curves = curves[curves["trial_id"].isin(runs["trial_id"])]  # duplicates dropped
    return Source(
        runs,
        curves,
        path.name,
        runs.attrs["compute_from"],
        runs.attrs["n_column"],
        runs.attrs["counting"],
    )


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
    notes = list(runs.attrs.get("notes", []))  # e.g. a trial held by two directories
    runs = _with_data_info(path, runs)
    if "status" in runs:
        done = runs["status"] == "done"
        if not done.any():
            counts = runs["status"].value_counts()
            said = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials"
            raise FitInputError(f"{path}: no finished trials to fit ({said})")
        left = runs.loc[~done, "status"].value_counts()
        if len(left):
            said = ", ".join(f"{n} {s}" for s, n in left.items())
            notes.append(f"{int((~done).sum())} of {len(runs)} trials not fitted ({said})")
            bad = runs.loc[runs["status"] == "corrupt", "error"]
            notes += [str(e) for e in bad.head(3)]
        runs = runs[done]
        runs.attrs["notes"] = notes
    curves = None
    if hasattr(store, "load_curves"):
        curves = store.load_curves(path)
        if "status" in curves:
            curves = curves[curves["status"] == "done"]
    return runs.reset_index(drop=True), curves


def _with_data_info(path: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Add what each trial's summary.json says about its data: the entropy rate and the loss
    floor of a synthetic language, and the unique training tokens (for epochs)."""
    from scalinglab import runfiles as rf

    keys = {
        "entropy_rate": "entropy_rate_nats",
        "loss_floor": "loss_floor_nats",
        "unique_tokens": "n_train_tokens",
    }
    rows = []
    for tid in runs.get("trial_id", pd.Series(dtype=str)):
        try:
            summary = rf.read_json(path / str(tid) / rf.SUMMARY) if tid else None
        except OSError:  # a corrupt or unreadable trial: load_runs marked it, not "done"
            summary = None
        data = (summary or {}).get("data") or {}
        rows.append({col: data.get(key) for col, key in keys.items()})
    extra = pd.DataFrame(rows, index=runs.index, columns=list(keys))
    for col in keys:
        if col not in runs:
            runs[col] = pd.to_numeric(extra[col], errors="coerce")
    return runs


def counting_of(df: pd.DataFrame) -> str:
    """The runs' flop counting (kaplan, full, mixed) from their summary or config columns."""
    for col in ("flop_counting", "train.flop_counting"):
        if col in df.columns:
            kinds = {str(v) for v in df[col].dropna()}
            if kinds:
                return kinds.pop() if len(kinds) == 1 else "mixed"
    return "unknown"


def counted_n(df: pd.DataFrame, mapping: dict[str, str]) -> tuple[str, str]:
    """(column to take N from, counting): ``N_nonembed`` when C counts only those."""
    counting = counting_of(df)
    if "N" in mapping:
        return mapping["N"], counting
    if counting == "kaplan" and "N_nonembed" in df.columns:
        ne = pd.to_numeric(df["N_nonembed"], errors="coerce")
        if bool((ne > 0).all()):
            return "N_nonembed", counting
    return "N", counting


def flops_per_param_token(df: pd.DataFrame) -> dict[str, float]:
    """``k = C / (N D)`` of every row: median, min and max (6 under Kaplan counting)."""
    k = (df["C"] / (df["N"] * df["D"])).to_numpy(float)
    k = k[np.isfinite(k)]
    if k.size == 0:
        return {"k": 6.0, "k_min": 6.0, "k_max": 6.0}
    return {"k": float(np.median(k)), "k_min": float(k.min()), "k_max": float(k.max())}


def standardise(
    df: pd.DataFrame, mapping: dict[str, str], where: str, strict: bool = True
) -> pd.DataFrame:
    """Rename mapped columns, fill C, and check every value; ``strict=False`` drops bad rows."""
    df = df.copy()
    n_column, counting = counted_n(df, mapping)
    if n_column == "N_nonembed":
        df["N_total"] = df["N"]
        mapping = {**mapping, "N": "N_nonembed"}
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
    notes = list(df.attrs.get("notes", []))
    if strict:
        dup = df.duplicated(subset=cols)
        if dup.any():
            notes.append(
                f"{int(dup.sum())} of {len(df)} rows repeat another row exactly (same N, D, C"
                " and loss: one run listed twice) and were dropped, so no run counts twice"
            )
            df = df[~dup].reset_index(drop=True)
    df.attrs.update(compute_from=compute_from, n_column=n_column, counting=counting, notes=notes)
    return df


def law_columns(df: pd.DataFrame, inputs: tuple[str, ...]) -> np.ndarray:
    """The (n, k) input matrix of a law from a runs table, one column per name in ``inputs``.

    ``x`` is compute C (the one-variable laws); ``M`` is tokens per parameter D/N (the
    over-training law); ``U`` is unique training tokens, from ``U`` or ``unique_tokens``
    and D when the runs never repeat data (the data-constrained law). Any other name must
    be a column (user-defined laws).
    """
    cols = []
    for name in inputs:
        if name == "x":
            col = df["C"]
        elif name == "M" and "M" not in df.columns:
            col = df["D"] / df["N"]
        elif name == "U" and "U" not in df.columns:
            col = df["unique_tokens"] if "unique_tokens" in df.columns else df["D"]
            col = np.minimum(pd.to_numeric(col, errors="coerce").fillna(df["D"]), df["D"])
        elif name in df.columns:
            col = df[name]
        else:
            have = ", ".join(map(str, df.columns))
            raise FitInputError(f"the law needs a column {name!r} (have: {have})")
        cols.append(pd.to_numeric(col, errors="coerce").to_numpy(float))
    return np.stack(cols, axis=1)
