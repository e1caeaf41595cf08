"""The training engine end to end: run directory, resume, divergence, early stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_trial
from scalinglab import runfiles as rf
from scalinglab.train import TrialError, plan_steps, run_trial
from scalinglab.train.loop import WALL_CLOCK_FIELDS, build_trainer
from scalinglab.train.state import init_state


def _metrics(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS}
        for r in rf.read_jsonl(run_dir / rf.METRICS)
    ]


def test_run_directory_contract(tmp_path: Path) -> None:
    cfg = tiny_trial(**{"train.checkpoint_every": 15})  # 40 steps: 15, 30, then the final 40
    summary = run_trial(cfg, tmp_path)
    for name in (rf.CONFIG, rf.STATUS, rf.METRICS, rf.SUMMARY, rf.CHECKPOINTS):
        assert (tmp_path / name).exists(), name
    assert rf.read_json(tmp_path / rf.STATUS)["status"] == "done"
    assert summary == rf.read_json(tmp_path / rf.SUMMARY)
    assert summary["steps"] == 40 and summary["D"] == 40 * 8 * 32
    assert summary["C"] == pytest.approx(6 * summary["N_nonembed"] * summary["D"])
    assert summary["best_eval_loss"] <= summary["final_eval_loss"]
    recs = rf.read_jsonl(tmp_path / rf.METRICS)
    assert [r["step"] for r in recs if "eval_loss" in r] == [10, 20, 30, 40]
    assert [r["step"] for r in recs if "train_loss" in r] == [5, 10, 15, 20, 25, 30, 35, 40]
    first, last = recs[0], recs[-1]
    assert last["train_loss"] < first["train_loss"]
    assert {"step", "tokens", "flops", "lr", "wall_s"} <= set(first)
    evals = [r for r in recs if "eval_loss" in r]
    assert all(r["eval_loss_se"] > 0 for r in evals)  # 2048 eval tokens: 8 batches of 8 x 32
    assert summary["final_eval_loss_se"] == evals[-1]["eval_loss_se"]
    assert summary["final_train_loss"] == [r for r in recs if "train_loss" in r][-1]["train_loss"]
    # The finished state is saved even off the checkpoint cadence (two kept: 30 and 40).
    kept = sorted(int(p.name) for p in (tmp_path / rf.CHECKPOINTS).iterdir() if p.name.isdigit())
    assert kept == [30, 40]
    # A finished trial is not trained again.
    assert run_trial(cfg, tmp_path) == summary


def test_same_directory_refuses_another_config(tmp_path: Path) -> None:
    run_trial(tiny_trial(), tmp_path)
    with pytest.raises(TrialError, match="different trial"):
        run_trial(tiny_trial(seed=1), tmp_path)


def test_resume_in_process_equals_uninterrupted(tmp_path: Path) -> None:
    # Logging every 3 steps puts the checkpoint at 20 between log points (18 and 21): the
    # losses of steps 19-20 are saved with it, or step 21's train_loss would differ.
    over = {"model.dropout": 0.1, "train.log_every": 3}
    ref = tmp_path / "ref"
    run_trial(tiny_trial(**over), ref)
    part = tmp_path / "part"
    cfg = tiny_trial(**over)

    class Stop(Exception):
        pass

    def stop_after_checkpoint(ev: dict) -> None:
        if ev.get("step") == 24:  # after the checkpoint at 20, before the one at 30
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, part, progress=stop_after_checkpoint)
    assert rf.read_json(part / rf.STATUS)["status"] == "failed"
    assert max(r["step"] for r in rf.read_jsonl(part / rf.METRICS)) == 24
    run_trial(cfg, part)
    assert _metrics(part) == _metrics(ref)
    assert rf.read_json(part / rf.STATUS)["attempts"] == 2


def _cli(*args: str) -> list[str]:
    """The installed console script, next to this interpreter."""
    return [str(Path(sys.executable).parent / "scalinglab"), *args]


TINY_SET = [
    "--set",
    "model.n_layer=1",
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_head=2",
    "--set",
    "data.source=synthetic",
    "--set",
    "data.seq_len=32",
    "--set",
    "data.synthetic={vocab_size: 32, n_tokens: 60000, branching: 4}",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.eval_tokens=2048",
    "--set",
    "train.log_every=5",
    "--set",
    "train.eval_every=10",
]


def _wait_for_checkpoint(
    run_dir: Path, proc: subprocess.Popen, min_step: int, timeout: float = 120
) -> None:
    """Poll until a completed checkpoint at a step >= min_step exists."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        ckpts = run_dir / rf.CHECKPOINTS
        steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= min_step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


