"""Byte-level corpora: the Python standard library's own sources, local text, token memmaps.

Text is tokenised as raw bytes (vocab 256, one uint8 token per byte), so no tokenizer needs
training or downloading and every machine with Python has the default corpus. Subword tokens
come from `scalinglab data tokenize` (`scalinglab.data.tokenize`): a folder holding the token
memmap and `tokens.json`, its metadata, which `data.source: tokens` reads (docs/data.md).
"""

from __future__ import annotations

import json
import os
import platform
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from scalinglab.config import DataConfig
from scalinglab.data.batches import Corpus, DataError

BYTE_VOCAB = 256
FILE_SEPARATOR = b"\n"  # between concatenated files, so one file's last line ends
_INSTALLED = frozenset({"site-packages", "dist-packages"})  # stdlib: keep installs out
_BINARY_PROBE = 8192  # a NUL byte in this many leading bytes marks a file as binary (as git does)

# A tokens folder (`scalinglab data tokenize`): the memmap and its metadata.
TOKENS_FILE = "tokens.bin"
TOKENS_META = "tokens.json"
TOKENS_FORMAT = "scalinglab-tokens/1"
TOKEN_DTYPES = ("uint16", "uint32")


def encode(text: str | bytes) -> np.ndarray:
    """Byte tokens (uint8) of a string (UTF-8) or bytes."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(data, dtype=np.uint8)


def decode(tokens: np.ndarray) -> str:
    """Text of byte tokens; invalid UTF-8 (a window may cut a character) is replaced."""
    return np.asarray(tokens, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")


def stdlib_dir() -> Path:
    """Directory of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(root: Path, suffix: str = "", skip_dirs: frozenset[str] = frozenset()) -> list[Path]:
    """Files under `root` (ending in `suffix`) sorted by relative POSIX path, so the order is
    the same on every machine; skips hidden entries, `__pycache__` and `skip_dirs`."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in skip_dirs and d != "__pycache__" and d[0] != "."
        ]
        for name in filenames:
            if name.startswith(".") or not name.endswith(suffix):
                continue
            path = Path(dirpath, name)
            if path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def _read(path: Path, field: str = "data.path") -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{field}: cannot read {path} ({e.strerror})") from None


def _concat(
    paths: list[Path], max_tokens: int | None, skip_binary: bool, field: str = "data.path"
) -> tuple[bytes, int, int]:
    """Concatenate files (FILE_SEPARATOR between them) up to `max_tokens` bytes.

    Returns (bytes, files used, binary files skipped); reading stops once the cap is met.
    """
    parts: list[bytes] = []
    total = used = skipped = 0
    for path in paths:
        if max_tokens is not None and total >= max_tokens:
            break
        data = _read(path, field)
        if skip_binary and b"\0" in data[:_BINARY_PROBE]:
            skipped += 1
            continue
        if parts:
            parts.append(FILE_SEPARATOR)
            total += len(FILE_SEPARATOR)
        parts.append(data)
        total += len(data)
        used += 1
    corpus = b"".join(parts)
    if max_tokens is not None:
        corpus = corpus[:max_tokens]
    return corpus, used, skipped


def stdlib_files(field: str = "data.source") -> list[Path]:
    """The default corpus's files: every `*.py` under the standard library (not
    site-packages), sorted by relative path; none is an error naming `field`."""
    root = stdlib_dir()
    paths = _walk(root, ".py", _INSTALLED) if root.is_dir() else []
    if not paths:
        raise DataError(
            f"{field}: stdlib found no Python source files under {root} (this Python "
            "ships none); use data.source: synthetic"
        )
    return paths


def looks_binary(path: Path, field: str = "data.path") -> bool:
    """Whether a file holds a NUL byte in its first `_BINARY_PROBE` bytes (as git decides)."""
    try:
        with path.open("rb") as f:
            return b"\0" in f.read(_BINARY_PROBE)
    except OSError as e:
        raise DataError(f"{field}: cannot read {path} ({e.strerror})") from None


def text_files(path: Path, field: str = "data.path") -> tuple[list[Path], int]:
    """The text files under a folder (sorted, hidden and binary ones skipped) and the number
    of binary files skipped; what `data.source: text` reads from a folder."""
    paths = _walk(path)
    kept = [p for p in paths if not looks_binary(p, field)]
    return kept, len(paths) - len(kept)


def stdlib_corpus(cfg: DataConfig) -> Corpus:
    """Every `*.py` under the standard library (not site-packages), sorted, as bytes."""
    root = stdlib_dir()
    paths = stdlib_files()
    data, used, _ = _concat(paths, cfg.max_tokens, skip_binary=False, field="data.source")
    info = {
        "source": "stdlib",
        "path": str(root),
        "files": used,
        "python": platform.python_version(),
    }
    return Corpus(np.frombuffer(data, dtype=np.uint8), BYTE_VOCAB, info)


def _existing(path_str: str | None) -> Path:
    if not path_str:
        raise DataError("data.path: required for this data.source")
    path = Path(path_str).expanduser()
    if not path.exists():  # also a broken symlink
        raise DataError(f"data.path: {path} does not exist")
    return path


def text_corpus(cfg: DataConfig) -> Corpus:
    """A text file, or every non-hidden, non-binary file under a folder, sorted, as bytes."""
    path = _existing(cfg.path)
    if path.is_dir():
        paths = _walk(path)
        data, used, skipped = _concat(paths, cfg.max_tokens, skip_binary=True)
        if used == 0:
            raise DataError(f"data.path: {path} holds no readable text files")
    else:
        with path.open("rb") as f:
            head = f.read(_BINARY_PROBE)
        if b"\0" in head:
            raise DataError(
                f"data.path: {path} looks binary (a NUL byte in its first {_BINARY_PROBE} bytes);"
                " data.source text reads text files (token arrays: data.source tokens)"
            )
        data, used, skipped = _concat([path], cfg.max_tokens, skip_binary=False)
    info = {"source": "text", "path": str(path), "files": used, "binary_files_skipped": skipped}
    return Corpus(np.frombuffer(data, dtype=np.uint8), BYTE_VOCAB, info)


@dataclass(frozen=True)
class TokenMeta:
    """What `tokens.json` says about a tokens folder: where the memmap is and how to read it."""

    folder: Path
    tokens_file: Path
    dtype: np.dtype
    vocab_size: int
    n_tokens: int
    raw: dict[str, Any]


def _meta_file(path: Path) -> Path | None:
    """The `tokens.json` that describes `path` (a tokens folder, or the memmap inside one)."""
    if path.is_dir():
        return path / TOKENS_META
    if path.suffix.lower() == ".bin" and (path.parent / TOKENS_META).is_file():
        return path.parent / TOKENS_META
    return None


@lru_cache(maxsize=64)
def _parse_meta(meta_path: Path, _stamp: tuple[int, ...]) -> TokenMeta:
    """Read and check a `tokens.json` (cached per file version: sweeps validate many configs)."""
    where = f"data.path: {meta_path}"
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{where}: cannot read ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != TOKENS_FORMAT:
        raise DataError(f"{where}: not a tokens metadata file (format {TOKENS_FORMAT!r})")
    name, dtype, vocab, n = (raw.get(k) for k in ("tokens_file", "dtype", "vocab_size", "n_tokens"))
    if not isinstance(name, str) or Path(name).name != name or dtype not in TOKEN_DTYPES:
        raise DataError(f"{where}: bad tokens_file or dtype (allowed: {', '.join(TOKEN_DTYPES)})")
    if not (isinstance(vocab, int) and vocab >= 2 and isinstance(n, int) and n >= 0):
        raise DataError(f"{where}: vocab_size and n_tokens must be integers (got {vocab}, {n})")
    if vocab > np.iinfo(dtype).max + 1:
        raise DataError(f"{where}: vocab_size {vocab} does not fit {dtype} tokens")
    folder = meta_path.parent
    little = np.dtype(dtype).newbyteorder("<")  # the writer's byte order on every machine
    return TokenMeta(folder, folder / name, little, vocab, n, raw)


def token_meta(path_str: str | Path | None) -> TokenMeta | None:
    """The metadata of a tokens folder written by `scalinglab data tokenize` (`path_str`: the
    folder or its memmap); None for a plain `.bin`/`.npy`, or a path that does not exist yet
    (the data source reports that when it loads)."""
    if not path_str:
        return None
    path = Path(path_str).expanduser()
    meta_path = _meta_file(path) if path.exists() else None
    if meta_path is None:
        return None
    try:
        st = meta_path.stat()
    except OSError:
        if path.is_dir():
            raise DataError(
                f"data.path: {path} is a folder without {TOKENS_META}; data.source tokens needs "
                "a .bin, a .npy or a folder written by `scalinglab data tokenize`"
            ) from None
        return None
    meta = _parse_meta(meta_path, (st.st_ino, st.st_mtime_ns, st.st_size))  # a rewrite: a miss
    if path.is_file() and path.resolve() != meta.tokens_file.resolve():
        return None  # a .bin beside some other tokens folder's metadata: read as plain uint16
    return meta


def _open_meta_tokens(meta: TokenMeta) -> np.ndarray:
    """The memmap a `tokens.json` describes, checked against its dtype and token count."""
    path = meta.tokens_file
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"data.path: cannot read {path} ({e.strerror})") from None
    want = meta.n_tokens * meta.dtype.itemsize
    if size != want:
        raise DataError(
            f"data.path: {path} holds {size} bytes but {TOKENS_META} says {meta.n_tokens} "
            f"{meta.dtype} tokens ({want} bytes); re-run `scalinglab data tokenize`"
        )
    if size == 0:
        return np.zeros(0, dtype=meta.dtype)
    try:
        return np.memmap(path, dtype=meta.dtype, mode="r")
    except OSError as e:
        raise DataError(f"data.path: cannot read {path} ({e.strerror})") from None


def _load_tokens(path: Path) -> np.ndarray:
    """Open a `.bin` (raw uint16) or `.npy` token file as a read-only memmap."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(
            f"data.path: {path} is a folder without {TOKENS_META}; data.source tokens needs a "
            ".bin, a .npy or a folder written by `scalinglab data tokenize`"
        )
    if suffix == ".bin":
        size = path.stat().st_size
        if size % 2:
            raise DataError(f"data.path: {path} has an odd byte count; a .bin holds uint16 tokens")
        if size == 0:
            return np.zeros(0, dtype=np.uint16)
        try:
            return np.memmap(path, dtype=np.uint16, mode="r")
        except OSError as e:
            raise DataError(f"data.path: cannot read {path} ({e.strerror})") from None
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except OSError as e:
            raise DataError(f"data.path: cannot read {path} ({e.strerror})") from None
        except ValueError as e:
            raise DataError(f"data.path: {path} is not a valid .npy array ({e})") from None
        if arr.dtype.kind not in "iu":
            raise DataError(f"data.path: {path} holds {arr.dtype} values; tokens must be integers")
        return arr.reshape(-1)
    raise DataError(f"data.path: {path} must end in .bin (uint16) or .npy (integer array)")


