"""Mutation testing: plant small plausible bugs in the numerical core, the resume path and
sweep expansion, one at a time, and count how many the tests catch.

Each mutant is one AST edit of one module (an arithmetic or comparison operator swapped, a
boolean operator flipped, a numeric constant changed, a negation dropped, True/False
swapped), written into a private copy of ``src/`` that the test run imports first
(``PYTHONPATH``); the working tree is never touched. A mutant is *killed* when the module's
tests fail (or time out), *survived* when they pass. Modules have hundreds of mutation sites
and each test run starts JAX, so by default a seeded random sample per module is run and the
score is reported with a 95% Wilson interval; ``--sample 0`` runs them all.

    python benchmarks/mutation.py                         # every target, 30 mutants each
    python benchmarks/mutation.py --target flops --sample 0 --json mutation.json

(mutmut 3.8 was tried first: its test-mapping phase found no test for any mutant under this
src layout with an editable install, so it could not score anything here.)
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (relative to src/scalinglab) -> the tests that cover it
TARGETS: dict[str, tuple[str, list[str]]] = {
    "flops": ("flops.py", ["tests/test_flops.py", "tests/test_budget_rundir.py"]),
    "counts": (
        "families/base.py",
        [
            "tests/test_flops.py",
            "tests/test_config.py",
            "tests/test_hostmem.py",
            "tests/test_images.py",
        ],
    ),
    "optim": ("optim.py", ["tests/test_optim.py"]),
    "laws": ("analysis/laws.py", ["tests/test_laws.py", "tests/test_fit_laws.py"]),
    "intervals": ("analysis/intervals.py", ["tests/test_fit.py"]),
    "approach2": ("analysis/approach2.py", ["tests/test_optimal.py"]),
    "agreement": ("analysis/agreement.py", ["tests/test_optimal.py"]),
    "multistart": ("analysis/multistart.py", ["tests/test_fit.py"]),
    "lbfgs": ("analysis/lbfgs.py", ["tests/test_fit.py"]),
    "profile": (
        "analysis/profile.py",
        ["tests/test_fit_identifiability.py", "tests/test_fit.py"],
    ),
    "optimal": ("analysis/optimal.py", ["tests/test_optimal.py"]),
    "approach": ("analysis/approach.py", ["tests/test_optimal.py"]),
    "akima": ("analysis/akima.py", ["tests/test_optimal.py"]),
    "misfit": ("analysis/misfit.py", ["tests/test_fit_table.py", "tests/test_analysis_cli.py"]),
    "custom": ("analysis/custom.py", ["tests/test_fit_laws.py"]),
    "backtest": ("analysis/backtest.py", ["tests/test_backtest.py"]),
    "diagnostics": (
        "analysis/diagnostics.py",
        ["tests/test_fit.py", "tests/test_fit_identifiability.py", "tests/test_fit_laws.py"],
    ),
    # the attention kernels (what test_attention.py tests) and the Flax attention modules
    "attention": ("models/kernels/attention.py", ["tests/test_attention.py"]),
    "attention_modules": (
        "models/attention.py",
        ["tests/test_bert_t5.py", "tests/test_generate.py", "tests/test_models.py"],
    ),
    "expand": ("sweep/expand.py", ["tests/test_sweep_expand.py", "tests/test_trial_ids.py"]),
    "loop": (  # the train loop's resume path: run directory, resume, fall-back, stops
        "train/loop.py",
        [
            "tests/test_train.py::test_run_directory_contract",
            "tests/test_train.py::test_same_directory_refuses_another_config",
            "tests/test_train.py::test_resume_in_process_equals_uninterrupted",
            "tests/test_train.py::test_corrupt_latest_checkpoint_falls_back",
            "tests/test_train.py::test_divergence_is_recorded",
            "tests/test_train.py::test_early_stopping",
            "tests/test_hooks.py",
        ],
    ),
    "checkpoint": (  # the tests that save, restore, refuse or recover checkpoints
        "train/checkpoint.py",
        [
            "tests/test_train.py::test_resume_in_process_equals_uninterrupted",
            "tests/test_train.py::test_corrupt_latest_checkpoint_falls_back",
            "tests/test_train.py::test_checkpoint_of_another_format_is_reported_not_deleted",
            "tests/test_hooks.py::test_checkpoint_saves_state_and_host_bookkeeping",
            "tests/test_hooks.py::test_checkpoint_refuses_only_when_free_space_is_below_the_estimate",
            "tests/test_sweep_run.py::test_disk_full_fails_the_trial_in_one_line_and_loses_nothing",
        ],
    ),
}

_SWAPS: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.Pow: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.And: ast.Or,
    ast.Or: ast.And,
}


@dataclass
class Mutant:
    """One planted bug: where, what it was and what it became."""

    module: str
    index: int  # the site's number in the module's walk order
    line: int
    before: str
    after: str
    text: str  # the source line
    outcome: str = "not run"  # killed | survived | timeout
    seconds: float = 0.0


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        value = first.value if isinstance(first, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            out.add(id(value))
    return out


def _annotation_ids(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        for ann in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if ann is not None:
                out.update(id(n) for n in ast.walk(ann))
    return out


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str, str]]:
    """Every mutable spot as (node, description before, description after), in walk order."""
    skip = _docstring_ids(tree) | _annotation_ids(tree)
    sites = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp | ast.BoolOp) and type(node.op) in _SWAPS:
            sites.append((node, type(node.op).__name__, _SWAPS[type(node.op)].__name__))
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) in _SWAPS:
                    sites.append((node, type(op).__name__, _SWAPS[type(op)].__name__))
                    break
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            sites.append((node, "-x", "x"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if node.value not in (0, 1) or isinstance(node.value, float):
                sites.append((node, repr(node.value), repr(node.value * 2 + 1)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            sites.append((node, repr(node.value), repr(not node.value)))
    return sites


def mutate(source: str, index: int) -> str:
    """The module's source with site `index` mutated (formatting and comments are lost)."""
    tree = ast.parse(source)
    node, _, _ = _sites(tree)[index]
    if isinstance(node, ast.BinOp | ast.BoolOp):
        node.op = _SWAPS[type(node.op)]()
    elif isinstance(node, ast.Compare):
        i = next(k for k, op in enumerate(node.ops) if type(op) in _SWAPS)
        node.ops[i] = _SWAPS[type(node.ops[i])]()
    elif isinstance(node, ast.UnaryOp):
        _replace(tree, node, node.operand)
    elif isinstance(node.value, bool):
        node.value = not node.value
    else:
        node.value = node.value * 2 + 1
    return ast.unparse(tree)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return


