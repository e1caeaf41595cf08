"""Results of a sweep directory as DataFrames, read from the run directories themselves.

The trial directories (config.yaml, status.json, summary.json, metrics.jsonl) are the source of
truth; `results.parquet` is a cache rebuilt from them (`write_results`), never read back here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from scalinglab import runfiles as rf
from scalinglab.config import TrialConfig, parse_model_config
from scalinglab.errors import RunDirError
from scalinglab.flops import param_counts
from scalinglab.rundir import FINISHED, RunDir
from scalinglab.sweep.expand import Trial, legacy_trial_id, trial_id
from scalinglab.sweep.locks import holder

RESULTS = "results.parquet"
SWEEP_COPY = "sweep.yaml"
SUMMARY_COLUMNS = (
    "N",
    "N_nonembed",
    "D",
    "C",
    "final_eval_loss",
    "best_eval_loss",
    "final_train_loss",
    "steps",
    "planned_steps",
    "wall_s",
    "flop_counting",
    "diverged",
)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted.key: value}; lists become tuples (hashable, parquet-friendly)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def trial_dirs(sweep_dir: str | Path) -> list[Path]:
    """Trial directories of a sweep directory (those holding a config.yaml), sorted by id."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such sweep directory")
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / rf.CONFIG).is_file())


