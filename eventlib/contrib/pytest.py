"""pytest fixtures for eventlib users, installed as the ``eventlib`` plugin.

- ``eventlib_logged``: an :class:`~eventlib.testing.EventRecorder` recording
  the events a test logs, without running their handlers;
- ``eventlib_processed``: the same, running the handlers in the test process.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventlib.testing import EventRecorder, capture_events


@pytest.fixture
def eventlib_logged() -> Iterator[EventRecorder]:
    """Record the events logged during the test; handlers do not run."""
    with capture_events() as recorder:
        yield recorder


@pytest.fixture
def eventlib_processed() -> Iterator[EventRecorder]:
    """Record the events logged during the test and run their handlers."""
    with capture_events(run_handlers=True) as recorder:
        yield recorder
