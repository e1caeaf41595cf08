"""The ``report`` command; ``scalinglab.cli`` registers it with ``fit`` and ``plot`` (no Flax).

It takes the options of ``scalinglab fit`` (same defaults, so the page shows the numbers
``fit`` prints), writes one HTML file and prints its path; bad input is one ``error:`` line
with exit status 2 and nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scalinglab.analysis.cli import (
    Approaches,
    Bootstrap,
    CacheDir,
    Columns,
    Compute,
    Law,
    Seed,
    Source,
    Starts,
    check_writable,
)

OUT_HELP = "HTML file to write (default: SOURCE/report.html, or TABLE_report.html beside a table)"


def report_cmd(
    source: Source,
    out: Annotated[Path | None, typer.Option(help=OUT_HELP, show_default=False)] = None,
    law: Law = "chinchilla",
    approach: Approaches = "1,2,3",
    bootstrap: Bootstrap = 200,
    columns: Columns = None,
    compute: Compute = None,
    seed: Seed = 0,
    starts: Starts = None,
    cache_dir: CacheDir = None,
) -> None:
    """Write one self-contained HTML report: sweep, trials, fit, approaches, back-test, plots."""
    from scalinglab.analysis.cache import fit_cache
    from scalinglab.analysis.study import parse_approaches, parse_compute

    targets, chosen = parse_compute(compute), parse_approaches(approach)
    if out is None:
        from scalinglab.report.page import default_out

        out = default_out(source)
    check_writable(out, "--out")
    with fit_cache(cache_dir):
        from scalinglab.report.page import write_report

        write_report(
            source,
            out,
            law=law,
            approaches=chosen,
            bootstrap=bootstrap,
            columns=columns,
            targets=targets,
            seed=seed,
            n_starts=starts,
        )
    typer.echo(f"wrote {out}")
