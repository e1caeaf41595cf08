"""Generation throughput: KV-cached `generate` against a full forward pass per new token.

    python benchmarks/generate.py                       # d_model 128 and 256, batch 1 and 8
    python benchmarks/generate.py --d-model 256 --batch 8 --rounds 5 --json out.json

Same model, same params, same key, same process: each round times the cached sampler
(`scalinglab.models.generate.generate`: one prefill pass, then one-position decode steps in a
`fori_loop`) and the uncached one (`generate_uncached`: the training forward pass over the
whole fixed-length buffer for every new token, also in a jitted `fori_loop`), interleaved,
and reports medians over rounds. Both are compiled before timing (compile time is reported
separately) and produce the same tokens (checked). tokens/s counts new tokens x batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from scalinglab.config import ModelConfig
from scalinglab.models import build_model, count_params
from scalinglab.models.generate import generate, generate_uncached

VOCAB = 256


def _timed(fn: Callable[[], jax.Array]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = np.asarray(fn())
    return time.perf_counter() - t0, out


def bench_one(d_model: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per generation call, cached and uncached, for one size and batch."""
    total = args.prompt + args.new_tokens
    cfg = ModelConfig(
        n_layer=args.n_layer,
        d_model=d_model,
        n_head=args.n_head,
        vocab_size=VOCAB,
        max_seq_len=total,
        positions=args.positions,
    )
    key = jax.random.key(0)
    prompt = jax.random.randint(key, (batch, args.prompt), 0, VOCAB)
    params = jax.jit(build_model(cfg).init)(key, prompt)["params"]
    kw = dict(key=jax.random.key(1), temperature=args.temperature, top_k=args.top_k)
    runs = {
        "cached": lambda: generate(cfg, params, prompt, args.new_tokens, **kw),
        "uncached": lambda: generate_uncached(cfg, params, prompt, args.new_tokens, **kw),
    }
    compile_s, outs = {}, {}
    for name, fn in runs.items():
        compile_s[name], outs[name] = _timed(fn)
    same = bool(np.array_equal(outs["cached"], outs["uncached"]))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(_timed(fn)[0])
    med = {name: statistics.median(ts) for name, ts in times.items()}
    new = args.new_tokens * batch
    return {
        "d_model": d_model,
        "batch": batch,
        "params": count_params(params)["total"],
        "cached_tok_s": new / med["cached"],
        "uncached_tok_s": new / med["uncached"],
        "ratio": med["uncached"] / med["cached"],
        "cached_ms": 1e3 * med["cached"],
        "uncached_ms": 1e3 * med["uncached"],
        "compile_s": compile_s,
        "same_tokens": same,
        "rounds": times,
        "load": os.getloadavg()[0],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, nargs="+", default=[128, 256])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=112)
    p.add_argument("--positions", choices=["learned", "rotary"], default="learned")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5, help="interleaved cached/uncached rounds")
    p.add_argument("--json", type=str, default=None, help="write the results to this file")
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 tokens, 1 round")
    args = p.parse_args(argv)
    if args.smoke:
        args.d_model, args.batch, args.n_layer, args.n_head = [32], [2], 1, 2
        args.prompt, args.new_tokens, args.rounds = 4, 2, 1
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run every (d_model, batch) pair and print one table row each."""
    args = parse_args(argv)
    print(
        f"n_layer {args.n_layer}, n_head {args.n_head}, prompt {args.prompt}, "
        f"new tokens {args.new_tokens}, {args.positions} positions, "
        f"temperature {args.temperature}, top_k {args.top_k}, {args.rounds} rounds"
    )
    print("| d_model | batch | params | cached tok/s | uncached tok/s | ratio | same | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for d_model in args.d_model:
        for batch in args.batch:
            r = bench_one(d_model, batch, args)
            results.append(r)
            print(
                f"| {d_model} | {batch} | {r['params']:,} | {r['cached_tok_s']:,.0f} | "
                f"{r['uncached_tok_s']:,.0f} | {r['ratio']:.2f} | {r['same_tokens']} | "
                f"{r['load']:.1f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
