"""Keep XLA:CPU's per-step buffers in warm memory when a step's buffers are large.

XLA:CPU allocates an executable's temporary buffer on every call and frees it afterwards
(about 100 MB for the d_model 128 benchmark step). glibc serves a block above 32 MB with
``mmap`` (and a worker thread's arena, capped at 64 MB, falls back to ``mmap`` too), so each
step unmaps it and the next one faults every page back in, zero-filled by the kernel: 27,000
faults and a quarter of the d_model 128 step on 2 cores (benchmarks/README.md, item 14).
``retain`` makes every thread allocate from the main heap, never through ``mmap``, and never
trims that heap, so a step reuses the pages the previous one touched. It has costs: the
process keeps its peak heap, and threads contend for the one heap, which made compilation
about 20% slower and the quickstart's tiny models (buffers under 32 MB, which glibc already
reuses) slower too. So the default, ``auto``, retains only when the first trial of a process
has large buffers (`estimated_step_temp_bytes`).

glibc fixes a thread's arena when the thread first allocates, so this only works before JAX
starts its threads (`configure_host_memory` is a no-op once a JAX backend exists) and before
any other thread allocates: an early thread keeps an arena that XLA's threads may then share.
The trainer calls it at the start of `run_trial` (`scalinglab train` before its progress
bar); the CLI, the trainer and the sweep executors import no pandas before that, since
pyarrow starts a thread. Sweep workers get the choice for their largest trial at process
start, as ``GLIBC_TUNABLES`` (`worker_env`).
``SCALINGLAB_HOST_MEMORY`` = ``auto`` (default), ``retain`` or ``system`` (glibc's defaults).
Anything other than Linux with glibc is left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from typing import Any

ENV = "SCALINGLAB_HOST_MEMORY"
CHOICES = ("auto", "retain", "system")
# glibc's largest dynamic mmap threshold: freed blocks below it are kept and reused anyway.
RETAIN_ABOVE_BYTES = 32 * 2**20

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
_TUNABLES = (
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",
    f"glibc.malloc.trim_threshold={_NEVER_TRIM}",
)


def host_memory_setting(environ: Mapping[str, str] | None = None) -> str:
    """``auto``, ``retain`` or ``system`` from ``SCALINGLAB_HOST_MEMORY`` (default ``auto``).

    Raises ValueError naming the variable and the allowed values for anything else.
    """
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(
            f"environment variable {ENV}={env[ENV]!r}: allowed values are {', '.join(CHOICES)}"
        )
    return choice


def estimated_step_temp_bytes(model: Any, batch_size: int, seq_len: int) -> int:
    """Rough size of a train step's temporary buffer, from the model's family
    (`Family.step_temp_bytes`; transformers: activations kept for the backward, within 5% of
    XLA's figure for the benchmark GPT, 101.7 MB at d_model 128; tested. Image families: 0)."""
    # Imported here: this module is imported early by entry points that only need the setting.
    from scalinglab.families import get_family

    return get_family(model).step_temp_bytes(model, batch_size, seq_len)


def _wants_retain(setting: str, temp_bytes: int) -> bool:
    """``retain``, or ``auto`` for a step with at least `RETAIN_ABOVE_BYTES` of temporaries."""
    return setting == "retain" or (setting == "auto" and temp_bytes >= RETAIN_ABOVE_BYTES)


def trial_temp_bytes(cfg: Any) -> int:
    """`estimated_step_temp_bytes` of a TrialConfig's train step."""
    return estimated_step_temp_bytes(cfg.model, cfg.train.batch_size, cfg.data.seq_len)


def jax_started() -> bool:
    """Whether a JAX backend (and so its thread pools) exists in this process."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(bridge is not None and getattr(bridge, "_backends", None))


def configure_host_memory(temp_bytes: int, environ: Mapping[str, str] | None = None) -> str:
    """Apply the setting for a process whose steps need about `temp_bytes` of temporaries.

    Returns what was done: ``retain``, ``system`` (nothing changed) or ``unchanged`` (a JAX
    backend already runs, so an earlier choice stands). Raises ValueError for a bad
    ``SCALINGLAB_HOST_MEMORY``.
    """
    setting = host_memory_setting(environ)
    if jax_started():
        return "unchanged"
    return "retain" if _wants_retain(setting, temp_bytes) and _mallopt_retain() else "system"


def _mallopt_retain() -> bool:
    if not _is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)


def worker_env(temp_bytes: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a worker process whose runtime starts threads before our code runs
    (a Ray worker): the same choice as `configure_host_memory`, as ``GLIBC_TUNABLES``, which
    glibc reads at process start."""
    env = os.environ if environ is None else environ
    setting = host_memory_setting(env)
    if not _wants_retain(setting, temp_bytes):
        return {ENV: setting}
    tunables = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), *_TUNABLES) if t)
    return {ENV: setting, "GLIBC_TUNABLES": tunables}


EXEC_MARK = "SCALINGLAB_HOST_MEMORY_EXEC"  # set in a process this module re-executed


def tunables_applied(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process started with the retain settings in ``GLIBC_TUNABLES``."""
    env = os.environ if environ is None else environ
    have = set(env.get("GLIBC_TUNABLES", "").split(":"))
    return all(t in have for t in _TUNABLES)


def restart_with_choice(temp_bytes: int, environ: Mapping[str, str] | None = None) -> str:
    """Apply the choice at process start: the command-line entry point calls this once it
    knows the trial, before any training.

    When the setting asks to retain and this process did not start with the glibc tunables,
    the process re-executes itself (same pid, same arguments) with them in its environment,
    so every thread, whatever started it and whenever, shares the one retained heap; nothing
    then depends on what was imported first. Returns ``retain`` (tunables in force) or the
    setting otherwise; it does not return when it re-executes. Only Linux with glibc.
    """
    env = dict(os.environ if environ is None else environ)
    if tunables_applied(env):
        return "retain"
    choice = worker_env(temp_bytes, env)
    if "GLIBC_TUNABLES" not in choice or env.get(EXEC_MARK) or not _is_glibc():
        return choice[ENV]
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
    os.execve(sys.executable, argv, {**env, **choice, EXEC_MARK: "1"})
    raise AssertionError("unreachable")  # pragma: no cover


def _is_glibc() -> bool:
    """Linux with glibc: the only platform whose allocator settings this module knows."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False
