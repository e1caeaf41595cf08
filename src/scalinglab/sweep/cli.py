"""`scalinglab sweep plan | run | status`: parse arguments, call the sweep library, print."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from scalinglab.errors import ConfigError

sweep_app = typer.Typer(
    help="Plan, run and inspect sweeps of trials.", no_args_is_help=True, add_completion=False
)
err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # tables are not cut in logs


def exit_interrupted(e: Exception) -> None:
    """Leave after a Ctrl-C'd sweep with status 130. Further Ctrl-C are ignored from here on:
    one arriving while the process shuts down would otherwise kill it by the signal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    err.print(f"[yellow]{e}[/]; re-run the same command to resume")
    raise typer.Exit(130) from None


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _swept(values: dict[str, Any]) -> str:
    return " ".join(
        f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
        for k, v in values.items()
    )


def _out_dir(out_opt: Path | None, name: str) -> Path:
    return out_opt if out_opt is not None else Path("runs") / name


def _load(sweep_file: Path) -> Any:
    from scalinglab.sweep import load_sweep

    return load_sweep(sweep_file)


OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Sweep directory (default runs/<sweep name>).")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="Local worker processes (overrides YAML).")
]
ExecutorOpt = Annotated[
    str | None, typer.Option("--executor", help="local | ray | slurm (overrides YAML).")
]
RetryFailedOpt = Annotated[bool, typer.Option("--retry-failed", help="Train failed trials again.")]


