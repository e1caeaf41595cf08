"""The fit's persistent compilation cache: where it lives, that it is reused, bad directories."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from scalinglab.analysis import cache

SRC = Path(__file__).resolve().parents[1] / "src"


def test_cache_dir_follows_xdg_env_and_option(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.resolve_cache_dir() == tmp_path / "xdg" / "scalinglab" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # XDG: relative paths are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.resolve_cache_dir() == tmp_path / "home" / ".cache" / "scalinglab" / "jax"
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
    assert cache.resolve_cache_dir() == tmp_path / "env"
    assert cache.resolve_cache_dir(tmp_path / "opt") == tmp_path / "opt"  # option wins
    for off in ("off", "OFF", "none", "0", ""):
        assert cache.resolve_cache_dir(off) is None
    monkeypatch.setenv(cache.ENV_VAR, "off")
    assert cache.resolve_cache_dir() is None


def test_usable_names_the_problem(tmp_path: Path) -> None:
    assert cache.usable(tmp_path / "new" / "dir") is None
    assert (tmp_path / "new" / "dir").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    assert cache.usable(f) == "exists and is not a directory"
    assert cache.usable(f / "below") is not None


def test_cache_errors_collapse_to_one_line(capsys, tmp_path: Path) -> None:
    # Other warnings pass through.
    with pytest.warns(UserWarning, match="unrelated"), cache.one_cache_warning(tmp_path):
        for i in range(5):
            warnings.warn(f"Error writing persistent compilation cache entry {i}", stacklevel=1)
        warnings.warn("unrelated", stacklevel=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "5 entries could not be read or written" in err[0] and str(tmp_path) in err[0]


def test_fit_cache_restores_jax_settings(tmp_path: Path) -> None:
    import jax

    before = [getattr(jax.config, n) for n in cache._OPTIONS]
    with cache.fit_cache(tmp_path / "c") as path:
        assert path == tmp_path / "c"
        assert jax.config.jax_compilation_cache_dir == str(path)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert [getattr(jax.config, n) for n in cache._OPTIONS] == before


def _table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["N,D,loss"]
    for C in (1e18, 1e19, 1e20):
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            N = 0.6 * (C / 6) ** 0.5 * f
            D = C / (6 * N)
            loss = (1.69 + 406.4 / N**0.34 + 410.7 / D**0.28) * np.exp(0.01 * rng.normal())
            rows.append(f"{N:.17g},{D:.17g},{loss:.17g}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _fit(table: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argv = [sys.executable, "-m", "scalinglab.cli", "fit", str(table), "--starts", "20"]
    argv += ["--bootstrap", "0", "--approach", "3", *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def _entries(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def test_second_command_reuses_the_cache(tmp_path: Path) -> None:
    table = _table(tmp_path / "runs.csv")
    cdir = tmp_path / "cache"
    first = _fit(table, "--cache-dir", str(cdir))
    assert first.returncode == 0, first.stderr
    written = _entries(cdir)
    assert len(written) >= 3  # init, the chunked L-BFGS pass, at least one more program
    second = _fit(table, "--cache-dir", str(cdir))
    assert second.returncode == 0, second.stderr
    assert _entries(cdir) == written  # every program was found: nothing new written
    assert second.stdout == first.stdout


def test_unusable_cache_dir_is_one_warning_and_the_fit_still_runs(tmp_path: Path) -> None:
    table = _table(tmp_path / "runs.csv")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    res = _fit(table, "--cache-dir", str(blocker / "jax"))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: --cache-dir")
    assert str(blocker / "jax") in lines[0]
    assert "parameter" in res.stdout and "alpha" in res.stdout
