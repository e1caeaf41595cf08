"""A persistent JAX compilation cache for the fit programs, in the user's cache directory.

``scalinglab fit`` compiles its multi-start L-BFGS programs in every new process; XLA's
compilation is most of a cold command's time. ``enable_fit_cache`` points JAX's persistent
cache at ``$XDG_CACHE_HOME/scalinglab/jax`` (``~/.cache/scalinglab/jax`` when unset), so the
second command loads the compiled programs instead. ``$SCALINGLAB_FIT_CACHE`` or the
command's ``--cache-dir`` choose another directory; ``off`` disables it. A directory that
cannot be used costs one warning line and the fit runs uncached.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "SCALINGLAB_FIT_CACHE"
OFF = ("off", "none", "no", "0", "false", "")
_CACHE_WARNING = "persistent compilation cache"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/scalinglab/jax``, or ``~/.cache/scalinglab/jax`` (XDG's default)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "scalinglab" / "jax"


def resolve_cache_dir(option: str | Path | None = None) -> Path | None:
    """The directory to use: ``option``, else ``$SCALINGLAB_FIT_CACHE``, else the default.

    ``None`` when the chosen value is ``off`` (or ``none``, ``0``, empty).
    """
    value = option if option is not None else os.environ.get(ENV_VAR)
    if value is None:
        return default_cache_dir()
    if str(value).strip().lower() in OFF:
        return None
    return Path(value).expanduser()


def usable(path: Path) -> str | None:
    """None when ``path`` is (or can be made) a writable directory, otherwise why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except FileExistsError:
        return "exists and is not a directory"
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


_OPTIONS = (
    "jax_enable_compilation_cache",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@contextmanager
def fit_cache(option: str | Path | None = None) -> Iterator[Path | None]:
    """JAX's persistent compilation cache on for the ``with`` block; yields the directory or None.

    Every program is cached, however small or quick to compile (the fit's are both). Enter
    it before the first compilation. On an unusable directory, prints one ``warning:`` line
    on stderr naming the setting and the directory, and the block runs uncached. Cache
    read/write errors during the block are one line too (``one_cache_warning``). JAX's
    previous settings are restored on exit, so a caller in the same process (a test, a
    notebook) keeps its own.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    path = resolve_cache_dir(option)
    why = None if path is None else usable(path)
    if why is not None:
        label = "--cache-dir" if option is not None else f"${ENV_VAR}"
        if option is None and os.environ.get(ENV_VAR) is None:
            label = "compilation cache"
        print(
            f"warning: {label} {path}: {why}; fitting without a compilation cache",
            file=sys.stderr,
        )
        path = None
    before = {name: getattr(jax.config, name) for name in _OPTIONS}
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()  # a cache opened earlier in this process (another directory) is dropped
    try:
        with one_cache_warning(path):
            yield path
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        cc.reset_cache()


@contextmanager
def one_cache_warning(path: Path | None) -> Iterator[None]:
    """Collapse JAX's per-entry cache read/write warnings into one line on stderr.

    A cache directory that fails mid-run (disk full, permissions changed) would otherwise
    print one warning per compiled program. Other warnings pass through unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        yield
    failed = [w for w in caught if _CACHE_WARNING in str(w.message)]
    for w in caught:
        if w not in failed:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if failed:
        first = str(failed[0].message).splitlines()[0]
        print(
            f"warning: compilation cache {path}: {len(failed)} entries could not be read or"
            f" written ({first})",
            file=sys.stderr,
        )
