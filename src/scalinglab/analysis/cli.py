"""The ``fit`` and ``plot`` commands; ``scalinglab.cli`` registers them.

They parse arguments, call ``analysis.study`` and print or write; a bad input raises, and the
command group prints it as one ``error:`` line with exit status 2 and no file written. Both
turn on the persistent compilation cache of ``analysis.cache`` first, so a second call loads
the fit's compiled programs instead of compiling them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

SOURCE_HELP = "CSV/Parquet table (columns N, D, loss, optional C) or a sweep run directory"
LAW_HELP = "chinchilla | kaplan | power (loss vs C) | overtraining | data_constrained"
COLUMNS_HELP = "map other column names, e.g. N=params,D=tokens,loss=val_loss"
CACHE_HELP = (
    "JAX compilation cache for the fit programs, 'off' to disable"
    " [default: $SCALINGLAB_FIT_CACHE, else $XDG_CACHE_HOME/scalinglab/jax or"
    " ~/.cache/scalinglab/jax]"
)
CacheDir = Annotated[str | None, typer.Option("--cache-dir", help=CACHE_HELP, show_default=False)]
# The study options `fit` and `report` share (same names, help and defaults at each use).
Source = Annotated[Path, typer.Argument(help=SOURCE_HELP, show_default=False)]
Law = Annotated[str, typer.Option(help=LAW_HELP)]
Approaches = Annotated[str, typer.Option(help="compute-optimal approaches, e.g. 1,2,3")]
Bootstrap = Annotated[int, typer.Option(min=0, help="bootstrap resamples for intervals")]
Columns = Annotated[str | None, typer.Option(help=COLUMNS_HELP)]
Compute = Annotated[str | None, typer.Option(help="budgets to predict at, FLOPs, e.g. 1e21,1e23")]
Seed = Annotated[int, typer.Option(help="bootstrap seed")]
Starts = Annotated[
    int | None, typer.Option(help="thin the L-BFGS start grid to about this many starts")
]


def fit_cmd(
    source: Source,
    law: Law = "chinchilla",
    approach: Approaches = "1,2,3",
    bootstrap: Bootstrap = 200,
    columns: Columns = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
    compute: Compute = None,
    seed: Seed = 0,
    starts: Starts = None,
    cache_dir: CacheDir = None,
) -> None:
    """Fit a scaling law with bootstrap intervals and compare compute-optimal approaches."""
    from scalinglab.analysis.cache import fit_cache
    from scalinglab.analysis.study import parse_approaches, parse_compute, run_study

    targets, chosen = parse_compute(compute), parse_approaches(approach)
    if json_file is not None:
        check_writable(json_file, "--json")
    with fit_cache(cache_dir):  # the report's predictions are jitted programs too
        study = run_study(
            source,
            law=law,
            approaches=chosen,
            bootstrap=bootstrap,
            columns=columns,
            targets=targets,
            seed=seed,
            n_starts=starts,
        )
        typer.echo(study.format())
        if json_file is not None:
            json_file.parent.mkdir(parents=True, exist_ok=True)
            json_file.write_text(json.dumps(study.to_dict(), indent=2, default=float) + "\n")
            typer.echo(f"wrote {json_file}")


def check_writable(path: Path, flag: str) -> None:
    """Refuse, before any fitting, an output path that cannot be written (one line)."""
    from scalinglab.errors import FitInputError

    if path.is_dir():
        raise FitInputError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise FitInputError(
            f"{flag} {path}: cannot write there ({parent} is not a writable folder)"
        )


def plot_cmd(
    source: Annotated[Path, typer.Argument(help=SOURCE_HELP, show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option(help="folder for PNG and SVG figures [default: SOURCE/plots or TABLE_plots]"),
    ] = None,
    law: Annotated[str, typer.Option(help=LAW_HELP)] = "chinchilla",
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for bands")] = 200,
    columns: Annotated[str | None, typer.Option(help=COLUMNS_HELP)] = None,
    starts: Annotated[
        int | None, typer.Option(help="thin the L-BFGS start grid to about this many starts")
    ] = None,
    cache_dir: CacheDir = None,
) -> None:
    """Plot loss vs compute, IsoFLOP profiles, N_opt/D_opt vs C and observed vs predicted."""
    from scalinglab.analysis.cache import fit_cache
    from scalinglab.analysis.study import run_study

    with fit_cache(cache_dir):
        study = run_study(source, law=law, bootstrap=bootstrap, columns=columns, n_starts=starts)
        from scalinglab.analysis.plots import plot_all  # matplotlib only once the fit succeeded

        src = study.source
        if out is None:
            out = source / "plots" if source.is_dir() else source.with_name(f"{source.stem}_plots")
        paths = plot_all(src.runs, out, study.fit, study.approaches, curves=src.curves)
    for p in paths:
        typer.echo(f"wrote {p}")
