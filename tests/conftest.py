from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated(isolation):
    """Every test starts from default settings and an empty registry."""
    return isolation
