"""Waiting with a deadline: what the examples and the benchmarks poll with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Call ``condition`` every ``interval`` seconds until it returns
    something truthy, and return that; raise ``TimeoutError`` saying
    ``what`` was awaited once ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
