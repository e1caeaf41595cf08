"""Byte-level corpora: the Python standard library's own sources, local text, token memmaps.

Text is tokenised as raw bytes (vocab 256, one uint8 token per byte), so no tokenizer needs
training or downloading and every machine with Python has the default corpus.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from pathlib import Path

import numpy as np

from scalinglab.config import DataConfig
from scalinglab.data.batches import Corpus, DataError

BYTE_VOCAB = 256
FILE_SEPARATOR = b"\n"  # between concatenated files, so one file's last line ends
_INSTALLED = frozenset({"site-packages", "dist-packages"})  # stdlib: keep installs out
_BINARY_PROBE = 8192  # a NUL byte in this many leading bytes marks a file as binary (as git does)


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


def stdlib_corpus(cfg: DataConfig) -> Corpus:
    """Every `*.py` under the standard library (not site-packages), sorted, as bytes."""
    root = stdlib_dir()
    paths = _walk(root, ".py", _INSTALLED) if root.is_dir() else []
    if not paths:
        raise DataError(
            f"data.source: stdlib found no Python source files under {root} (this Python "
            "ships none); use data.source: synthetic"
        )
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


def _load_tokens(path: Path) -> np.ndarray:
    """Open a `.bin` (raw uint16) or `.npy` token file as a read-only memmap."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(f"data.path: {path} is a folder; data.source tokens needs a .bin or .npy")
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
    """A pre-tokenised stream, memory-mapped; vocab_size is the largest token id + 1."""
    path = _existing(cfg.path)
    tokens = _load_tokens(path)
    if cfg.max_tokens is not None:
        tokens = tokens[: cfg.max_tokens]
    lo, hi = (int(tokens.min()), int(tokens.max())) if tokens.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise DataError(
            f"data.path: {path} holds token ids in [{lo}, {hi}]; allowed range is [0, 65535]"
        )
    info = {"source": "tokens", "path": str(path), "files": 1, "max_token": hi}
    return Corpus(tokens, hi + 1, info)
