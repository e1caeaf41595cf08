"""`scalinglab data tokenize`: text files -> a subword token memmap for `data.source: tokens`.

Trains a byte-level BPE tokenizer locally (Hugging Face `tokenizers`) or loads a
`tokenizer.json`, then encodes the inputs into `DIR/tokens.bin` with `DIR/tokens.json`, the
metadata `data.source: tokens` reads (vocabulary size, dtype, token count, source hashes), and
`DIR/tokenizer.json`. The inputs are one stream, files joined by a newline in the order the
`text` source reads them (`stdlib` is the default corpus), read in blocks and encoded in pieces
cut only where byte-level BPE's pre-tokenizer splits anyway (`cut`), so the pieces encode
exactly as the whole text would and inputs larger than memory stream. Outputs are written
atomically, `tokens.json` last, so a folder holding it is complete. Format: docs/data.md.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scalinglab.data.text import (
    FILE_SEPARATOR,
    TOKENS_FILE,
    TOKENS_FORMAT,
    TOKENS_META,
    looks_binary,
    stdlib_dir,
    stdlib_files,
    text_files,
)
from scalinglab.errors import DataError, ScalinglabError
from scalinglab.runfiles import NO_SPACE, atomic_write_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

STDLIB_INPUT = "stdlib"  # the INPUT that names the default corpus (a folder so named: ./stdlib)
TOKENIZER_FILE = "tokenizer.json"
MIN_BPE_VOCAB = 257  # the 256 byte symbols and at least one merge
MAX_BPE_VOCAB = 1 << 20
READABLE = 0o644  # outputs are data to share, not private run files
UINT16_VOCAB = 1 << 16  # ids 0..65535 fit uint16; a larger vocabulary is stored as uint32
READ_BYTES = 1 << 20  # bytes read from a file at a time
PIECE_CHARS = 1 << 18  # characters per piece (cut at a boundary near it); bounds the memory
BATCH_PIECES = 8  # pieces encoded by one batch call (the Rust side runs them in parallel)
_SEPARATOR = FILE_SEPARATOR.decode()
# Piece boundaries, where GPT-2's pre-tokenizer regex ends a pre-token whatever follows:
# before the last character of a whitespace run that a non-space follows (the run's other
# characters are a pre-token of their own, as at the end of a piece: indented code), after a
# lone whitespace character other than " " between non-spaces (a newline in prose), and before
# a lone " " between non-spaces (it starts the next word's pre-token).
_BOUNDARY = re.compile(r"(?<=\s)(?=\s\S)|(?<=\S[^\S ])(?=\S)|(?<=\S)(?= \S)")
_ESCAPED = re.compile("[\udc80-\udcff]")  # invalid UTF-8 bytes, as surrogateescape decodes them


@dataclass(frozen=True)
class Source:
    """One INPUT argument: the text files it names, in reading order."""

    name: str
    root: Path
    files: list[Path]
    binary_skipped: int = 0


def resolve_inputs(inputs: list[str], out: Path | None = None) -> list[Source]:
    """The files each INPUT names: `stdlib`, a text file, or a folder's text files (sorted,
    hidden and binary ones skipped, anything under `out` left out)."""
    if not inputs:
        raise DataError("INPUT: give at least one text file or folder (or stdlib)")
    skip = out.resolve() if out is not None else None
    sources = []
    for name in inputs:
        if name == STDLIB_INPUT:
            sources.append(Source(name, stdlib_dir(), stdlib_files("INPUT")))
            continue
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(f"INPUT: {path} does not exist")
        if path.is_dir():
            files, skipped = text_files(path, "INPUT")
            if skip is not None:
                files = [f for f in files if not f.resolve().is_relative_to(skip)]
            if not files:
                raise DataError(f"INPUT: {path} holds no text files")
            sources.append(Source(name, path, files, skipped))
        elif looks_binary(path, "INPUT"):
            raise DataError(f"INPUT: {path} looks binary (a NUL byte near its start); give text")
        else:
            sources.append(Source(name, path.parent, [path]))
    return sources


def cut(text: str, target: int) -> int:
    """Where to end the next piece of `text` (the last boundary before `target`, else the first
    after it; 0 for none): a place byte-level BPE's pre-tokenizer splits whatever follows, so
    the pieces encode exactly as the whole text would (see `_BOUNDARY`)."""
    hi = min(len(text), target + 2)  # the lookahead needs the two characters after a boundary
    lo = target
    while lo > 0:
        lo = max(0, lo - 4096)
        found = [m.start() for m in _BOUNDARY.finditer(text, lo, hi) if 0 < m.start() <= target]
        if found:
            return found[-1]
    m = _BOUNDARY.search(text, target)
    return m.start() if m else 0


@dataclass
class TextStream:
    """The inputs as one text stream (files joined by a newline), yielded in pieces of about
    `piece_chars`; records each file's size and sha256 and the invalid UTF-8 bytes replaced."""

    sources: list[Source]
    on_bytes: Callable[[int], None] = lambda n: None
    piece_chars: int = PIECE_CHARS
    read_bytes: int = READ_BYTES
    files: list[dict[str, Any]] = field(default_factory=list)
    invalid_bytes: int = 0
    n_bytes: int = 0
    sha256: str = ""

    def total_bytes(self) -> int:
        """Bytes the stream will read: every file and the separators between them."""
        sizes = [_size(p) for s in self.sources for p in s.files]
        return sum(sizes) + len(FILE_SEPARATOR) * max(0, len(sizes) - 1)

    def _text(self) -> Iterator[str]:
        """Decoded blocks of the whole stream, hashing the raw bytes on the way."""
        self.files, self.invalid_bytes, self.n_bytes = [], 0, 0
        whole = hashlib.sha256()
        for k, source in enumerate(self.sources):
            for path in source.files:
                if self.files:
                    whole.update(FILE_SEPARATOR)
                    self.n_bytes += len(FILE_SEPARATOR)
                    self.on_bytes(len(FILE_SEPARATOR))
                    yield _SEPARATOR
                digest, size = hashlib.sha256(), 0
                decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
                try:
                    with path.open("rb") as f:
                        while block := f.read(self.read_bytes):
                            digest.update(block)
                            whole.update(block)
                            size += len(block)
                            self.on_bytes(len(block))
                            yield self._clean(decoder.decode(block))
                except OSError as e:
                    raise DataError(f"INPUT: cannot read {path} ({e.strerror})") from None
                yield self._clean(decoder.decode(b"", final=True))
                rel = path.relative_to(source.root).as_posix()
                self.files.append(
                    {"input": k, "path": rel, "bytes": size, "sha256": digest.hexdigest()}
                )
                self.n_bytes += size
        self.sha256 = whole.hexdigest()

    def _clean(self, text: str) -> str:
        """Invalid UTF-8 bytes become U+FFFD (BPE reads text); counted in `invalid_bytes`."""
        text, n = _ESCAPED.subn("\ufffd", text)
        self.invalid_bytes += n
        return text

    def __iter__(self) -> Iterator[str]:
        pending = ""
        for text in self._text():
            pending += text
            while len(pending) >= self.piece_chars:
                at = cut(pending, self.piece_chars)
                if at == 0:
                    if len(pending) < 4 * self.piece_chars:
                        break  # no boundary yet: read on
                    at = self.piece_chars  # a huge line without one: cut it anyway (lossless)
                yield pending[:at]
                pending = pending[at:]
        if pending:
            yield pending


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise DataError(f"INPUT: cannot read {path} ({e.strerror})") from None


