"""The kv-cache study's helpers (`scalinglab.experiments.decode_timing`) against hand computations:
lengths, per-token arithmetic, the equal-tokens check on planted differences, paired speedups
and the growth exponents of synthetic timings. The models themselves run in the study's smoke."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalinglab.experiments import decode_timing as dt


def test_lengths_halve_from_the_model_maximum() -> None:
    assert dt.generation_lengths(256) == [16, 32, 64, 128, 256]
    assert dt.generation_lengths(16) == [8, 16]  # the smoke's 16-token model
    assert dt.generation_lengths(100, count=2) == [50, 100]
    with pytest.raises(ValueError, match="max_seq_len 7"):
        dt.generation_lengths(7)


def test_per_token_seconds_counts_new_tokens_only() -> None:
    assert dt.per_token_seconds(1.2, 4, 16) == pytest.approx(0.1)  # 12 new tokens
    with pytest.raises(ValueError, match="no new token"):
        dt.per_token_seconds(1.0, 4, 4)


def test_compare_tokens_finds_a_planted_difference() -> None:
    a = np.arange(24).reshape(2, 12)
    assert dt.compare_tokens(a, a.copy()) == {"same": True, "n_diff": 0, "first_diff": None}
    b = a.copy()
    b[1, 7] += 1
    b[1, 9] += 1
    assert dt.compare_tokens(a, b) == {"same": False, "n_diff": 2, "first_diff": 7}
    assert dt.compare_tokens(a, a[:, :11])["same"] is False


def _times(k_cached: float, k_uncached: float, ratio0: float, rounds: int = 5) -> pd.DataFrame:
    """Synthetic rounds: per-token time c * L^k per path (noise shared by both paths of a
    round, so each round's speedup is exact), 4-token prompts."""
    rows = []
    for r in range(rounds):
        noise = 1.0 + 0.1 * r
        for n in (16, 32, 64, 128):
            per = {"cached": 1e-3 * n**k_cached, "uncached": ratio0 * 1e-3 * n**k_uncached}
            for path, t in per.items():
                call = noise * t * (n - 4)
                rows.append(
                    {
                        "round": r,
                        "length": n,
                        "path": path,
                        "call_s": call,
                        "per_token_s": dt.per_token_seconds(call, 4, n),
                        "d_model": 8,
                        "N": 1000,
                    }
                )
    return pd.DataFrame(rows)


def test_summary_recovers_exponents_and_paired_speedups() -> None:
    s = dt.summarise(_times(0.0, 1.0, 2.0))["d8"]
    for path, k in (("cached", 0.0), ("uncached", 1.0)):
        g = s["growth"][path]
        for fit in ("exponent_all", "exponent_long"):
            assert g[fit]["value"] == pytest.approx(k, abs=1e-9)
            lo, hi = g[fit]["ci"]  # rounds resampled per length: the noise widens it
            assert lo < k < hi and hi - lo < 0.3
        assert g["exponent_long"]["lengths"] == [32, 64, 128]
        assert g["longest_over_shortest"] == pytest.approx(8.0**k)
    # uncached / cached = 2 L in every round, despite the round-to-round noise.
    for x in s["speedup"]:
        assert x["median"] == pytest.approx(2.0 * x["length"])
        assert x["ci"] == pytest.approx([2.0 * x["length"]] * 2)


def test_speedup_vs_size_is_the_log_slope_at_the_longest_length() -> None:
    small = _times(0.0, 1.0, 2.0)
    big = _times(0.0, 1.0, 20.0).assign(d_model=16, N=100_000)  # 10x the speedup, 2 decades
    t = dt.speedup_vs_size(pd.concat([small, big], ignore_index=True))
    assert t["length"] == 128
    assert t["slope_per_decade"] == pytest.approx(0.5) and t["resolved"] is True


def test_median_ci_of_repeats() -> None:
    m = dt.median_ci([3.0, 1.0, 2.0, 10.0, 2.5])
    assert m["median"] == 2.5 and m["n"] == 5
    assert 1.0 <= m["ci"][0] <= 2.5 <= m["ci"][1] <= 10.0
    assert dt.median_ci([4.0] * 3)["ci"] == [4.0, 4.0]
