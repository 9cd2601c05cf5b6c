"""derainbench: the composition root. The ``derainbench`` command dispatches to derain/downstream/eval/reports."""

__version__ = "0.2.0"
