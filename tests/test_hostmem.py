"""scalinglab keeps XLA's per-call host buffers in warm memory (`scalinglab.hostmem`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scalinglab.hostmem import ENV, retain_host_memory, worker_env

# A jitted function whose two dot operands (sin x, cos x) are 32 MB temporaries: glibc's
# defaults serve blocks that large with mmap and unmap them on free, so every call faults them
# in again; under `retain` a call reuses the previous call's pages once the heap has grown.
_PROBE = """
import json, resource
import scalinglab  # configures the allocator, as every entry point does, before JAX starts
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.sin(x).T @ jnp.cos(x))
x = jnp.ones((8192, 512), jnp.float32)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(6):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        f(x).block_until_ready()
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 4)
print(json.dumps({"temp_pages": temp / 4096, "faults_per_call": faults}))
"""


def _probe(setting: str) -> dict:
    env = {**os.environ, ENV: setting, "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_retain_stops_per_call_page_faults() -> None:
    retained, system = _probe("retain"), _probe("system")
    assert retained["temp_pages"] >= 8192  # the probe really has a large temporary buffer
    # System defaults: each call faults (most of) the temporaries in again.
    assert min(system["faults_per_call"][2:]) > 0.5 * system["temp_pages"]
    # Retained: after the heap has grown, calls fault (almost) nothing.
    assert min(retained["faults_per_call"][2:]) < 0.05 * retained["temp_pages"]


def test_system_setting_leaves_the_allocator_alone() -> None:
    assert retain_host_memory({ENV: "system"}) is False


def test_bad_setting_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"SCALINGLAB_HOST_MEMORY='fast'.*retain, system"):
        retain_host_memory({ENV: "fast"})


def test_worker_env_carries_the_settings_to_processes_started_elsewhere() -> None:
    env = worker_env({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    tunables = env["GLIBC_TUNABLES"].split(":")
    assert tunables[0] == "glibc.malloc.tcache_count=0"  # the user's own tunables are kept
    assert {"glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0"} <= set(tunables)
    assert worker_env({ENV: "system"}) == {ENV: "system"}
