"""Markdown rendering of the report blocks (GitHub-flavoured pipe tables, best values in bold)."""

from __future__ import annotations

from collections.abc import Sequence

from reports.document import Block, Bullets, Figure, Heading, Paragraph, TableBlock
from reports.tables import Table, Value


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    """One table: bold title, notes, the pipe table (groups folded into the headers), footnotes."""
    k = len(table.index)
    lines = [f"**{table.title}**", ""]
    lines += [*(f"_{n}_" for n in table.notes), ""] if table.notes else []
    lines.append("| " + " | ".join(_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join([":---"] * k + ["---:" if c.numeric else ":---" for c in table.columns]) + "|")
    for shown, (_, entries) in zip(table.display_index(), table.rows, strict=True):
        values = []
        for e, col in zip(entries, table.columns, strict=True):
            if isinstance(e, Value):
                text = e.text(col.digits)
                values.append(f"**{text}**" if e.best else text)
            else:
                values.append(e)
        lines.append("| " + " | ".join(_cell(c) for c in [*shown, *values]) + " |")
    if table.footnotes:
        lines += ["", *(f"<sub>{f}</sub>  " for f in table.footnotes)]
    return "\n".join(lines)


def render_markdown(blocks: Sequence[Block]) -> str:
    """The whole report as Markdown; figures are linked by their relative paths."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, TableBlock):
            parts.append(table_markdown(block.table))
        elif isinstance(block, Figure):
            parts.append(f"![{block.path.stem}]({block.path.as_posix()})\n\n_{block.caption}_")
    return "\n\n".join(parts) + "\n"
