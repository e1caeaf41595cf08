"""HTML building blocks of the report: escaped text, number cells that carry their JSON value,
sortable tables, and the page shell with its inline CSS and scripts (no external URL).

A number taken from the fit JSON is written as ``<span data-key="params.alpha"
data-value="0.1363..." data-fmt=".5g">0.13633</span>``: the text is what ``scalinglab fit``
prints, ``data-value`` the exact JSON value, ``data-key`` its path in the JSON, so a test (or a
reader's script) can check the page against the fit without parsing prose.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

ASSETS = resources.files("scalinglab.report") / "assets"


def esc(text: Any) -> str:
    """``text`` as HTML text (quotes escaped too, so it is safe in attributes)."""
    return html.escape(str(text), quote=True)


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted as ``scalinglab fit`` prints it; "n/a" for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v, spec) for v in value) + "]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return format(value, spec)


def lookup(doc: Any, key: str) -> Any:
    """The value at dotted path ``key`` in ``doc`` (list items by index); KeyError if absent."""
    for part in key.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def value(doc: dict[str, Any], key: str, spec: str = "") -> str:
    """A ``<span>`` with the JSON value at ``key``, printed with ``spec``; "n/a" when absent."""
    try:
        v = lookup(doc, key)
    except (KeyError, IndexError, TypeError, ValueError):
        return '<span class="muted">n/a</span>'
    return (
        f'<span data-key="{esc(key)}" data-value="{esc(json.dumps(v))}" data-fmt="{esc(spec)}">'
        f"{esc(fmt(v, spec))}</span>"
    )


def tagged(doc: dict[str, Any], key: str, shown: str) -> str:
    """``shown`` (HTML) marked with the JSON value at ``key`` it states in words."""
    try:
        v = lookup(doc, key)
    except (KeyError, IndexError, TypeError, ValueError):
        return shown
    return f'<span data-key="{esc(key)}" data-value="{esc(json.dumps(v))}">{shown}</span>'


@dataclass
class Cell:
    """One table cell: HTML content, a numeric sort key, and CSS classes."""

    html: str
    sort: float | None = None
    cls: str = ""


def text(x: Any, cls: str = "") -> Cell:
    """A cell of plain text."""
    return Cell(esc("" if x is None else x), cls=cls)


def num(x: Any, spec: str, cls: str = "num") -> Cell:
    """A numeric cell printed with ``spec`` that sorts by its value (missing: last)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        f = math.nan
    if math.isnan(f):
        return Cell("", sort=None, cls=cls)
    return Cell(esc(fmt(x, spec)), sort=f, cls=cls)


def keyed(doc: dict[str, Any], key: str, spec: str, cls: str = "num") -> Cell:
    """A cell holding the JSON value at ``key`` (see ``value``), sorting by it when numeric."""
    try:
        v = lookup(doc, key)
    except (KeyError, IndexError, TypeError, ValueError):
        v = None
    sort = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    return Cell(value(doc, key, spec), sort=sort, cls=cls)


def table(
    table_id: str,
    columns: list[tuple[str, str]],
    rows: list[list[Cell]],
    *,
    sortable: bool = True,
    highlight: set[int] | None = None,
) -> str:
    """A table; ``columns`` are (name used in #sort= links, header text). Sortable by click."""
    numeric = {i for i in range(len(columns)) if rows and all("num" in r[i].cls for r in rows if r)}
    head = "".join(
        f'<th data-col="{esc(c)}"{" class=num" if i in numeric else ""}>{esc(h)}</th>'
        for i, (c, h) in enumerate(columns)
    )
    body = []
    for n, row in enumerate(rows):
        cells = "".join(f"<td{_attrs(c)}>{c.html}</td>" for c in row)
        body.append(f"<tr{' class=hl' if highlight and n in highlight else ''}>{cells}</tr>")
    cls = "sortable" if sortable else "plain"
    return (
        f'<div class="scroll"><table id="{esc(table_id)}" class="{cls}"><thead><tr>{head}'
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _attrs(c: Cell) -> str:
    out = f' class="{c.cls}"' if c.cls else ""
    if c.sort is not None and math.isfinite(c.sort):
        out += f' data-sort="{c.sort!r}"'
    return out


def ul(items: list[str], cls: str = "") -> str:
    """A list of already-escaped HTML items (nothing when empty)."""
    if not items:
        return ""
    attr = f' class="{cls}"' if cls else ""
    return f"<ul{attr}>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def card(title: str, big: str, detail: str, level: str) -> str:
    """One verdict of the at-a-glance panel; ``level`` is ok, warn or bad (the colour)."""
    return (
        f'<div class="card {level}" data-card="{esc(title)}"><b>{esc(title)}</b>'
        f'<div class="big">{big}</div><div class="note">{detail}</div></div>'
    )


def asset(name: str) -> str:
    """The text of one of the report's CSS/JS files (package data)."""
    return (ASSETS / name).read_text(encoding="utf-8")


def script_json(element_id: str, doc: Any) -> str:
    """``doc`` embedded as a JSON data block (not executed; ``</`` escaped)."""
    data = json.dumps(doc, indent=1, default=float).replace("</", "<\\/")
    return f'<script type="application/json" id="{esc(element_id)}">{data}</script>'


def page(title: str, header: str, body: str, data: str = "") -> str:
    """The whole document: inline CSS, the error catcher first, the sorting script last."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        f"<script>{asset('errors.js')}</script>"
        f"<style>{asset('report.css')}</style></head>\n<body>"
        '<div id="js-errors" data-count="0" hidden></div>'
        f"<header>{header}</header>\n<main>{body}</main>\n{data}"
        f"<script>{asset('sort.js')}</script></body></html>\n"
    )
