"""Train-step throughput of the scalinglab GPT (JAX) against the same model in PyTorch eager.

    python benchmarks/train_step.py                      # d_model 128, 256, 512; ~3 minutes
    python benchmarks/train_step.py --d-model 256 --steps 20 --json out.json

Reports training tokens/s for both, their ratio, MFU (model FLOPs per step from
`scalinglab.flops.model_flops_per_step`, the "full" count incl. attention and the unembedding,
divided by step time and by the f32 matmul FLOP/s measured in this process) and the first-step
compile time. JAX and PyTorch run interleaved, round by round, and medians are reported, because
the CPU is shared and timings drift (see benchmarks/README.md, section "train_step"). PyTorch
runs in a child process driven from here, with glibc's default allocator settings
(`TorchProcess`): the settings `scalinglab.hostmem` makes for XLA would slow it down.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalinglab.config import ModelConfig
from scalinglab.flops import model_flops_per_step
from scalinglab.hostmem import configure_host_memory, estimated_step_temp_bytes
from scalinglab.models import build_model, count_params

VOCAB = 256
LR, WD, B1, B2 = 3e-4, 0.1, 0.9, 0.95


def n_cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def model_config(d_model: int, n_layer: int, n_head: int, seq_len: int) -> ModelConfig:
    """The benchmarked GPT: gelu, learned positions, tied head, no dropout, float32."""
    return ModelConfig(
        n_layer=n_layer, d_model=d_model, n_head=n_head, vocab_size=VOCAB, max_seq_len=seq_len
    )


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best f32 FLOP/s of a jitted n x n x n matmul: the denominator of MFU."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


# ---------------------------------------------------------------------------------------------
# JAX: the real scalinglab GPT and an AdamW step as the trainer builds it.


def make_jax_step(cfg: ModelConfig) -> tuple[Callable, Any]:
    """A jitted `(params, opt_state, batch) -> (params, opt_state, loss)` with donated state."""
    model = build_model(cfg)
    tx = optax.adamw(LR, b1=B1, b2=B2, weight_decay=WD)

    def loss_fn(params: Any, batch_BxT1: jax.Array) -> jax.Array:
        logits_BxTxV = model.apply({"params": params}, batch_BxT1[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits_BxTxV, batch_BxT1[:, 1:]
        ).mean()

    def step(params: Any, opt_state: Any, batch_BxT1: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch_BxT1)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def init(key: jax.Array) -> tuple[Any, Any]:
        params = model.init(key, jnp.zeros((1, cfg.max_seq_len), jnp.int32))["params"]
        return params, tx.init(params)

    return jax.jit(step, donate_argnums=(0, 1)), jax.jit(init)


class JaxRunner:
    """Holds the JAX train state between timed rounds."""

    def __init__(self, cfg: ModelConfig, batch_size: int, seq_len: int) -> None:
        self.step, init = make_jax_step(cfg)
        self.params, self.opt_state = init(jax.random.key(0))
        self.n_params = count_params(self.params)["total"]
        rng = np.random.default_rng(0)
        self.batch = jnp.asarray(rng.integers(0, VOCAB, (batch_size, seq_len + 1)), jnp.int32)

    def compile_and_first_step(self) -> float:
        """Seconds for the first call: trace, compile and run one step."""
        t0 = time.perf_counter()
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch)
        loss.block_until_ready()
        return time.perf_counter() - t0

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, dispatched ahead and blocked once at the end."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch)
        loss.block_until_ready()
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# PyTorch eager: the same architecture (parameter count asserted equal), nanoGPT style.


def make_torch_runner(cfg: ModelConfig, batch_size: int, seq_len: int) -> Any:
    """A PyTorch runner with the JaxRunner interface; imports torch only when asked."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(n_cores())
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.d_model
            self.norm_1, self.norm_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.up, self.down = nn.Linear(d, cfg.ff_dim), nn.Linear(cfg.ff_dim, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            h, dh = cfg.n_head, d // cfg.n_head
            q, k, v = self.qkv(self.norm_1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.down(F.gelu(self.up(self.norm_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.pos_embed = nn.Parameter(torch.randn(cfg.max_seq_len, cfg.d_model) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.norm_f = nn.LayerNorm(cfg.d_model)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.norm_f(x) @ self.token_embed.weight.T  # tied head

    class TorchRunner:
        def __init__(self) -> None:
            self.model = GPT()
            self.n_params = sum(p.numel() for p in self.model.parameters())
            self.opt = torch.optim.AdamW(
                self.model.parameters(), lr=LR, betas=(B1, B2), weight_decay=WD
            )
            rng = np.random.default_rng(0)
            batch = rng.integers(0, VOCAB, (batch_size, seq_len + 1))
            self.batch = torch.as_tensor(batch, dtype=torch.long)

        def one_step(self) -> float:
            inputs, targets = self.batch[:, :-1], self.batch[:, 1:]
            logits = self.model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return loss

        def compile_and_first_step(self) -> float:
            t0 = time.perf_counter()
            self.one_step()
            return time.perf_counter() - t0

        def run(self, steps: int) -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = self.one_step()
            loss.item()
            return time.perf_counter() - t0

    return TorchRunner()


class TorchProcess:
    """The PyTorch runner in a child process with glibc's default allocator settings.

    The trainer tunes glibc malloc for XLA's large step buffers (`scalinglab.hostmem`); in the
    same process that cost PyTorch about 20% at d_model 128 (97.6 vs 81.1 ms per step). It is
    measured as a PyTorch user runs it, in its own process with the system's settings, driven
    round by round from here so that the two frameworks still alternate on the same machine.
    """

    def __init__(self, d_model: int, n_layer: int, n_head: int, seq_len: int, batch_size: int):
        env = {**os.environ, "SCALINGLAB_HOST_MEMORY": "system"}
        spec = json.dumps([d_model, n_layer, n_head, seq_len, batch_size])
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--torch-worker", spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.n_params = int(self._ask("params"))

    def _ask(self, command: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"PyTorch worker exited (code {self.proc.wait()})")
        return float(line)

    def compile_and_first_step(self) -> float:
        return self._ask("first")

    def run(self, steps: int) -> float:
        return self._ask(f"run {steps}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def torch_worker(spec: str) -> None:
    """The child side of `TorchProcess`: answer one line per command on stdin."""
    d_model, n_layer, n_head, seq_len, batch_size = json.loads(spec)
    runner = make_torch_runner(model_config(d_model, n_layer, n_head, seq_len), batch_size, seq_len)
    for line in sys.stdin:
        command, *arg = line.split()
        if command == "params":
            answer = float(runner.n_params)
        elif command == "first":
            answer = runner.compile_and_first_step()
        else:
            answer = runner.run(int(arg[0]))
        print(answer, flush=True)


def torch_available() -> bool:
    """Whether PyTorch (the `bench` extra) can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------


def bench_size(
    d_model: int,
    n_layer: int,
    n_head: int,
    seq_len: int,
    batch_size: int,
    steps: int,
    rounds: int,
    with_torch: bool,
    peak_size: int = 2048,
) -> dict[str, Any]:
    """Interleaved rounds (matmul peak, JAX, PyTorch) at one size; medians over rounds."""
    cfg = model_config(d_model, n_layer, n_head, seq_len)
    tokens_per_step = batch_size * seq_len
    flops_step = model_flops_per_step(cfg, seq_len, batch_size)
    jr = JaxRunner(cfg, batch_size, seq_len)
    compile_s = jr.compile_and_first_step()
    tr = None
    if with_torch:
        tr = TorchProcess(d_model, n_layer, n_head, seq_len, batch_size)
        if tr.n_params != jr.n_params:
            raise AssertionError(f"parameter counts differ: torch {tr.n_params}, jax {jr.n_params}")
        tr.compile_and_first_step()
    load_before = os.getloadavg()[0]
    jax_tps, torch_tps, peaks, mfus = [], [], [], []
    for _ in range(rounds):
        # Each round measures the matmul peak, JAX and PyTorch back to back, so that all three
        # see the same load on a shared machine; MFU pairs a round's step time with its peak.
        peak = matmul_peak(peak_size, repeats=3)
        jax_s = jr.run(steps)
        peaks.append(peak)
        jax_tps.append(steps * tokens_per_step / jax_s)
        mfus.append(flops_step * steps / jax_s / peak)
        if tr is not None:
            torch_tps.append(steps * tokens_per_step / tr.run(steps))
    if tr is not None:
        tr.close()
    tps = statistics.median(jax_tps)
    out: dict[str, Any] = {
        "d_model": d_model,
        "n_layer": n_layer,
        "n_head": n_head,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "steps": steps,
        "rounds": rounds,
        "n_params": jr.n_params,
        "model_flops_per_step": flops_step,
        "tokens_per_s": tps,
        "tokens_per_s_rounds": jax_tps,
        "step_ms": 1e3 * tokens_per_step / tps,
        "mfu": statistics.median(mfus),
        "mfu_rounds": mfus,
        "compile_s": compile_s,
        "peak_flops": statistics.median(peaks),
        "peak_flops_rounds": peaks,
        "peak_matmul_n": peak_size,
        # 1-minute load average before and after: on a shared machine, rows measured under a
        # load above the core count are not representative (PyTorch's OpenMP suffers most).
        "loadavg": [load_before, os.getloadavg()[0]],
    }
    if torch_tps:
        out["torch_tokens_per_s"] = statistics.median(torch_tps)
        out["torch_tokens_per_s_rounds"] = torch_tps
        out["torch_step_ms"] = 1e3 * tokens_per_step / out["torch_tokens_per_s"]
        out["ratio"] = tps / out["torch_tokens_per_s"]
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    """A plain-text table, one row per size."""
    head = (
        f"{'d_model':>7} {'params':>10} {'jax tok/s':>10} {'torch tok/s':>11} "
        f"{'ratio':>6} {'jax ms':>7} {'torch ms':>8} {'MFU':>6} {'compile s':>9} {'load':>9}"
    )
    print(head)
    for r in results:
        t = r.get("torch_tokens_per_s")
        print(
            f"{r['d_model']:>7} {r['n_params']:>10,} {r['tokens_per_s']:>10,.0f} "
            f"{(f'{t:,.0f}' if t else '-'):>11} {r.get('ratio', float('nan')):>6.2f} "
            f"{r['step_ms']:>7.1f} {r.get('torch_step_ms', float('nan')):>8.1f} "
            f"{100 * r['mfu']:>5.1f}% {r['compile_s']:>9.2f} "
            f"{r['loadavg'][0]:>4.1f}-{r['loadavg'][1]:<4.1f}"
        )
    peaks = ", ".join(f"{r['peak_flops'] / 1e9:.0f}" for r in results)
    n = results[0]["peak_matmul_n"]
    print(f"f32 matmul peak ({n}^3, median of rounds): {peaks} GFLOP/s; cores: {n_cores()}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved JAX/PyTorch rounds")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 matmul peak")
    p.add_argument("--json", type=str, default=None, help="write the results to this file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns one result dict per d_model."""
    args = parse_args(argv)
    with_torch = not args.no_torch and torch_available()
    # What run_trial does before JAX starts (scalinglab.hostmem), for the largest size here.
    configure_host_memory(
        max(
            estimated_step_temp_bytes(
                model_config(d, args.n_layer, args.n_head, args.seq_len),
                args.batch_size,
                args.seq_len,
            )
            for d in args.d_model
        )
    )
    results = [
        bench_size(
            d,
            args.n_layer,
            args.n_head,
            args.seq_len,
            args.batch_size,
            args.steps,
            args.rounds,
            with_torch,
            args.peak_size,
        )
        for d in args.d_model
    ]
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "cores": n_cores(), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--torch-worker"]:
        torch_worker(sys.argv[2])
    else:
        main(sys.argv[1:])
