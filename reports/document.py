"""The report as a list of blocks (headings, paragraphs, lists, tables, figures) that each format renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reports.tables import Table


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str] = field(default_factory=list)


@dataclass
class TableBlock:
    table: Table


@dataclass
class Figure:
    """An image file (path relative to the report folder) with its caption."""

    path: Path
    caption: str


Block = Heading | Paragraph | Bullets | TableBlock | Figure
