"""Fixtures of the downstream tests: ultralytics offline for every test, and one training thread on request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one core (the test machine is shared) and restore the thread count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
