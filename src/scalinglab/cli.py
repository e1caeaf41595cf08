"""The `scalinglab` command: parses arguments and calls the library; it decides nothing."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from scalinglab.analysis.cli import fit_cmd, plot_cmd
from scalinglab.errors import ScalinglabError
from scalinglab.report.cli import report_cmd

err = Console(stderr=True)

# Errors that are the user's input, printed as one line without a traceback. ScalinglabError
# is the project's own; ValueError and OSError also cover what libraries raise on bad files.
USER_ERRORS: tuple[type[Exception], ...] = (ScalinglabError, ValueError, OSError)


def fail(e: Exception) -> None:
    """Print a user error as one line and exit with code 2."""
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


class _Commands(TyperGroup):
    """The command group: the one place where a user error becomes one line and exit code 2,
    for every command and sub-command."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            fail(e)


def _root() -> None:
    """Train trials and sweeps, fit scaling laws, plot and report them."""


class _TrainProgress:
    """Rich progress bar: a tracker of run_trial (`scalinglab.train.trackers.Tracker`)."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
        )
        self.task: Any = None

    def start(self, step: int, info: dict[str, Any]) -> None:
        self.task = self.bar.add_task("train", total=info["total_steps"], completed=step, info="")
        err.print(
            f"params: total {info['total']:,}  non-embedding {info['non_embedding']:,}  "
            f"embedding {info['embedding']:,}"
        )

    def log(self, step: int, ev: dict[str, Any]) -> None:
        if "diverged" in ev:
            return
        parts = []
        if "train_loss" in ev:
            parts.append(f"loss {ev['train_loss']:.3f}")
        if "eval_loss" in ev:
            parts.append(f"eval {ev['eval_loss']:.3f}")
        if "tokens_per_s" in ev:
            parts.append(f"{ev['tokens_per_s']:,.0f} tok/s")
        self.bar.update(self.task, completed=step, info="  ".join(parts))

    def finish(self) -> None:
        pass


def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Argument(help="Trial YAML; omitted: the shipped default config.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = Path(
        "runs/default"
    ),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: dotted.key=value (repeatable)."),
    ] = None,
) -> None:
    """Train one trial; re-running on the same --out resumes from the latest checkpoint."""
    from scalinglab.config import load_trial
    from scalinglab.hostmem import restart_with_choice, trial_temp_bytes
    from scalinglab.train import TrialInterrupted, run_trial

    cfg = load_trial(config, set_ or [])
    # At the process entry point a trial with large step buffers restarts this process with
    # glibc's retain settings (scalinglab.hostmem), before anything trains.
    entry = (ctx.obj or {}).get("process_entry")
    if entry and restart_with_choice(trial_temp_bytes(cfg)) == "retain":
        err.print("host memory: retained (one glibc heap; SCALINGLAB_HOST_MEMORY=system)")
    err.print(optimizer_line(cfg.optimizer), highlight=False)
    bar = _TrainProgress()
    try:
        with bar.bar:
            summary = run_trial(cfg, out, progress=bar)
    except TrialInterrupted as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while shutting down
        err.print(f"[yellow]{e}[/]; re-run the same command to resume")
        raise typer.Exit(130) from None
    loss = summary.get("final_eval_loss")
    err.print(
        f"[bold]{summary['status']}[/]: {summary['steps']} steps, D={summary['D']:.3g} tokens, "
        f"C={summary['C']:.3g} FLOPs, eval loss "
        + (f"{loss:.4f}" if loss is not None else "n/a")
        + (f"  ({summary['diverged']})" if summary.get("diverged") else "")
        + f"\nrun directory: {out}"
    )


def optimizer_line(o: Any) -> str:
    """The optimiser in one line, weight decay included, so a decay that is on is seen."""
    if o.weight_decay == 0:
        decay = "no weight decay"
    elif o.name in ("adamw", "adafactor"):
        decay = f"weight decay {o.weight_decay:g} (decoupled)"
    else:
        decay = f"weight decay {o.weight_decay:g} (L2 added to the gradient)"
    return f"optimizer: {o.name}, lr {o.lr:g}, {decay}"


ANALYSIS_COMMANDS = ("fit", "plot", "report")


def build_app(full: bool = True) -> typer.Typer:
    """The command group; ``full=False`` holds only the analysis commands (fit, plot, report), so
    they start without importing the training stack (Flax, optax, the sweep runner)."""
    app = typer.Typer(
        cls=_Commands,
        help="Neural scaling-law experiments in JAX.",
        no_args_is_help=True,
        add_completion=False,
    )
    app.callback()(_root)
    if full:
        from scalinglab.data.cli import data_app
        from scalinglab.experiments.cli import experiment_app
        from scalinglab.models.cli import generate_cmd
        from scalinglab.sweep.cli import sweep_app

        app.add_typer(sweep_app, name="sweep")
        app.add_typer(data_app, name="data")
        app.add_typer(experiment_app, name="experiment")
        app.command()(train)
    app.command("fit")(fit_cmd)
    app.command("plot")(plot_cmd)
    app.command("report")(report_cmd)
    if full:
        app.command("generate")(generate_cmd)
    return app


@functools.cache
def _full_app() -> typer.Typer:
    return build_app(full=True)


def __getattr__(name: str) -> Any:
    if name == "app":  # `from scalinglab.cli import app`: every command
        return _full_app()
    raise AttributeError(f"module 'scalinglab.cli' has no attribute {name!r}")


def main() -> None:
    """The `scalinglab` console script: the process entry point (it may apply the host-memory
    choice by restarting the process; in-process callers of `app` never restart)."""
    argv = sys.argv[1:]
    light = bool(argv) and argv[0] in ANALYSIS_COMMANDS
    (build_app(full=False) if light else _full_app())(obj={"process_entry": True})


if __name__ == "__main__":
    main()
