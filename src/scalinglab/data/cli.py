"""The ``data`` sub-app (``scalinglab data tokenize``): parse arguments, call
`scalinglab.data.tokenize.tokenize`, print what was written. Parsing and printing only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from scalinglab.data.tokenize import tokenize

data_app = typer.Typer(
    help="Prepare training data: tokenize text into a token memmap.",
    no_args_is_help=True,
    add_completion=False,
)


@data_app.command("tokenize")
def tokenize_cmd(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT",
            help="Text files or folders (binary files skipped); 'stdlib': the default corpus.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the tokens into.")],
    train_bpe: Annotated[
        int | None,
        typer.Option("--train-bpe", metavar="VOCAB_SIZE", help="Train a byte-level BPE here."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="Use this Hugging Face tokenizer.json instead."),
    ] = None,
    min_frequency: Annotated[
        int, typer.Option("--min-frequency", help="BPE: merge pairs seen at least this often.")
    ] = 2,
    force: Annotated[bool, typer.Option("--force", help="Replace tokens already in --out.")] = (
        False
    ),
) -> None:
    """Tokenize text into DIR/tokens.bin + tokens.json for `data.source: tokens`."""
    from rich.console import Console

    err = Console(stderr=True)
    start = time.perf_counter()
    meta = tokenize(
        inputs,
        out,
        train_vocab=train_bpe,
        tokenizer=tokenizer,
        min_frequency=min_frequency,
        force=force,
        progress=True,
    )
    wall = time.perf_counter() - start
    err.print(
        f"{meta['n_tokens']:,} tokens ({meta['dtype']}, vocab {meta['vocab_size']:,}) from "
        f"{meta['n_files']:,} files, {meta['n_bytes']:,} bytes: {meta['bytes_per_token']:.2f} "
        f"bytes/token, {wall:.1f} s\ndata: {{source: tokens, path: {out}}}",
        highlight=False,
        soft_wrap=True,
    )
    if train_bpe is not None and meta["vocab_size"] < train_bpe:
        err.print(
            f"[yellow]note:[/] BPE stopped at {meta['vocab_size']:,} tokens: no pair left that "
            f"occurs {min_frequency}+ times"
        )
    if meta["invalid_utf8_bytes"]:
        err.print(
            f"[yellow]note:[/] {meta['invalid_utf8_bytes']:,} bytes of invalid UTF-8 were "
            "replaced by U+FFFD"
        )
    if not meta["tokenizer"]["lossless"]:
        err.print("[yellow]warning:[/] decoding the tokens does not give the text back")