def trial_dir(sweep_dir: str | Path, trial: Trial, adopt: bool = True) -> Path:
    """Where `trial` lives in `sweep_dir`: `<trial_id>/`, or the directory an earlier id scheme
    named for the same trial (`legacy_trial_id`). With `adopt`, such a directory that no live
    process holds is renamed to the current id (atomic; a concurrent runner's rename wins), so
    a sweep run before the id change resumes and skips its trials instead of retraining them."""
    root = Path(sweep_dir)
    current = root / trial.trial_id
    legacy = root / legacy_trial_id(trial.config)
    if current.exists() or legacy == current or not (legacy / rf.CONFIG).is_file():
        return current
    if not adopt or holder(legacy) is not None:
        return legacy
    try:
        os.rename(legacy, current)
    except OSError:  # renamed by another runner meanwhile, or not renamable: use what is there
        return current if current.exists() else legacy
    return current


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((run_dir / rf.CONFIG).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise RunDirError(f"{run_dir / rf.CONFIG}: not valid YAML ({problem})") from None
    if data is not None and not isinstance(data, dict):
        raise RunDirError(f"{run_dir / rf.CONFIG}: not a mapping")
    return data or {}


def _row(run_dir: Path) -> dict[str, Any]:
    """One trial's row; a trial whose files cannot be read is a row with status "corrupt"
    and the reason, so one damaged directory never hides the others."""
    try:
        cfg = _config(run_dir)
        rd = RunDir(run_dir)
        status, summary = rd.status_record(), rd.summary()
    except RunDirError as e:
        return {"trial_id": run_dir.name, "status": "corrupt", "error": str(e), "attempts": 0}
    row: dict[str, Any] = {
        "trial_id": run_dir.name,
        "status": summary["status"] if summary else status.get("status", "pending"),
        "error": status.get("error"),
        "attempts": status.get("attempts", 0),
    }
    if summary:
        row.update({k: summary.get(k) for k in SUMMARY_COLUMNS})
        # Every other final eval metric the task reported (eval_accuracy for classifiers, ...).
        row.update({k: v for k, v in summary.items() if k.startswith("final_eval_")})
        row[_BATCHES] = summary.get("eval_loss_batches") or None
    else:  # not trained yet: what the config alone tells
        try:
            counts = param_counts(parse_model_config(cfg.get("model", {})))
            row.update(N=counts["total"], N_nonembed=counts["non_embedding"])
        except (ValueError, TypeError):
            pass
        row["steps"] = status.get("step")
    row["_identity"] = _identity(row, cfg)
    row["loss"] = row.get("final_eval_loss")
    row["isoflop_C"] = ((cfg.get("train") or {}).get("budget") or {}).get("flops")
    row.update(flatten(cfg))
    return row


_BATCHES = "eval_loss_batches"
_SHARED_EVAL = ("train.batch_size", "train.eval_tokens")


def paired_eval_noise(rows: list[dict[str, Any]]) -> None:
    """Add ``final_eval_loss_se_paired`` to each row (and drop its per-batch losses).

    Runs with the same data and evaluation settings are scored on the same validation
    batches, so what varies between them is not which text was drawn but how each model
    does on it. The noise that matters when runs are compared is therefore the standard
    error of a run's per-batch losses minus the batch-wise mean over its group, much
    smaller than ``final_eval_loss_se`` (the spread of text difficulty between batches).
    Groups of one run get NaN.
    """

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        shared = sorted((k, str(v)) for k, v in row.items() if k.startswith("data."))
        return (len(row[_BATCHES]), *shared, *(str(row.get(k)) for k in _SHARED_EVAL))

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        batches = row.get(_BATCHES)
        row["final_eval_loss_se_paired"] = float("nan")
        if batches and len(batches) >= 2 and np.all(np.isfinite(batches)):
            groups.setdefault(key(row), []).append(row)
    for members in groups.values():
        k = len(members)
        if k < 2:
            continue
        B = np.array([m[_BATCHES] for m in members], dtype=float)
        dev = (B - B.mean(axis=0)) * np.sqrt(k / (k - 1))  # undo the shrinkage of a shared mean
        se = dev.std(axis=1, ddof=1) / np.sqrt(B.shape[1])
        for m, v in zip(members, se, strict=True):
            m["final_eval_loss_se_paired"] = float(v)
    for row in rows:
        row.pop(_BATCHES, None)


_RANK = {s: 3 for s in FINISHED} | {"running": 2, "interrupted": 2, "pending": 1, "failed": 1}


def _identity(row: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The current id of the trial a directory's config describes (its name if unparseable)."""
    try:
        return trial_id(TrialConfig.model_validate(cfg))
    except (ValueError, TypeError):
        return str(row["trial_id"])


def one_row_per_trial(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Keep one row per trial when two directories hold the same trial (named by two id
    schemes, or copied): the furthest along (finished, then running or interrupted, then the
    rest; more steps; the one named by the current id). Returns the rows kept and a note per
    directory left out, so a fit never counts a run twice."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.pop("_identity", row["trial_id"]), []).append(row)
    kept, dropped = [], []
    for ident, members in groups.items():
        members.sort(
            key=lambda r: (
                _RANK.get(r["status"], 0),
                r.get("steps") or 0,
                r["trial_id"] == ident,
            ),
            reverse=True,
        )
        kept.append(members[0])
        dropped += [f"{m['trial_id']} (= {members[0]['trial_id']})" for m in members[1:]]
    if not dropped:
        return kept, []
    more = ", ..." if len(dropped) > 3 else ""
    return kept, [
        f"{len(dropped)} trial directories repeat a trial another directory holds and were "
        f"left out: {', '.join(dropped[:3])}{more}"
    ]


def load_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per trial: trial_id, status, error, attempts, N, N_nonembed, D, C,
    final/best eval loss, steps, wall_s, `loss` (= final_eval_loss, what the fits read),
    `isoflop_C` (the nominal budget; C is what the whole steps actually spent) and every config
    field as a dotted column (model.d_model, seed, ...). Unfinished trials have NaN results.
    A trial held by two directories is one row (`one_row_per_trial`); `attrs["notes"]` says
    which directories were left out."""
    rows, notes = one_row_per_trial([_row(d) for d in trial_dirs(sweep_dir)])
    paired_eval_noise(rows)
    df = pd.DataFrame(rows)
    df.attrs["notes"] = notes
    if df.empty:
        df = pd.DataFrame(columns=["trial_id", "status", "N", "N_nonembed", "D", "C", "loss"])
    for col in ("N", "N_nonembed", "D", "C", "loss", "final_eval_loss", "best_eval_loss"):
        if col not in df:
            df[col] = float("nan")
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def load_curves(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per eval point of every trial: trial_id, step, tokens, flops, eval_loss,
    train_loss, lr, wall_s, ..., plus D (= tokens), C (= flops), loss (= eval_loss), the trial's
    status, N, N_nonembed, isoflop_C and its model.*, data.*, train.* and seed columns."""
    runs = load_runs(sweep_dir)
    keep = [c for c in runs.columns if c in ("status", "N", "N_nonembed", "isoflop_C", "seed")]
    keep += [c for c in runs.columns if c.split(".")[0] in ("model", "data", "train", "optimizer")]
    info = runs.set_index("trial_id")[keep] if not runs.empty else None
    frames = []
    listed = set(runs["trial_id"])
    for run_dir in trial_dirs(sweep_dir):
        if run_dir.name not in listed:  # a second directory of a trial load_runs kept once
            continue
        points = [r for r in rf.read_jsonl(run_dir / rf.METRICS) if r.get("eval_loss") is not None]
        if not points:
            continue
        df = pd.DataFrame(points)
        df.insert(0, "trial_id", run_dir.name)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["trial_id", "step", "tokens", "flops", "eval_loss", "loss"])
    curves = pd.concat(frames, ignore_index=True)
    curves["D"], curves["C"], curves["loss"] = (
        curves["tokens"],
        curves["flops"],
        curves["eval_loss"],
    )
    if info is not None:
        curves = curves.join(info, on="trial_id")
    return curves


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns of mixed types (None / str / tuple) as strings, so pyarrow accepts them."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            kinds = {type(v) for v in out[col] if v is not None and v == v}
            if len(kinds) > 1 or kinds & {tuple, dict}:
                out[col] = out[col].map(lambda v: None if v is None else str(v))
    return out


def write_results(sweep_dir: str | Path) -> Path:
    """Rebuild `DIR/results.parquet` from the trial directories (atomically) and return it."""
    root = Path(sweep_dir)
    df = _parquet_safe(load_runs(root))
    path = root / RESULTS
    try:
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{RESULTS}.", suffix=".tmp")
        os.close(fd)
        try:
            df.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise rf.RunDirError(f"{path}: cannot write ({e.strerror or e})") from None
    return path
