"""Run-directory files (see README.md, "Run directory"): atomic writes, JSON, JSON lines.

Every file is written atomically (temp file, fsync, rename) so a crash leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from scalinglab.errors import DiskFullError, RunDirError  # noqa: F401  (re-exported)

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_error(path: str | Path, e: OSError, what: str = "cannot write") -> RunDirError:
    """The one-line error for a failed write: DiskFullError when the device is full."""
    if e.errno in NO_SPACE:
        return DiskFullError(f"{path}: {what}: no space left on device (disk full or quota)")
    return RunDirError(f"{path}: {what} ({e.strerror or e})")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder, fsync and rename."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise write_error(path, e) from None
    _fsync_dir(path.parent)


def overwrite_in_place(path: str | Path, text: str) -> None:
    """Rewrite an existing file's bytes without a temp file. Not atomic: only for recording a
    failure when the disk is full, where a small file's allocated block can still be reused."""
    try:
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from None


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Compact, strict JSON (non-finite floats become null)."""
    return json.dumps(_clean(obj), allow_nan=False, separators=(",", ":"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; None when it does not exist; a ``RunDirError`` naming the file when
    it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: not valid JSON ({e}); move it aside or delete it") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file (a torn last line from a crash is ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def rewrite_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Atomically replace a JSON-lines file (used to cut it back to a checkpoint on resume)."""
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in records))


def append_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append records and fsync; lines past the last checkpoint are cut back on resume."""
    if not records:
        return
    try:
        with open(path, "a") as f:
            f.write("".join(dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from None
