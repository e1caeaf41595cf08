"""``scalinglab report``: one self-contained HTML page per sweep or results table.

The page holds the sweep YAML, every trial, the fitted law with its intervals and
diagnostics, approaches 1/2/3 with their agreement, the back-test, learning curves and the
compute-optimal frontier, figures as inline SVG and no external URL (docs/report.md).
``report.cli`` holds the command and imports nothing heavy; ``report.page`` builds the page.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # lazily: the command group imports report.cli without pandas
        from scalinglab.report import page

        return getattr(page, name)
    raise AttributeError(f"module 'scalinglab.report' has no attribute {name!r}")
