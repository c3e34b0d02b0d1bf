"""The HTML of a report: one self-contained page (styles inline, images as ``data:`` URIs, a
Content-Security-Policy that lets it load nothing from anywhere), built from sections, tables, image
galleries and a scatter plot. No data is read here: callers hand in what to show, so every report
(``curator show --html``, a dedup report) looks the same.

Everything shown is escaped here; the elements carry ``data-*`` attributes (``data-image-id``,
``data-similarity``, ``data-count``) so that tests and scripts can read the numbers back from the DOM.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from curator_cli import __version__
from curator_cli.io.commit import write_atomic
from curator_cli.report.thumbnails import Thumbnail

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")

_STYLE = """
:root { --ink: #1d2430; --muted: #5f6b7a; --line: #dde3ea; --card: #ffffff; --bg: #f4f6f9; --accent: #2f6fd6;
        --warn: #b3261e; --ok: #1e7b3a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
header { background: #1d2430; color: #fff; padding: 18px 28px 14px; }
header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
header p { margin: 0; color: #c8d1dc; }
header nav { margin-top: 10px; display: flex; gap: 16px; flex-wrap: wrap; }
header nav a { color: #9cc2ff; text-decoration: none; }
main { padding: 18px 28px 40px; max-width: 1400px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
          margin: 0 0 18px; }
section h2 { margin: 0 0 12px; font-size: 17px; }
section p.note { color: var(--muted); margin: 6px 0 10px; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 12px; }
.stat { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.stat .value { font-size: 20px; font-weight: 600; }
.stat .label { color: var(--muted); font-size: 12px; }
.stat.warn .value { color: var(--warn); }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; word-break: break-all; }
.timebar { display: flex; height: 22px; border-radius: 4px; overflow: hidden; margin: 6px 0 8px; }
.timebar span { display: block; height: 100%; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; color: var(--muted); font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.plot { width: 100%; max-width: 760px; height: auto; border: 1px solid var(--line); border-radius: 6px;
        background: #fbfcfd; }
.group { border-top: 1px solid var(--line); padding: 12px 0 6px; }
.group:first-of-type { border-top: none; padding-top: 0; }
.group h3 { margin: 0 0 8px; font-size: 14px; font-weight: 600; }
.group h3 small { color: var(--muted); font-weight: 400; }
.tiles { display: flex; gap: 10px; flex-wrap: wrap; align-items: flex-start; }
.tile { margin: 0; width: 140px; }
.tile .frame { width: 140px; height: 140px; border: 1px solid var(--line); border-radius: 6px; display: flex;
               align-items: center; justify-content: center; background: #eef1f5; overflow: hidden; }
.tile.query .frame { border: 3px solid var(--accent); }
.tile.marked .frame { border: 3px solid var(--ok); }
.tile img { max-width: 100%; max-height: 100%; display: block; }
.tile .missing { color: var(--warn); font-size: 11px; padding: 8px; text-align: center; word-break: break-word; }
.tile figcaption { font-size: 11px; color: var(--muted); margin-top: 4px; word-break: break-all; }
.tile figcaption b { color: var(--ink); font-size: 12px; }
.badge { display: inline-block; background: var(--ok); color: #fff; border-radius: 3px; padding: 0 5px;
         font-size: 11px; }
.tile.query .badge { background: var(--accent); }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 24px; }
"""


@dataclass
class Section:
    """One card of the page: a heading, its anchor, and the HTML inside (already escaped)."""

    title: str
    body: str
    anchor: str = ""


@dataclass
class Tile:
    """One image of a gallery: its thumbnail (or why there is none), a label (an id), a detail line
    (a caption, a shard), a similarity to show, and a badge; ``marked`` frames it (the image a dedup
    group keeps), ``query`` frames it as the image the others are compared with."""

    thumbnail: Thumbnail
    label: str
    detail: str = ""
    similarity: float | None = None
    badge: str = ""
    marked: bool = False
    query: bool = False


@dataclass
class TileGroup:
    """A row of tiles under a heading: a query and its neighbours, or a duplicate group."""

    title: str
    tiles: list[Tile] = field(default_factory=list)
    note: str = ""


def esc(text: object) -> str:
    """``text`` as HTML text or attribute value."""
    return html.escape(str(text), quote=True)


def stats_html(items: list[tuple[str, object, bool]]) -> str:
    """A row of big numbers: (label, value, warn?) each; the value is in ``data-count``."""
    cells = []
    for label, value, warn in items:
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        cells.append(f'<div class="stat{" warn" if warn else ""}" data-label="{esc(label)}" data-count="{esc(value)}">'
                     f'<div class="value">{esc(shown)}</div><div class="label">{esc(label)}</div></div>')
    return f'<div class="stats">{"".join(cells)}</div>'


def table_html(header: list[str], rows: list[list[object]], numeric: set[int] | None = None) -> str:
    """A table; cells are escaped text, except values given as :class:`Raw` HTML. Columns in
    ``numeric`` are right-aligned."""
    numeric = numeric or set()

    def cell(tag: str, i: int, value: object) -> str:
        cls = ' class="num"' if i in numeric else ""
        return f"<{tag}{cls}>{value.html if isinstance(value, Raw) else esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class Raw:
    """HTML that is already safe, for a table cell."""

    html: str


def time_split_html(parts: dict[str, float]) -> str:
    """A stacked bar of where the time went (seconds by part) and its legend."""
    total = sum(v for v in parts.values() if v > 0)
    if total <= 0:
        return '<p class="note">No time recorded.</p>'
    spans, legend = [], []
    for (name, seconds), colour in zip(parts.items(), PALETTE):
        share = max(seconds, 0) / total
        spans.append(f'<span style="width:{share * 100:.2f}%;background:{colour}" '
                     f'title="{esc(name)} {seconds:.1f}s"></span>')
        legend.append(f'<span data-part="{esc(name)}" data-seconds="{seconds:.3f}"><i style="background:{colour}"></i>'
                      f"{esc(name)} {seconds:.1f}s ({share * 100:.0f}%)</span>")
    return f'<div class="timebar">{"".join(spans)}</div><div class="legend">{"".join(legend)}</div>'


def thumbnail_html(thumbnail: Thumbnail, alt: str) -> str:
    """The image, or a box saying why there is none."""
    if thumbnail.data_uri:
        return (f'<img src="{thumbnail.data_uri}" alt="{esc(alt)}" width="{thumbnail.width}" '
                f'height="{thumbnail.height}" loading="eager">')
    reason = thumbnail.missing or "no image"
    return f'<div class="missing" data-missing="{esc(reason)}">{esc(reason)}</div>'


def tile_html(tile: Tile) -> str:
    classes = "tile" + (" query" if tile.query else "") + (" marked" if tile.marked else "")
    similarity = f' data-similarity="{tile.similarity:.4f}"' if tile.similarity is not None else ""
    lines = []
    if tile.badge:
        lines.append(f'<span class="badge">{esc(tile.badge)}</span> ')
    if tile.similarity is not None:
        lines.append(f'<b class="sim">{tile.similarity:.3f}</b> ')
    lines.append(f'<span class="id">{esc(tile.label)}</span>')
    if tile.detail:
        lines.append(f'<br><span class="detail">{esc(tile.detail)}</span>')
    return (f'<figure class="{classes}" data-image-id="{esc(tile.label)}"{similarity}>'
            f'<div class="frame">{thumbnail_html(tile.thumbnail, tile.label)}</div>'
            f'<figcaption>{"".join(lines)}</figcaption></figure>')


def gallery_html(groups: list[TileGroup]) -> str:
    """Rows of image tiles, one :class:`TileGroup` each."""
    parts = []
    for group in groups:
        note = f" <small>{esc(group.note)}</small>" if group.note else ""
        parts.append(f'<div class="group"><h3>{esc(group.title)}{note}</h3>'
                     f'<div class="tiles">{"".join(tile_html(t) for t in group.tiles)}</div></div>')
    return f'<div class="gallery">{"".join(parts)}</div>'


def scatter_svg(points: np.ndarray, titles: list[str], highlights: dict[int, str] | None = None,
                axis_labels: tuple[str, str] = ("", ""), width: int = 760, height: int = 520) -> str:
    """An SVG scatter plot of ``points`` (N x 2), each with a hover title; the points in
    ``highlights`` (index -> label) drawn larger and labelled."""
    highlights = highlights or {}
    pad = 34
    if len(points) == 0:
        return '<p class="note">No embedded rows to plot.</p>'
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    xy = (points - lo) / span
    xs = pad + xy[:, 0] * (width - 2 * pad)
    ys = height - pad - xy[:, 1] * (height - 2 * pad)
    dots = [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6"><title>{esc(t)}</title></circle>'
            for i, (x, y, t) in enumerate(zip(xs, ys, titles)) if i not in highlights]
    marks = []
    for i, label in highlights.items():
        marks.append(f'<g class="highlight" data-image-id="{esc(titles[i])}"><circle cx="{xs[i]:.1f}" cy="{ys[i]:.1f}" '
                     f'r="6" fill="#2f6fd6" stroke="#fff" stroke-width="1.5"><title>{esc(titles[i])}</title></circle>'
                     f'<text x="{xs[i] + 8:.1f}" y="{ys[i] + 4:.1f}" font-size="12" fill="#1d2430">'
                     f'{esc(label)}</text></g>')
    x_label, y_label = axis_labels
    return (f'<svg class="plot" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'data-points="{len(points)}">'
            f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
            'stroke="#dde3ea"/>'
            f'<g fill="#4e79a7" fill-opacity="0.55">{"".join(dots)}</g>{"".join(marks)}'
            f'<text x="{width / 2:.0f}" y="{height - 8}" text-anchor="middle" font-size="12" fill="#5f6b7a">'
            f'{esc(x_label)}</text>'
            f'<text x="12" y="{height / 2:.0f}" text-anchor="middle" font-size="12" fill="#5f6b7a" '
            f'transform="rotate(-90 12 {height / 2:.0f})">{esc(y_label)}</text></svg>')


def render_page(title: str, sections: list[Section], subtitle: str = "") -> str:
    """The whole page: a header with ``title``, ``subtitle`` and links to the sections, then the sections."""
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections if s.anchor)
    body = "".join(f'<section{f" id={chr(34)}{esc(s.anchor)}{chr(34)}" if s.anchor else ""}>'
                   f"<h2>{esc(s.title)}</h2>{s.body}</section>" for s in sections)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body><header><h1>{esc(title)}</h1>"
            f"{f'<p>{esc(subtitle)}</p>' if subtitle else ''}<nav>{nav}</nav></header>"
            f"<main>{body}</main><footer>Made by curator {esc(__version__)} on {made}. Self-contained: "
            "opens from a file, loads nothing.</footer></body></html>\n")


def write_page(path: Path, page: str) -> None:
    """Write the page to ``path`` whole (through a temporary file), making its folder if needed.
    Characters beyond ASCII are written as character references, whatever the locale's encoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page.encode("ascii", "xmlcharrefreplace").decode("ascii"))