KILL_ARGS = [*TINY_SET, "--set", "train.budget={steps: 300}", "--set", "train.checkpoint_every=20"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted CLI run shared by the kill tests."""
    ref = tmp_path_factory.mktemp("ref")
    subprocess.run(_cli("train", "--out", str(ref), *KILL_ARGS), check=True, capture_output=True)
    return ref


# SIGKILL of a training process is also covered, with exact records after the resume, by
# test_sweep_run.py's kill -9 test and the fault-load test; the default run keeps SIGTERM here.
@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGTERM]
)
def test_killed_process_resumes_exactly(tmp_path: Path, sig: int, uninterrupted: Path) -> None:
    """A real `scalinglab train` killed mid-run, then re-run, matches an uninterrupted run."""
    args, ref, run = KILL_ARGS, uninterrupted, tmp_path / "run"

    proc = subprocess.Popen(
        _cli("train", "--out", str(run), *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # Past the second checkpoint, so metrics beyond the restored step get cut back.
    _wait_for_checkpoint(run, proc, min_step=40)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130
        status = rf.read_json(run / rf.STATUS)
        assert status["status"] == "interrupted"
        assert not (run / rf.SUMMARY).exists()
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (run / rf.SUMMARY).exists(), "killed too late to test a resume"
    subprocess.run(_cli("train", "--out", str(run), *args), check=True, capture_output=True)
    assert _metrics(run) == _metrics(ref)
    a, b = rf.read_json(ref / rf.SUMMARY), rf.read_json(run / rf.SUMMARY)
    assert {k: v for k, v in a.items() if k != "wall_s"} == {
        k: v for k, v in b.items() if k != "wall_s"
    }


def test_corrupt_latest_checkpoint_falls_back(tmp_path: Path) -> None:
    cfg = tiny_trial()

    class Stop(Exception):
        pass

    def stop(ev: dict) -> None:
        if ev.get("step") == 35:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, tmp_path, progress=stop)
    latest = tmp_path / rf.CHECKPOINTS / "30"
    assert latest.is_dir()
    # The train state is garbage, the host JSON (which carries the format) still reads: a
    # corrupt checkpoint of this version, not an old format.
    for f in (latest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    assert json.loads((latest / "host" / "metadata").read_text())["format"] >= 1
    seen: list[int] = []
    with pytest.warns(RuntimeWarning, match="step 30 is unreadable"):
        summary = run_trial(cfg, tmp_path, progress=lambda ev: seen.append(ev.get("step", 0)))
    ref = run_trial(cfg, tmp_path / "ref")
    assert summary["final_eval_loss"] == ref["final_eval_loss"]
    # From the previous checkpoint (20), not from scratch: the same loss either way, so the
    # steps it trained are what tells them apart.
    assert min(s for s in seen if s) == 20 and not {5, 10, 15} & set(seen)


def test_divergence_is_recorded(tmp_path: Path) -> None:
    cfg = tiny_trial(
        **{"optimizer.name": "sgd", "optimizer.lr": 1.0e4, "optimizer.clip_norm": "null"}
    )
    summary = run_trial(cfg, tmp_path)
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] is not None and summary["diverged_step"] < 40
    status = rf.read_json(tmp_path / rf.STATUS)
    assert status["status"] == "diverged" and "step" in status["error"]
    assert "diverged" in rf.read_jsonl(tmp_path / rf.METRICS)[-1]
    saved = [int(p.name) for p in (tmp_path / rf.CHECKPOINTS).iterdir() if p.name.isdigit()]
    assert all(step < summary["diverged_step"] for step in saved)  # a blown-up state is not kept


def test_early_stopping(tmp_path: Path) -> None:
    cfg = tiny_trial(
        **{
            "optimizer.lr": 1.0e-9,
            "train.early_stopping": "{patience: 2, min_delta: 0.01}",
            "train.budget": "{steps: 100}",
        }
    )
    summary = run_trial(cfg, tmp_path)
    assert summary["status"] == "stopped_early"
    # First eval sets the best; two more without improvement stop it at step 30.
    assert summary["steps"] == 30


def test_budgets_in_tokens_steps_flops() -> None:
    from scalinglab.flops import flops_per_token

    assert plan_steps(tiny_trial(**{"train.budget": "{tokens: 2560}"})) == 10
    cfg = tiny_trial()
    fpt = flops_per_token(cfg.model, 32, "kaplan")
    flops_cfg = tiny_trial(**{"train.budget": f"{{flops: {fpt * 256 * 12.5}}}"})
    assert plan_steps(flops_cfg) == 12
    with pytest.raises(TrialError, match="train.budget.tokens .* smaller than one step"):
        plan_steps(tiny_trial(**{"train.budget": "{tokens: 100}"}))


def test_synthetic_language_approaches_its_entropy(tmp_path: Path) -> None:
    """A small GPT learns an order-1 Markov language down to near its exact entropy rate."""
    cfg = tiny_trial(
        **{
            "data.synthetic": "{vocab_size: 16, order: 1, branching: 3, n_tokens: 200000}",
            "model.d_model": 48,
            "train.budget": "{steps: 300}",
            "train.batch_size": 16,
            "train.eval_every": 100,
            "train.eval_tokens": 16384,
            "train.checkpoint_every": 1000,
            "optimizer.lr": 1.0e-2,
        }
    )
    summary = run_trial(cfg, tmp_path)
    h = summary["data"]["entropy_rate_nats"]
    assert 0.1 < h < np.log(16)
    loss = summary["final_eval_loss"]
    # Within 0.06 nats of the floor, and not below it beyond sampling noise.
    assert h - 0.03 < loss < h + 0.06, (loss, h)


def test_cli_pulse_and_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "pulse"
    env = {**os.environ}
    r = subprocess.run(
        _cli(
            "train",
            "--out",
            str(out),
            "--set",
            "data.max_tokens=200000",
            "--set",
            "train.budget={steps: 6}",
            "--set",
            "train.eval_tokens=1024",
            "--set",
            "model.d_model=32",
        ),
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    # The default config's optimiser and its (decoupled) decay are printed, not hidden.
    assert "optimizer: adamw, lr 0.003, weight decay 0.1 (decoupled)" in r.stderr
    summary = json.loads((out / rf.SUMMARY).read_text())
    assert summary["status"] == "done" and summary["data"]["source"] == "stdlib"
    assert len(summary["data"]["sha256"]) == 64

    bad = subprocess.run(
        _cli("train", "--out", str(tmp_path / "bad"), "--set", "model.activation=gelux"),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "model.activation" in bad.stderr and "swiglu" in bad.stderr
    assert "Traceback" not in bad.stderr

    small = subprocess.run(
        _cli("train", "--out", str(tmp_path / "small"), "--set", "train.budget={tokens: 10}"),
        capture_output=True,
        text=True,
    )
    assert small.returncode == 2 and "train.budget.tokens" in small.stderr
    assert "Traceback" not in small.stderr


def _fit_fixed_batch(cfg_overrides: dict, steps: int = 25) -> tuple[float, float]:
    """Train on one repeated batch; returns (first loss, last loss)."""
    import functools

    import jax

    from scalinglab.models import build_model
    from scalinglab.optim import build_optimizer
    from scalinglab.train.state import init_state
    from scalinglab.train.step import train_step
    from scalinglab.train.tasks import build_task

    cfg = tiny_trial(**cfg_overrides)
    task = build_task(cfg, build_model(cfg.model))
    tx, _ = build_optimizer(cfg.optimizer, steps)
    state = init_state(task, tx, jax.random.PRNGKey(0))
    batch = np.random.default_rng(0).integers(0, 32, (8, cfg.data.seq_len + 1), dtype=np.int32)
    step = jax.jit(functools.partial(train_step, task=task, tx=tx))
    losses = []
    for _ in range(steps):
        state, m = step(state, batch, jax.random.PRNGKey(1))
        losses.append(float(m["loss"]))
    return losses[0], losses[-1]


# Each activation's values are checked against its closed form (test_models.py) and autodiff
# differentiates them all alike; these three cover the code paths a train step takes: a
# saturating elementwise one, a smooth one, and the gated MLP of swiglu.
@pytest.mark.parametrize("activation", ["sigmoid", "gelu", "swiglu"])
def test_each_activation_path_trains(activation: str) -> None:
    first, last = _fit_fixed_batch({"model.activation": activation})
    assert last < 0.8 * first, (first, last)


# The update rules are checked step by step against hand computations (test_optim.py);
# these train the GPT end to end with the plain, the momentum and the factored optimiser.
@pytest.mark.parametrize(("name", "lr"), [("sgd", 1.0), ("momentum", 0.3), ("adafactor", 1e-2)])
def test_optimizers_train_the_gpt(name: str, lr: float) -> None:
    first, last = _fit_fixed_batch({"optimizer.name": name, "optimizer.lr": lr})
    assert last < 0.8 * first, (first, last)


def test_data_parallel_over_two_devices_matches_one(tmp_path: Path) -> None:
    """Two (forced host) devices split each batch; the result equals one device's."""
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[2]);"
        "from conftest import tiny_trial; from scalinglab.train import run_trial;"
        "print(json.dumps(run_trial(tiny_trial(), sys.argv[1])))"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "two"), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    two = json.loads(r.stdout.strip().splitlines()[-1])
    one = run_trial(tiny_trial(), tmp_path / "one")
    assert (one["devices"], two["devices"]) == (1, 2)
    # Only the order of the gradient reduction differs.
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], rel=1e-4)


