"""Matching a rain source to a dataset's labelled images: the rule lives in :mod:`downstream.rain_sources` (task
training reads rainy copies the same way); re-exported here for the benchmark."""

from __future__ import annotations

from downstream.rain_sources import match_rain_source

__all__ = ["match_rain_source"]
