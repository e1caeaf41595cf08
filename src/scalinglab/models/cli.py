"""The ``generate`` command (``scalinglab.cli`` registers it): sample text from a trained GPT.

It restores the parameters of a run directory's latest checkpoint, encodes the prompt as
bytes, calls `scalinglab.models.generate.generate` and prints the decoded bytes. Parsing and
printing only; the restore and the sampling live in importable functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from scalinglab.config import TrialConfig


def load_params(run_dir: Path) -> tuple[TrialConfig, Any, int]:
    """(config, params, step) of a run directory's latest complete checkpoint.

    The checkpoint is read by `scalinglab.train.load_state` with exactly the shapes, dtypes
    and tree it was written with.
    """
    from scalinglab import runfiles as rf
    from scalinglab.config import load_trial
    from scalinglab.train import load_state

    config = run_dir / rf.CONFIG
    if not config.exists():
        raise ValueError(f"{run_dir}: no {rf.CONFIG}; not a run directory")
    cfg = load_trial(config)
    if cfg.model.family != "gpt":
        raise ValueError(f"generate needs a gpt run (model.family is {cfg.model.family!r})")
    state = load_state(cfg, run_dir)
    if state is None:
        raise ValueError(f"{run_dir}: no checkpoint to restore")
    return cfg, state.params, int(state.step)


def generate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A trial's run directory (with checkpoints/).")],
    prompt: Annotated[str, typer.Option(help="Text to continue (encoded as UTF-8 bytes).")] = (
        "def "
    ),
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Bytes to generate.")] = 100,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1, help="Sample among the k likeliest.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Continue a prompt with a trained GPT (KV-cached sampling) and print the text."""
    import jax
    import jax.numpy as jnp

    from scalinglab.data import decode, encode
    from scalinglab.models.generate import generate

    cfg, params, step = load_params(run_dir)
    prompt_1xT = jnp.asarray(encode(prompt), jnp.int32)[None]
    out = generate(
        cfg.model,
        params,
        prompt_1xT,
        max_new_tokens,
        key=jax.random.key(seed),
        temperature=temperature,
        top_k=top_k,
    )
    typer.echo(f"[step {step}]", err=True)
    typer.echo(decode(jax.device_get(out[0])))