def _then(items: Iterator[str] | TextStream, done: Callable[[], None]) -> Iterator[str]:
    """`items`, then a call of `done` (the BPE trainer computes its merges after reading)."""
    yield from items
    done()


def train_bpe(pieces: Iterator[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's scheme: every byte is a symbol, no prefix space, no
    special tokens) trained on the streamed pieces; lossless on any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(pieces, trainer=trainer)
    return tok


def load_tokenizer(path: Path) -> tuple[Tokenizer, str]:
    """A Hugging Face `tokenizer.json` and its text; a one-line DataError naming --tokenizer
    otherwise."""
    from tokenizers import Tokenizer

    if not path.exists():
        raise DataError(f"--tokenizer: {path} does not exist")
    if path.is_dir():
        raise DataError(f"--tokenizer: {path} is a folder; give its tokenizer.json")
    try:
        text = path.read_text(encoding="utf-8")
        return Tokenizer.from_str(text), text
    except OSError as e:
        raise DataError(f"--tokenizer: cannot read {path} ({e.strerror})") from None
    except Exception as e:  # tokenizers raises a bare Exception for a bad file
        first = (str(e).strip().splitlines() or ["unreadable"])[0]
        raise DataError(
            f"--tokenizer: cannot load {path} as a Hugging Face tokenizer.json ({first})"
        ) from None


def vocab_size_of(tok: Tokenizer) -> int:
    """Rows a model needs for every id the tokenizer can emit: its largest id + 1."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def _check_choice(train_vocab: int | None, tokenizer: Path | None) -> None:
    if (train_vocab is None) == (tokenizer is None):
        got = "both" if tokenizer is not None else "neither"
        raise DataError(
            f"--train-bpe / --tokenizer: give exactly one (got {got}): --train-bpe VOCAB_SIZE "
            "trains a byte-level BPE here, --tokenizer FILE loads a tokenizer.json"
        )
    if train_vocab is not None and train_vocab < MIN_BPE_VOCAB:
        raise DataError(
            f"--train-bpe: {train_vocab} is too small; at least {MIN_BPE_VOCAB} (the 256 byte "
            "symbols and one merge); plain bytes need no tokenizer: data.source text"
        )
    if train_vocab is not None and train_vocab > MAX_BPE_VOCAB:
        raise DataError(f"--train-bpe: {train_vocab} is too large; at most {MAX_BPE_VOCAB}")


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out: cannot create {out} ({e.strerror})") from None
    if (out / TOKENS_META).exists() and not force:
        raise DataError(
            f"--out: {out} already holds tokens ({TOKENS_META}); pass --force to replace them"
        )
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(f"--out: cannot write in {out} (permission denied)")


def _progress(enabled: bool) -> Any:
    """A rich progress display of bytes read, on stderr (disabled: it shows nothing)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _meta_text(meta: dict[str, Any]) -> str:
    """Indented JSON with one line per input file (the stdlib has about 2,000)."""
    head = json.dumps({k: v for k, v in meta.items() if k != "files"}, indent=2)
    rows = ",\n".join("    " + json.dumps(f) for f in meta["files"])
    return f'{head[:-2]},\n  "files": [\n{rows}\n  ]\n}}\n'


def _encode_into(f: Any, tok: Tokenizer, stream: TextStream, dtype: np.dtype) -> dict[str, Any]:
    """Encode the stream into the open binary file `f`, BATCH_PIECES pieces per call."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # >= 0.20: skips offsets
    n_tokens, lossless = 0, None
    pieces: list[str] = []

    def flush() -> None:
        nonlocal n_tokens, lossless
        ids = [e.ids for e in encode(pieces, add_special_tokens=False)]
        if lossless is None:  # any tokenizer file may be given: check it on the first batch
            lossless = "".join(tok.decode_batch(ids, skip_special_tokens=False)) == "".join(pieces)
        arr = np.concatenate([np.asarray(row, dtype=dtype) for row in ids])
        arr.tofile(f)
        n_tokens += arr.size
        pieces.clear()

    for piece in stream:
        pieces.append(piece)
        if len(pieces) == BATCH_PIECES:
            flush()
    if pieces:
        flush()
    return {"n_tokens": n_tokens, "lossless": lossless is not False}


def tokenize(
    inputs: list[str],
    out: Path,
    *,
    train_vocab: int | None = None,
    tokenizer: Path | None = None,
    min_frequency: int = 2,
    force: bool = False,
    progress: bool = False,
    piece_chars: int = PIECE_CHARS,
    read_bytes: int = READ_BYTES,
) -> dict[str, Any]:
    """Tokenize the INPUTs into `out` (tokens.bin, tokens.json, tokenizer.json) with a BPE
    trained here (`train_vocab`) or a tokenizer file; returns the metadata written."""
    _check_choice(train_vocab, tokenizer)
    if min_frequency < 1:
        raise DataError(f"--min-frequency: {min_frequency} must be at least 1")
    out = Path(out).expanduser()
    sources = resolve_inputs(inputs, out)
    tok, tok_text = load_tokenizer(Path(tokenizer).expanduser()) if tokenizer else (None, "")
    _prepare_out(out, force)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=out, prefix=f".{TOKENS_FILE}.", suffix=".tmp")
    except OSError as e:
        raise DataError(f"--out: cannot write in {out} ({e.strerror})") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f, _progress(progress) as bar:
            stream = TextStream(sources, piece_chars=piece_chars, read_bytes=read_bytes)
            total = stream.total_bytes()
            if tok is None:
                assert train_vocab is not None
                task = bar.add_task("train BPE", total=total)
                stream.on_bytes = lambda n: bar.advance(task, n)
                tok = train_bpe(
                    _then(stream, lambda: bar.update(task, description="merges")),
                    train_vocab,
                    min_frequency,
                )
            vocab = vocab_size_of(tok)
            dtype = np.dtype("<u2" if vocab <= UINT16_VOCAB else "<u4")
            if vocab > 1 << 32:
                raise DataError(f"--tokenizer: {tokenizer} has {vocab} ids; at most 2**32")
            task = bar.add_task("encode", total=total)
            stream.on_bytes = lambda n: bar.advance(task, n)
            encoded = _encode_into(f, tok, stream, dtype)
            f.flush()
            os.fsync(f.fileno())
        meta = _metadata(sources, stream, tok, dtype, encoded["n_tokens"])
        model = json.loads(tok.to_str()).get("model", {}).get("type", "unknown")
        meta["tokenizer"] = {
            "file": TOKENIZER_FILE,
            "kind": "byte-level BPE" if train_vocab is not None else model,
            "trained": train_vocab is not None,
            "source": str(tokenizer) if tokenizer is not None else None,
            "lossless": encoded["lossless"],
        }
        meta["settings"] = {
            "train_bpe": train_vocab,
            "min_frequency": min_frequency,
            "piece_chars": piece_chars,
            "separator": _SEPARATOR,
        }
        (out / TOKENS_META).unlink(missing_ok=True)  # the old metadata never pairs new tokens
        os.chmod(tmp, READABLE)
        os.replace(tmp, out / TOKENS_FILE)
        tok_text = tok_text or tok.to_str(pretty=True)
        meta["tokenizer"]["sha256"] = hashlib.sha256(tok_text.encode()).hexdigest()
        for name, text in ((TOKENIZER_FILE, tok_text), (TOKENS_META, _meta_text(meta))):
            atomic_write_text(out / name, text)  # tokens.json last: it marks the folder done
            os.chmod(out / name, READABLE)
    except ScalinglabError:
        raise
    except OSError as e:
        what = "no space left on device" if e.errno in NO_SPACE else e.strerror or str(e)
        raise DataError(f"--out: cannot write in {out} ({what})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _metadata(
    sources: list[Source], stream: TextStream, tok: Tokenizer, dtype: np.dtype, n_tokens: int
) -> dict[str, Any]:
    """The contents of tokens.json (docs/data.md) but `tokenizer` and `settings`."""
    import tokenizers

    from scalinglab import __version__

    inputs = [
        {"input": s.name, "root": str(s.root), "files": len(s.files)}
        | {"binary_files_skipped": s.binary_skipped}
        for s in sources
    ]
    return {
        "format": TOKENS_FORMAT,
        "tokens_file": TOKENS_FILE,
        "dtype": dtype.name,
        "byte_order": "little",
        "vocab_size": vocab_size_of(tok),
        "n_tokens": n_tokens,
        "n_bytes": stream.n_bytes,
        "bytes_per_token": round(stream.n_bytes / max(1, n_tokens), 4),
        "n_files": len(stream.files),
        "corpus_sha256": stream.sha256,
        "invalid_utf8_bytes": stream.invalid_bytes,
        "versions": {"scalinglab": __version__, "tokenizers": tokenizers.__version__},
        "inputs": inputs,
        "files": stream.files,
    }