@sweep_app.command("plan")
def plan_cmd(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    out_dir: OutOpt = None,
    workers: WorkersOpt = None,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Time a few steps to estimate run time.")
    ] = True,
) -> None:
    """Print the trial table (N, D, C, steps, estimated time) and totals; trains nothing."""
    from scalinglab.sweep import plan as planmod
    from scalinglab.sweep.config import LocalExecutorConfig
    from scalinglab.sweep.runner import default_workers

    sweep, trials = _load(sweep_file)
    sweep_dir = _out_dir(out_dir, sweep.name)
    ex = sweep.executor
    k = workers or (ex.workers if isinstance(ex, LocalExecutorConfig) else 1)
    threads = max(1, default_workers() // k)
    step_model = planmod.from_runs(sweep_dir)
    if step_model is None and probe:
        with err.status("probing step time (a few steps of the smallest and largest model)"):
            step_model = planmod.probe(trials, threads)
    rows = planmod.plan(trials, sweep_dir, step_model)

    keys = list(dict.fromkeys(k for r in rows for k in r.trial.swept))
    table = Table(title=f"sweep {sweep.name}: {len(rows)} trials -> {sweep_dir}")
    short = [k.split(".")[-1] for k in keys]
    names = short if len(set(short)) == len(short) else keys
    for col in ["trial", *names, "N", "N_nonembed", "D", "C", "steps", "est", "status"]:
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    for r in rows:
        vals = [
            f"{r.trial.swept[k]:g}"
            if isinstance(r.trial.swept.get(k), float)
            else str(r.trial.swept.get(k, ""))
            for k in keys
        ]
        table.add_row(
            r.trial.trial_id,
            *vals,
            f"{r.N:,}",
            f"{r.N_nonembed:,}",
            f"{r.D:.3g}",
            f"{r.C:.3g}",
            str(r.steps),
            _fmt_s(r.est_s),
            r.status if not r.warnings else f"[yellow]{r.status} (!)[/]",
        )
    out.print(table)
    total_s = sum(r.est_s or 0.0 for r in rows)
    par = k if isinstance(ex, LocalExecutorConfig) else 1
    out.print(
        f"totals: {len(rows)} trials, D={sum(r.D for r in rows):.3g} tokens, "
        f"C={sum(r.C for r in rows):.3g} FLOPs"
        + (
            f", estimated {_fmt_s(total_s)} of worker time, about {_fmt_s(total_s / par)} "
            f"with {par} worker(s) (step times from {step_model.source})"
            if step_model is not None and step_model.source != "none"
            else ""
        )
    )
    for r in rows:
        for w in r.warnings:
            err.print(
                f"[yellow]warning:[/] {r.trial.trial_id} ({_swept(r.trial.swept)}): {w}",
                highlight=False,
                soft_wrap=True,
            )


class SweepProgress:
    """One overall bar (FLOPs done, ETA) and a line per busy worker."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
        )
        self.total: TaskID | None = None
        self.workers: dict[str, TaskID] = {}
        self.finished_work = 0.0
        self.n_done = 0
        self.n_total = 0
        self.trials: dict[str, Any] = {}

    def _desc(self) -> str:
        return f"[bold]sweep[/] {self.n_done}/{self.n_total} trials"

    def __call__(self, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "start":
            self.n_total, self.n_done = ev["total"], ev["done"]
            self.finished_work = ev["work_done"]
            self.total = self.bar.add_task(
                self._desc(), total=max(ev["work_total"], 1.0), completed=self.finished_work
            )
            where = f"{ev['executor']}" + (f", {ev['workers']} workers" if ev["workers"] else "")
            err.print(f"{ev['todo']} of {ev['total']} trials to run ({where})")
        elif kind == "trial":
            o, t = ev["outcome"], ev["trial"]
            self.n_done += 1
            self.finished_work += ev["work"] if o["status"] in ("done", "stopped_early") else 0
            desc = _swept(t.swept) if t is not None else ""
            s = o.get("summary") or {}
            loss = s.get("final_eval_loss")
            mark = {"done": "[green]done[/]", "failed": "[red]failed[/]"}.get(
                o["status"], f"[yellow]{o['status']}[/]"
            )
            msg = f"{mark} {o['trial_id']} {desc}"
            if loss is not None:
                msg += f" eval loss {loss:.4f}"
            if o.get("wall_s") is not None:
                msg += f" ({_fmt_s(o['wall_s'])})"
            if o.get("error") and o["status"] != "done":
                msg += f": {o['error']}"
            self.bar.console.print(msg, highlight=False, soft_wrap=True)
            self.bar.update(self.total, description=self._desc())
        elif kind == "interrupt":
            self.bar.console.print(f"[yellow]{ev['message']}[/]", highlight=False)
        elif kind == "poll":
            running = ev["running"]
            live = self.finished_work + sum(r["flops"] or 0.0 for r in running)
            self.bar.update(self.total, completed=live)
            busy = {r["worker"]: r for r in running}
            for w, task in list(self.workers.items()):
                if w not in busy:
                    self.bar.remove_task(task)
                    del self.workers[w]
            for w, r in busy.items():
                text = f"  {w} {r['trial_id']} step {r['step']}"
                if r.get("train_loss") is not None:
                    text += f" loss {r['train_loss']:.3f}"
                if w not in self.workers:
                    self.workers[w] = self.bar.add_task(text, total=None)
                else:
                    self.bar.update(self.workers[w], description=text)
        elif kind == "warning":
            self.bar.console.print(f"[yellow]warning:[/] {ev['message']}")


@sweep_app.command("run")
def run_cmd(
    sweep_file: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    out_dir: OutOpt = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    retry_failed: RetryFailedOpt = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="JAX compilation cache (default DIR/.jax_cache)."),
    ] = None,
    report: Annotated[
        bool, typer.Option("--report", help="Write DIR/report.html at the end (scalinglab report).")
    ] = False,
) -> None:
    """Train every trial of the sweep; re-running skips done trials and resumes the rest."""
    from scalinglab.sweep import SweepInterrupted, run_sweep
    from scalinglab.sweep.config import EXECUTORS, sweep_from_dict

    sweep, trials = _load(sweep_file)
    if executor is not None and executor != sweep.executor.name:
        if executor not in EXECUTORS:
            raise ConfigError(
                f"--executor: {executor!r} not allowed; expected one of {', '.join(EXECUTORS)}"
            )
        data = sweep.model_dump()
        data["executor"] = {"name": executor}
        sweep = sweep_from_dict(data, str(sweep_file))
    sweep_dir = _out_dir(out_dir, sweep.name)
    bar = SweepProgress()
    try:
        with bar.bar:
            result = run_sweep(
                sweep,
                trials,
                sweep_dir,
                sweep_yaml=sweep_file,
                workers=workers,
                retry_failed=retry_failed,
                cache_dir=cache_dir,
                progress=bar,
            )
    except SweepInterrupted as e:
        exit_interrupted(e)
    counts = {s: result.count(s) for s in ("done", "diverged", "stopped_early", "failed")}
    err.print(
        f"{len(result.outcomes)} trials: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + f"; wall {_fmt_s(result.wall_s)}; compile cache {result.cache_hits} hits, "
        f"{result.cache_misses} new entries\nresults: {sweep_dir / 'results.parquet'}",
        highlight=False,
    )
    if report:  # also after failures: the report shows what finished (one line, no traceback)
        from scalinglab.report.page import sweep_report_line

        err.print(sweep_report_line(sweep_dir), markup=False, highlight=False, soft_wrap=True)
    if counts["failed"]:
        err.print(
            "some trials failed; see `scalinglab sweep status` and re-run with "
            "--retry-failed after fixing the cause"
        )
        raise typer.Exit(1)


@sweep_app.command("status")
def status_cmd(
    sweep_dir: Annotated[Path, typer.Argument(help="Sweep directory.")],
    write_results: Annotated[
        bool, typer.Option("--write-results", help="Rebuild DIR/results.parquet.")
    ] = False,
) -> None:
    """Per-trial status, losses and errors of a sweep directory (running trials by lock)."""
    from scalinglab.rundir import shown_status
    from scalinglab.sweep.locks import holder
    from scalinglab.sweep.store import load_runs
    from scalinglab.sweep.store import write_results as rebuild

    runs = load_runs(sweep_dir)
    table = Table(title=f"{sweep_dir}: {len(runs)} trials")
    for col in ("trial", "status", "N", "D", "C", "loss", "attempts", "note"):
        table.add_column(col, justify="left" if col in ("trial", "status", "note") else "right")
    counts: dict[str, int] = {}
    for _, r in runs.iterrows():
        status = r["status"]
        h = holder(Path(sweep_dir) / r["trial_id"]) if status in ("running", "pending") else None
        status, note = shown_status(status, r.get("error"), h)
        counts[status] = counts.get(status, 0) + 1

        def num(x: Any, fmt: str) -> str:
            return format(x, fmt) if x == x and x is not None else "-"

        table.add_row(
            r["trial_id"],
            status,
            num(r.get("N"), ","),
            num(r.get("D"), ".3g"),
            num(r.get("C"), ".3g"),
            num(r.get("loss"), ".4f"),
            str(r.get("attempts", 0)),
            note[:80],
        )
    out.print(table)
    out.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials")
    if write_results:
        out.print(f"wrote {rebuild(sweep_dir)}")
