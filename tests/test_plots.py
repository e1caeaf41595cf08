"""Plots: every figure builds, carries labelled axes with units, and saves as PNG and SVG."""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scalinglab.analysis import plots
from scalinglab.analysis.approach import Approach
from scalinglab.analysis.fit import Fit
from scalinglab.analysis.optimal import approach2, approach3, isoflop_minima

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
FIT = Fit.from_params("chinchilla", **TRUE)


def runs_table():
    rows = []
    for C in np.logspace(17, 19, 3):
        for N in 0.6 * (C / 6) ** 0.45 * np.geomspace(0.2, 5, 5):
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C, "loss": float(FIT.predict(N, D))})
    return pd.DataFrame(rows)


def curves_table(runs):
    rows = []
    for i, r in runs.iterrows():
        for f in (0.25, 0.5, 1.0):
            D = r.D * f
            rows.append(
                {
                    "trial_id": i,
                    "N": r.N,
                    "D": D,
                    "C": 6 * r.N * D,
                    "loss": float(FIT.predict(r.N, D)),
                }
            )
    return pd.DataFrame(rows)


def labels(fig):
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes if ax.get_xlabel()]


def test_each_figure_has_labelled_log_axes():
    runs = runs_table()
    figs = [
        plots.loss_vs_compute(runs, FIT, curves=curves_table(runs)),
        plots.isoflop(runs, isoflop_minima(runs)),
        plots.optimal_allocation(
            {2: approach2(runs, bootstrap=10), 3: approach3(FIT)}, (1e17, 1e21)
        ),
        plots.observed_vs_predicted(runs, FIT),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        assert labels(fig)
    assert labels(figs[0])[0] == ("compute C (FLOPs)", "loss (nats/token)")
    assert figs[0].axes[0].get_xscale() == "log" and figs[0].axes[0].get_yscale() == "log"
    assert "(FLOPs)" in labels(figs[2])[0][0] and len(figs[2].axes) == 2


def test_plot_all_writes_png_and_svg(tmp_path):
    runs = runs_table()
    aps = {2: approach2(runs, bootstrap=10), 3: approach3(FIT)}
    paths = plots.plot_all(runs, tmp_path / "figs", FIT, aps)
    names = {p.name for p in paths}
    for stem in ("loss_vs_compute", "isoflop", "optimal_allocation", "observed_vs_predicted"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)
    assert (tmp_path / "figs" / "isoflop.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "figs" / "isoflop.svg").read_text()


def band_at(fig, x):
    """(low, high) of the first band on the N_opt axis at compute ``x``."""
    coll = fig.axes[0].collections[0]
    v = coll.get_paths()[0].vertices
    ys = v[np.isclose(v[:, 0], x), 1]
    return ys.min(), ys.max()


def test_allocation_band_honours_the_confidence():
    rng = np.random.default_rng(0)
    s = np.column_stack([rng.normal(0, 0.5, 500), rng.normal(0.5, 0.05, 500)] * 2)
    ap = Approach("2: IsoFLOP", 0.5, 0.5, 0.0, 0.0, s)
    c = (1e17, 1e21)
    # Independent: percentiles of N_opt = exp(k + a ln C) over the draws at C = 1e21.
    nopt = np.exp(s[:, 0] + s[:, 1] * np.log(1e21))
    for conf, pct in ((0.5, (25, 75)), (0.95, (2.5, 97.5))):
        lo, hi = band_at(plots.optimal_allocation({2: ap}, c, confidence=conf), 1e21)
        np.testing.assert_allclose((lo, hi), np.percentile(nopt, pct), rtol=1e-9)
    ap.confidence = 0.5  # without an explicit confidence, the approach's own is used
    lo, hi = band_at(plots.optimal_allocation({2: ap}, c), 1e21)
    np.testing.assert_allclose((lo, hi), np.percentile(nopt, (25, 75)), rtol=1e-9)


def test_axes_name_the_N_that_C_counts():
    """Under Kaplan counting the fits use N_nonembed; the figures must say so."""
    runs = runs_table()
    runs.attrs["n_column"] = "N_nonembed"
    cbar = plots.loss_vs_compute(runs, FIT).axes[-1].get_ylabel()
    assert cbar == "parameters N (N_nonembed)"
    assert plots.isoflop(runs, isoflop_minima(runs)).axes[0].get_xlabel().endswith("(N_nonembed)")
    ap = approach2(runs, bootstrap=10)
    ap.extra["N"] = "N_nonembed"
    fig = plots.optimal_allocation({2: ap}, (1e17, 1e21))
    assert fig.axes[0].get_ylabel() == "optimal parameters N_opt (N_nonembed)"
    plain = runs_table()  # a table whose N is plain N keeps the plain label
    assert plots.loss_vs_compute(plain, FIT).axes[-1].get_ylabel() == "parameters N"