def token_corpus(cfg: DataConfig) -> Corpus:
    """A pre-tokenised stream, memory-mapped. A tokens folder's vocab_size is its metadata's
    (the tokenizer's); a plain `.bin`/`.npy` has the largest token id + 1."""
    path = _existing(cfg.path)
    meta = token_meta(path)
    tokens = _open_meta_tokens(meta) if meta is not None else _load_tokens(path)
    if cfg.max_tokens is not None:
        tokens = tokens[: cfg.max_tokens]
    lo, hi = (int(tokens.min()), int(tokens.max())) if tokens.size else (0, 0)
    limit = meta.vocab_size - 1 if meta is not None else 65535
    if lo < 0 or hi > limit:
        raise DataError(
            f"data.path: {path} holds token ids in [{lo}, {hi}]; allowed range is [0, {limit}]"
        )
    info: dict[str, Any] = {"source": "tokens", "path": str(path), "files": 1, "max_token": hi}
    if meta is None:
        return Corpus(tokens, hi + 1, info)
    tokenizer = meta.raw.get("tokenizer")
    info["tokenizer"] = tokenizer.get("kind") if isinstance(tokenizer, dict) else None
    info["files"] = meta.raw.get("n_files", 1)
    return Corpus(tokens, meta.vocab_size, info)