def list_mutants(name: str) -> list[Mutant]:
    rel, _ = TARGETS[name]
    source = (ROOT / "src" / "scalinglab" / rel).read_text()
    lines = source.splitlines()
    out = []
    for i, (node, before, after) in enumerate(_sites(ast.parse(source))):
        line = getattr(node, "lineno", 0)
        out.append(Mutant(name, i, line, before, after, lines[line - 1].strip() if line else ""))
    return out


def _pytest(src_root: Path, tests: list[str], timeout: float) -> tuple[int | None, float]:
    env = {**os.environ, "PYTHONPATH": str(src_root), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [*cmd, *tests], cwd=ROOT, env=env, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0
    return done.returncode, time.perf_counter() - t0


def run_mutant(m: Mutant, workdir: Path, timeout: float) -> Mutant:
    """Plant `m` in a private copy of src/, run its module's tests, record the outcome."""
    rel, tests = TARGETS[m.module]
    src = workdir / "src"
    if not src.exists():
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    target = src / "scalinglab" / rel
    original = (ROOT / "src" / "scalinglab" / rel).read_text()
    target.write_text(mutate(original, m.index))
    try:
        rc, m.seconds = _pytest(src, tests, timeout)
    finally:
        target.write_text(original)
    m.outcome = "timeout" if rc is None else ("survived" if rc == 0 else "killed")
    return m


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="repeatable")
    ap.add_argument("--sample", type=int, default=30, help="mutants per module; 0: all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every mutant and its outcome here")
    ap.add_argument(
        "--survivors",
        type=Path,
        help="a previous --json: run only its survivors again (after new tests were added)",
    )
    ap.add_argument(
        "--outcome",
        default="survived",
        choices=["survived", "timeout"],
        help="with --survivors: which mutants of that run to run again (timeout: those that"
        " ran past the timeout, e.g. because of other load; give a larger --timeout-scale)",
    )
    ap.add_argument(
        "--timeout-scale",
        type=float,
        default=3.0,
        help="a mutant's timeout: this times the unmutated run, plus 30 s",
    )
    args = ap.parse_args()
    again = None
    if args.survivors:
        again = {
            (m["module"], m["index"])
            for m in json.loads(args.survivors.read_text())
            if m["outcome"] == args.outcome
        }

    names = args.target or sorted(TARGETS)
    rng = random.Random(args.seed)
    plan: list[Mutant] = []
    totals: dict[str, int] = {}
    for name in names:
        mutants = list_mutants(name)
        totals[name] = len(mutants)
        if again is not None:
            mutants = [m for m in mutants if (m.module, m.index) in again]
        elif args.sample and len(mutants) > args.sample:
            mutants = sorted(rng.sample(mutants, args.sample), key=lambda m: m.index)
        plan += mutants

    # Each module's unmutated tests must pass; their time sets the timeout (3x + 30 s by
    # default). A timeout counts as a kill (a mutant that loops forever), so under other load
    # re-run the timeouts with --survivors RUN.json --outcome timeout --timeout-scale 8.
    timeouts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rc, seconds = _pytest(ROOT / "src", TARGETS[name][1], timeout=1800)
            if rc != 0:
                sys.exit(f"{name}: its tests fail without any mutant; fix them first")
            timeouts[name] = args.timeout_scale * seconds + 30
        free: queue.Queue[Path] = queue.Queue()  # one private src/ copy per running job
        for i in range(args.jobs):
            free.put(Path(tmp) / f"w{i}")

        def job(m: Mutant) -> Mutant:
            workdir = free.get()
            try:
                return run_mutant(m, workdir, timeouts[m.module])
            finally:
                free.put(workdir)

        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(job, plan))

    print(f"{'module':<12} {'sites':>6} {'run':>5} {'killed':>7} {'score':>7}  95% interval")
    for name in names:
        ms = [m for m in done if m.module == name]
        k = sum(m.outcome != "survived" for m in ms)
        lo, hi = wilson(k, len(ms))
        print(
            f"{name:<12} {totals[name]:>6} {len(ms):>5} {k:>7} {k / max(len(ms), 1):>7.0%}"
            f"  [{lo:.0%}, {hi:.0%}]"
        )
    for m in done:
        if m.outcome == "survived":
            rel = TARGETS[m.module][0]
            print(f"survived: {rel}:{m.line} {m.before} -> {m.after}: {m.text}")
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in done], indent=1))


if __name__ == "__main__":
    main()
