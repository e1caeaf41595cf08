"""`scalinglab experiment list | run`: parse arguments, call the experiments library, print."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scalinglab.sweep.cli import (
    ExecutorOpt,
    RetryFailedOpt,
    SweepProgress,
    WorkersOpt,
    exit_interrupted,
)

experiment_app = typer.Typer(
    help="The studies of experiments/: each one command from question to figure.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Folder of studies (default ./experiments, else the source checkout's).",
        show_default=False,
    ),
]


def _minutes(s: float) -> str:
    """`6 min` / `45 s`: a full run's time as `experiment list` shows it."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


@experiment_app.command("list")
def list_cmd(root: DirOpt = None) -> None:
    """Each study's name, full-run time on 2 CPU cores and question."""
    from scalinglab.experiments.study import experiments_dir, find_studies

    studies = find_studies(experiments_dir(root))
    width = max((len(s.name) for s in studies), default=0)
    for s in studies:
        out.print(
            f"{s.name:<{width}}  {_minutes(s.spec.runtime_s):>6}  {s.question}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if not studies:
        out.print("no studies")


@experiment_app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Study name (see `scalinglab experiment list`).")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder (default runs/experiments/NAME[-smoke]).",
            show_default=False,
        ),
    ] = None,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="The smallest setting: a few tiny trials, seconds.")
    ] = False,
    root: DirOpt = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    retry_failed: RetryFailedOpt = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="JAX compilation cache (default OUT/.jax_cache)."),
    ] = None,
) -> None:
    """Run a study's sweeps (resumable), its analysis, and write figures and findings.json."""
    from scalinglab.experiments.runner import (
        FINDINGS,
        default_out,
        load_analysis,
        plan_sweeps,
        run_experiment,
    )
    from scalinglab.experiments.study import experiments_dir, find_study
    from scalinglab.sweep import SweepInterrupted

    study = find_study(experiments_dir(root), name)
    target = out_dir if out_dir is not None else default_out(study, smoke)
    planned = plan_sweeps(study, smoke, executor)  # every input error before anything prints
    load_analysis(study)
    err.print(f"[bold]{study.name}[/]: {study.question}", highlight=False)
    bar = SweepProgress()
    try:
        with bar.bar:
            result = run_experiment(
                study,
                target,
                smoke=smoke,
                workers=workers,
                executor=executor,
                retry_failed=retry_failed,
                cache_dir=cache_dir,
                progress=bar,
                planned=planned,
            )
    except SweepInterrupted as e:
        exit_interrupted(e)
    n = sum(len(r.outcomes) for r in result.sweeps.values())
    failed = result.count("failed")
    err.print(
        f"{n} trials ({result.trained} trained this time, {failed} failed); "
        f"wall {result.wall_s:.0f} s",
        highlight=False,
    )
    if result.findings is None:
        err.print(
            "[red]not analysed:[/] some trials failed; see `scalinglab sweep status "
            f"{target}/<sweep>` and re-run with --retry-failed after fixing the cause",
            highlight=False,
        )
        raise typer.Exit(1)
    answer = result.findings["findings"].get("answer")
    if answer:
        out.print(answer, highlight=False, markup=False, soft_wrap=True)
    out.print(
        f"findings: {target / FINDINGS}\nfigure: {target / result.findings['figure']}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
