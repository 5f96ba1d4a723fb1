"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scenario import ScenarioLoader


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[ScenarioLoader]:
    """Load a scenario from tests/scenarios/<name>/v1.py under a unique module name."""
    loader = ScenarioLoader(tmp_path)
    try:
        yield loader
    finally:
        loader.close()
