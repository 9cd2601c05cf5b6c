"""A self-contained HTML rendering of the report: CSS inline and every figure embedded as a data URI, so the one
file opens offline anywhere (the PNGs are also written alongside)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path

from reports.document import Block, Bullets, Figure, Heading, Paragraph, TableBlock
from reports.tables import Table, Value

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { padding: 0.25em 0.7em; }
thead tr:last-child th { border-bottom: 1px solid #444; }
thead tr:first-child th { border-top: 2px solid #444; }
tbody tr:last-child td { border-bottom: 2px solid #444; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th.group { border-bottom: 1px solid #999; }
.caption { font-weight: 600; margin-top: 1.4em; }
.note, .footnote { font-size: 0.85em; color: #555; margin: 0.2em 0; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
"""


def table_html(table: Table) -> str:
    """One table with a spanning group header row when columns are grouped."""
    grouped = any(c.group for c in table.columns)
    head = []
    if grouped:
        cells = [f'<th rowspan="2">{escape(h)}</th>' for h in table.index]
        for group, width in table.group_spans():
            cells.append(
                f'<th class="group" colspan="{width}">{escape(group)}</th>' if group else f'<th colspan="{width}"></th>'
            )
        head.append("<tr>" + "".join(cells) + "</tr>")
        head.append("<tr>" + "".join(f"<th>{escape(c.label)}</th>" for c in table.columns) + "</tr>")
    else:
        head.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in table.headers) + "</tr>")
    body = []
    for shown, (_, entries) in zip(table.display_index(), table.rows, strict=True):
        cells = [f"<td>{escape(s)}</td>" for s in shown]
        for e, col in zip(entries, table.columns, strict=True):
            if isinstance(e, Value):
                text = escape(e.text(col.digits))
                cells.append(f'<td class="num">{f"<b>{text}</b>" if e.best else text}</td>')
            else:
                cells.append(f'<td class="num">{escape(e)}</td>' if col.numeric else f"<td>{escape(e)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts = [f'<p class="caption">{escape(table.title)}</p>']
    parts += [f'<p class="note">{escape(n)}</p>' for n in table.notes]
    parts.append(f"<table><thead>{''.join(head)}</thead><tbody>{''.join(body)}</tbody></table>")
    parts += [f'<p class="footnote">{escape(f)}</p>' for f in table.footnotes]
    return "\n".join(parts)


def _image_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(blocks: Sequence[Block], folder: Path, title: str) -> str:
    """The whole report as one HTML page; figure paths are read relative to ``folder`` and embedded."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            parts.append(table_html(block.table))
        elif isinstance(block, Figure):
            parts.append(
                f'<figure><img src="{_image_uri(folder / block.path)}" alt="{escape(block.caption)}">'
                f"<figcaption>{escape(block.caption)}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
