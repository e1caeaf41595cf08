"""Laws: natural forms against numpy, log-space forms against the natural ones."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab.analysis import laws
from scalinglab.analysis.diagnostics import bounds_reached

HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
KAPLAN = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
N = np.array([1e7, 3e8, 7e9, 1e11])
D = np.array([2e9, 5e10, 1e11, 3e12])


def test_natural_forms_match_numpy():
    with jax.enable_x64(True):
        got = np.asarray(laws.chinchilla(N, D, **HOFFMANN))
        k = np.asarray(laws.kaplan(N, D, **KAPLAN))
        p = np.asarray(laws.power_law(N, 2.0, 30.0, 0.3))
        p0 = np.asarray(laws.power_law_no_offset(N, 30.0, 0.3))
    h = HOFFMANN
    np.testing.assert_allclose(got, h["E"] + h["A"] / N ** h["alpha"] + h["B"] / D ** h["beta"])
    ratio = KAPLAN["alpha_N"] / KAPLAN["alpha_D"]
    want_k = ((KAPLAN["N_c"] / N) ** ratio + KAPLAN["D_c"] / D) ** KAPLAN["alpha_D"]
    np.testing.assert_allclose(k, want_k, rtol=1e-12)
    np.testing.assert_allclose(p, 2.0 + 30.0 * N**-0.3)
    np.testing.assert_allclose(p0, 30.0 * N**-0.3)


@pytest.mark.parametrize(
    ("name", "params", "inputs"),
    [
        ("chinchilla", HOFFMANN, (N, D)),
        ("kaplan", KAPLAN, (N, D)),
        ("power", {"E": 2.0, "A": 30.0, "alpha": 0.3}, (N,)),
        ("power_no_offset", {"A": 30.0, "alpha": 0.3}, (N,)),
    ],
)
def test_log_forms_are_log_of_natural(name, params, inputs):
    law = laws.get_law(name)
    natural = {
        "chinchilla": laws.chinchilla,
        "kaplan": laws.kaplan,
        "power": laws.power_law,
        "power_no_offset": laws.power_law_no_offset,
    }[name]
    raw = law.to_raw(params)
    assert law.to_natural(raw) == pytest.approx(params, rel=1e-12)
    logX = np.stack([np.log(x) for x in inputs], axis=1)
    with jax.enable_x64(True):
        got = np.asarray(law.log_fn(jnp.asarray(raw), jnp.asarray(logX)))
        want = np.log(np.asarray(natural(*inputs, **params)))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_hoffmann_allocation_exponents():
    a, b, G = laws.chinchilla_allocation(406.4, 410.7, 0.34, 0.28)
    assert round(a, 3) == 0.452
    assert round(b, 3) == 0.548
    assert a + b == pytest.approx(1.0)
    assert pytest.approx((0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)) == G


def _documented_grids() -> dict[str, dict[str, tuple[list[float], tuple[float, float] | None]]]:
    """docs/analysis.md, "Start grids and bounds": per law and raw parameter, the start values
    and the natural parameter's bounds."""
    text = (Path(__file__).parents[1] / "docs" / "analysis.md").read_text()
    section = text.split("### Start grids and bounds")[1].split("\n#")[0]
    out: dict = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        law, raw, values, bounds = (c.strip().strip("`") for c in line.strip("|").split("|"))
        starts = [
            float(np.log(float(v[4:]))) if v.startswith("log ") else float(v)
            for v in (x.strip() for x in values.split(","))
        ]
        lo_hi = tuple(float(b) for b in bounds.split(",")) if bounds else None
        out.setdefault(law, {})[raw] = (starts, lo_hi)
    return out


def test_start_grids_and_bounds_are_the_documented_ones():
    documented = _documented_grids()
    assert set(documented) == set(laws.LAWS)
    for name, law in laws.LAWS.items():
        rows = documented[name]
        assert tuple(rows) == law.raw_names, name
        for raw, (starts, _) in rows.items():
            assert np.allclose(law.grid[raw], starts, rtol=0, atol=1e-12), (name, raw)
        bounded = {
            natural: rows[raw][1]
            for raw, natural in zip(law.raw_names, law.param_names, strict=True)
            if rows[raw][1] is not None
        }
        assert law.bounds == bounded, name
    grid = laws.CHINCHILLA.start_grid()  # Hoffmann's grid as replicated by Besiroglu et al.
    assert grid.shape == (4500, 5) and len(np.unique(grid, axis=0)) == 4500


@pytest.mark.parametrize("name", list(laws.LAWS))
def test_bound_check_flags_exactly_the_values_outside_the_documented_range(name):
    law = laws.LAWS[name]
    rows = _documented_grids()[name]
    inside = {n: 1.0 for n in law.param_names}
    for raw, natural in zip(law.raw_names, law.param_names, strict=True):
        if rows[raw][1] is None:
            continue
        lo, hi = rows[raw][1]
        for value, flagged in (
            (lo - 0.01, True),
            (lo + 0.01, False),
            (hi - 0.01, False),
            (hi + 0.01, True),
        ):
            got = bounds_reached(law, {**inside, natural: value})
            assert (natural in got) == flagged, (natural, value)


def test_unknown_law_lists_choices():
    with pytest.raises(ValueError, match="chinchilla, kaplan, power"):
        laws.get_law("hoffmann")
