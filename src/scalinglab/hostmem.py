"""Keep XLA:CPU's per-step buffers in warm memory instead of re-faulting them every step.

XLA:CPU allocates an executable's temporary buffer on every call and frees it afterwards
(about 100 MB for the d_model 128 benchmark step). With glibc's defaults a block that large
is served by ``mmap`` (or by a worker thread's arena, which caps at 64 MB and falls back to
``mmap``), so each step unmaps it and the next one faults about 27,000 fresh, kernel-zeroed
pages back in: a sixth to a third of the step on 2 cores (benchmarks/README.md, "Train step").
`retain_host_memory` makes every thread allocate from the main heap, never through ``mmap``,
and never trims that heap, so a step reuses the pages the previous one touched. The cost is
that the process keeps its peak heap size until it exits.

`scalinglab/__init__.py` calls it on import, before JAX starts its threads (glibc fixes the
arena limit when a second thread first allocates). A process that runs threads before it
imports scalinglab (a Ray worker) gets the same settings from `worker_env` at its start.
``SCALINGLAB_HOST_MEMORY=system`` keeps the allocator's defaults. Anything other than Linux
with glibc is left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping

ENV = "SCALINGLAB_HOST_MEMORY"
CHOICES = ("retain", "system")

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
    """``retain`` or ``system`` from ``SCALINGLAB_HOST_MEMORY`` (default ``retain``).

    Raises ValueError naming the variable and the allowed values for anything else.
    """
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "retain").strip().lower() or "retain"
    if choice not in CHOICES:
        raise ValueError(
            f"environment variable {ENV}={env[ENV]!r}: allowed values are {', '.join(CHOICES)}"
        )
    return choice


def worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that give a process started elsewhere the same allocator settings.

    glibc reads ``GLIBC_TUNABLES`` at process start, before any thread exists, which is the
    only reliable moment for a worker whose runtime starts threads before our code runs.
    """
    env = os.environ if environ is None else environ
    if host_memory_setting(env) == "system":
        return {ENV: "system"}
    tunables = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), *_TUNABLES) if t)
    return {"GLIBC_TUNABLES": tunables}


def retain_host_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Configure glibc malloc as described above; returns whether it was applied.

    Raises ValueError naming the variable when ``SCALINGLAB_HOST_MEMORY`` is neither
    ``retain`` (the default) nor ``system``.
    """
    if host_memory_setting(environ) == "system" or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