@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine", "wsd"])
def test_each_schedule_trains_the_gpt(schedule: str) -> None:
    first, last = _fit_fixed_batch({"optimizer.schedule": f"{{name: {schedule}}}"})
    assert last < 0.8 * first, (first, last)


def test_dropout_masks_change_with_the_step() -> None:
    """The dropout key is folded with the step: the same state and batch one step later draw
    another mask (a key reused every step would give the same loss), and without dropout
    the step number changes nothing."""

    def losses(dropout: float) -> tuple[float, float]:
        cfg = tiny_trial(**{"model.dropout": dropout})
        trainer = build_trainer(cfg, 100)
        state = init_state(trainer.task, trainer.tx, jax.random.PRNGKey(0))
        batch = trainer.task.example_batch(cfg.train.batch_size, np.random.default_rng(0))
        key = jax.random.PRNGKey(1)
        out = []
        for step in (3, 4):
            moved = state.replace(step=jnp.asarray(step, state.step.dtype))
            moved = jax.tree.map(jnp.copy, moved)  # the step donates its state
            out.append(float(trainer.step_fn(moved, batch, key)[1]["loss"]))
        return out[0], out[1]

    a, b = losses(0.3)
    assert a != b
    c, d = losses(0.0)
    assert c == d


def _stopped_at(tmp_path: Path, step: int) -> Path:
    """A trial stopped (by an exception in its progress callback) after `step`."""
    cfg = tiny_trial()

    class Stop(Exception):
        pass

    def stop(ev: dict) -> None:
        if ev.get("step") == step:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, tmp_path, progress=stop)
    return tmp_path / rf.CHECKPOINTS


def test_checkpoint_of_another_format_is_reported_not_deleted(tmp_path: Path) -> None:
    from scalinglab.errors import RunDirError
    from scalinglab.train.checkpoint import CHECKPOINT_FORMAT

    ckpts = _stopped_at(tmp_path, 15)
    host = ckpts / "10" / "host" / "metadata"
    doc = json.loads(host.read_text())
    assert doc["format"] == CHECKPOINT_FORMAT
    host.write_text(json.dumps({**doc, "format": CHECKPOINT_FORMAT + 1}))
    with pytest.raises(
        RunDirError, match=r"checkpoints/10: checkpoint format 2 was written by a newer"
    ):
        run_trial(tiny_trial(), tmp_path)
    assert (ckpts / "10").is_dir()
    # An older checkpoint (no format field) whose state this version cannot read: said, kept.
    host.write_text(json.dumps({k: v for k, v in doc.items() if k != "format"}))
    for f in (ckpts / "10" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"an older layout")
    with pytest.raises(
        RunDirError, match=r"checkpoint format 0 \(written by an older scalinglab\)"
    ):
        run_trial(tiny_trial(), tmp_path)
    assert (ckpts / "10").is_dir()
