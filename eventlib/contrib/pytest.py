"""pytest fixtures for eventlib users, installed as the ``eventlib`` plugin.

- ``eventlib_logged``: an :class:`~eventlib.testing.EventRecorder` recording
  the events a test logs, without running their handlers;
- ``eventlib_processed``: the same, running the handlers in the test process.

With either, a test fails when eventlib reports a failure while it runs (a
handler that raised for the last time, data ``log()`` or the worker
refused), with each failure's message and traceback, unless the code that
fails runs inside ``with eventlib_processed.expect_failures():`` (or
``eventlib_logged``'s).  Dead letters recorded during the test go to an SQLite
file of the test's own, in pytest's temporary directory (the
``dead_letter_url`` setting points there while the test runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from eventlib.testing import EventRecorder, capture_events, dead_letters_in

__all__ = ["eventlib_logged", "eventlib_processed", "pytest_runtest_call"]

#: The recorders of a test's fixtures, which its call checks for failures.
_RECORDERS = pytest.StashKey[list[EventRecorder]]()


@pytest.fixture
def eventlib_logged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EventRecorder]:
    """Record the events logged during the test; handlers do not run."""
    with _recording(request, tmp_path_factory, "eventlib_logged") as recorder:
        yield recorder


@pytest.fixture
def eventlib_processed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EventRecorder]:
    """Record the events logged during the test and run their handlers."""
    with _recording(request, tmp_path_factory, "eventlib_processed") as recorder:
        yield recorder


@contextmanager
def _recording(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[EventRecorder]:
    directory = tmp_path_factory.mktemp("eventlib-dead-letters")
    run_handlers = name == "eventlib_processed"
    with dead_letters_in(directory), capture_events(run_handlers=run_handlers) as recorder:
        recorder.name = name
        request.node.stash.setdefault(_RECORDERS, []).append(recorder)
        yield recorder
    # Failures after the test's call (in the teardown of other fixtures).
    _fail_on_failures(recorder)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Fail a test that passed when eventlib reported failures meanwhile;
    when it failed on its own, add them to its error."""
    recorders = item.stash.get(_RECORDERS, [])
    try:
        result = yield
    except BaseException as error:
        for recorder in recorders:
            try:
                recorder.assert_no_failures()
            except AssertionError as failures:
                error.add_note(str(failures))
        raise
    for recorder in recorders:
        _fail_on_failures(recorder)
    return result


def _fail_on_failures(recorder: EventRecorder) -> None:
    try:
        recorder.assert_no_failures()
    except AssertionError as error:
        message = str(error)
    else:
        return
    # The message says it all; the plugin's own traceback would not help.
    pytest.fail(message, pytrace=False)
