"""Helpers for your own tests: record the events your code logs, and see what
failed.

::

    from eventlib.testing import capture_events

    def test_refund_is_logged():
        with capture_events() as events:
            refund(order)
        events.assert_logged('shop.Refund', {'order_id': order.id}, partial=True)

While a recorder is active, ``log()`` validates and serializes as usual but
hands the payload to the recorder instead of Celery; no broker is needed.  The
recorded data is what a handler would see, after the JSON round trip.  With
``run_handlers=True`` the handlers also run, in the calling process, through
:func:`eventlib.process`.  Recorders nest; the innermost one records.

A recorder also keeps the failures eventlib reports while it is active (what
it logs at ERROR level about an event: a handler that failed for the last
time, data ``log()`` or the worker refused), with their tracebacks, and it
knows the events ``log(..., on_commit=True)`` left waiting for a database
commit.  The pytest fixtures ``eventlib_logged`` and ``eventlib_processed``
(installed with eventlib as a pytest plugin, :mod:`eventlib.contrib.pytest`)
give a recorder of each kind for one test, fail the test on those failures
unless it expects them, and keep dead letters in a temporary database.

:func:`reset` puts eventlib's process state back as a new process has it
(settings, counters, caches, connections), and :func:`isolated` runs a block
on a fresh eventlib, forgetting at its end what the block declared.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from . import _state, broadcast, conf, dispatch
from .discovery import clear_cache
from .processing import ProcessResult, process
from .sending import sender
from .serialization import deserialize_event, dumps, loads

__all__ = [
    "COMMIT_ADVICE",
    "CapturedEvent",
    "EventRecorder",
    "Failure",
    "capture_events",
    "dead_letters_in",
    "forget_event_classes",
    "isolated",
    "reset",
]

logger = logging.getLogger("eventlib")

#: What the failure of an assertion says about events waiting for a commit.
COMMIT_ADVICE = (
    "run the commit callbacks: with pytest-django, "
    "django_capture_on_commit_callbacks(execute=True); in a Django TestCase, "
    "self.captureOnCommitCallbacks(execute=True); or use a test that commits "
    "(transaction=True, TransactionTestCase)"
)


@dataclass(frozen=True)
class CapturedEvent:
    """One event logged while a recorder was active."""

    name: str
    id: str
    #: The data as a handler receives it (after serialization and back).
    data: dict[str, Any]
    created_at: datetime
    #: The result of running the handlers, or ``None`` when they did not run.
    result: ProcessResult | None = None


@dataclass(frozen=True)
class Failure:
    """Something eventlib reported as failed while a recorder was active."""

    #: The event's name.
    event: str
    #: The event's id, when eventlib knew it (an event whose payload could
    #: not be read has none).
    event_id: str | None
    #: The handler's qualified name; ``None`` when the whole event failed.
    handler: str | None
    #: eventlib's message, such as ``Handler shop.events.Refund.charge
    #: failed on event shop.Refund (id ...)``.
    message: str
    #: The handler's traceback; for a failure without one (refused data),
    #: the line of code that logged the event.
    traceback: str

    def __str__(self) -> str:
        return f"{self.message}\n{self.traceback.rstrip()}"


class EventRecorder:
    """The events logged while it is active, in the order they were logged,
    and the failures eventlib reported meanwhile."""

    def __init__(self, *, run_handlers: bool = False) -> None:
        self.run_handlers = run_handlers
        #: What failure messages call the recorder (the pytest fixtures
        #: give their own name).
        self.name = "recorder"
        self.events: list[CapturedEvent] = []
        #: Every failure, in the order they happened, expected or not.
        self.failures: list[Failure] = []
        self._unreported: list[Failure] = []
        self._expected: list[list[Failure]] = []
        self._waiting: set[object] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str, payload: str) -> None:
        envelope = deserialize_event(payload)
        captured = CapturedEvent(name, envelope.id, envelope.data, envelope.created_at)
        # Recorded before its handlers run, so that events they log come after it.
        index = len(self.events)
        self.events.append(captured)
        if self.run_handlers:
            self.events[index] = replace(captured, result=process(name, payload))

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[CapturedEvent]:
        return iter(self.events)

    def named(self, name: str) -> list[CapturedEvent]:
        """The recorded events called ``name``."""
        return [event for event in self.events if event.name == name]

    def assert_logged(
        self, name: str, data: Mapping[str, Any] | None = None, *, partial: bool = False
    ) -> CapturedEvent:
        """Return the first event called ``name`` whose data equals ``data``
        (when given, compared after the same JSON round trip: a tuple matches
        a list).  With ``partial=True``, ``data`` need only be part of the
        event's data: each of its keys must be there with that value, and a
        dict value is compared the same way, on its own keys.

        Raises ``AssertionError`` listing what was logged when there is none,
        and saying how many events ``log(..., on_commit=True)`` left waiting
        for a commit, if any."""
        expected = _round_trip(data)
        for event in self.named(name):
            if _matches(event.data, expected, partial):
                return event
        logged = "\n".join(f"  {event.name} {event.data!r}" for event in self.events) or "  nothing"
        message = f"expected the event {_wanted(name, expected, partial)} to be logged; logged:\n"
        message += logged
        waiting = self.waiting_for_commit
        if waiting:
            message += (
                f"\n{waiting} event{' is' if waiting == 1 else 's are'} waiting for a "
                f"database commit that has not come (log(..., on_commit=True)): {COMMIT_ADVICE}"
            )
        raise AssertionError(message)

    def assert_not_logged(
        self, name: str, data: Mapping[str, Any] | None = None, *, partial: bool = False
    ) -> None:
        """Raise ``AssertionError``, listing them, when events called ``name``
        were logged (with ``data``, compared as :meth:`assert_logged` does,
        when given).  Events still waiting for a commit were not logged."""
        expected = _round_trip(data)
        found = [e for e in self.named(name) if _matches(e.data, expected, partial)]
        if found:
            listed = "\n".join(f"  {event.name} {event.data!r}" for event in found)
            raise AssertionError(
                f"expected no event {_wanted(name, expected, partial)} to be logged; logged:\n"
                + listed
            )

    @property
    def waiting_for_commit(self) -> int:
        """How many events logged with ``on_commit=True`` while the recorder
        was active still wait for their transaction to commit (or were
        dropped by its rollback)."""
        return len(self._waiting)

    @contextmanager
    def expect_failures(self) -> Iterator[list[Failure]]:
        """Expect failures inside the ``with`` block: they are not reported
        by :meth:`assert_no_failures` (nor by the pytest fixtures), and the
        block's list receives them.  ``AssertionError`` at the end of the
        block when nothing failed in it."""
        expected: list[Failure] = []
        self._expected.append(expected)
        try:
            yield expected
        finally:
            self._expected.remove(expected)
        if not expected:
            raise AssertionError(
                "expected a failure (a handler that fails, data that is refused); nothing failed"
            )

    def assert_no_failures(self) -> None:
        """Raise ``AssertionError`` with each failure and its traceback when
        anything failed outside :meth:`expect_failures` since the last call.
        """
        with self._lock:
            failures, self._unreported = self._unreported, []
        if failures:
            count = f"{len(failures)} failure{'' if len(failures) == 1 else 's'}"
            listed = "\n\n".join(str(failure) for failure in failures)
            raise AssertionError(
                f"eventlib reported {count} (when the test expects it, run the code that "
                f"fails in `with {self.name}.expect_failures():`):\n\n{listed}"
            )

    def clear(self) -> None:
        """Forget the events recorded so far."""
        self.events.clear()

    def _failed(self, failure: Failure) -> None:
        with self._lock:
            self.failures.append(failure)
            if self._expected:
                self._expected[-1].append(failure)
            else:
                self._unreported.append(failure)

    def _counting_hook(self, hook: dispatch.TransactionHook) -> dispatch.TransactionHook:
        """``hook``, the installed transaction hook, counting the events it
        holds until their callback runs."""

        def hold_until_commit(callback: Callable[[], None]) -> None:
            token = object()
            self._waiting.add(token)

            def send() -> None:
                self._waiting.discard(token)
                callback()

            hook(send)

        return hold_until_commit


@contextmanager
def capture_events(*, run_handlers: bool = False) -> Iterator[EventRecorder]:
    """Record the events logged inside the ``with`` block, and the failures
    (see the module documentation).  Nothing is raised for the failures:
    call :meth:`EventRecorder.assert_no_failures` for that."""
    recorder = EventRecorder(run_handlers=run_handlers)
    hook = dispatch.transaction_hook()
    counting = None if hook is None else recorder._counting_hook(hook)
    if counting is not None:
        dispatch.set_transaction_hook(counting)
    sender.add_recorder(recorder)
    try:
        with _collector.collecting(recorder):
            yield recorder
    finally:
        sender.remove_recorder(recorder)
        if counting is not None and dispatch.transaction_hook() is counting:
            dispatch.set_transaction_hook(hook)


@contextmanager
def dead_letters_in(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Keep dead letters in the SQLite file ``eventlib-dead-letters.sqlite``
    of ``directory`` inside the ``with`` block, whose value is its URL: the
    ``dead_letter_url`` setting points there, then back where it was (to the
    environment's value, or to the one given to ``configure()``).  What the
    block records never reaches the project's database."""
    url = f"sqlite:///{Path(directory).resolve() / 'eventlib-dead-letters.sqlite'}"
    variable = conf.ENV_PREFIX + "DEAD_LETTER_URL"
    environment = os.environ.get(variable)
    os.environ[variable] = url
    try:
        # Read again: the environment's URL is used unless configure() gave one.
        in_code = conf.configure().dead_letter_url
        if in_code != url:
            conf.configure(dead_letter_url=url)
    except BaseException:
        _set_variable(variable, environment)
        raise
    try:
        yield url
    finally:
        _set_variable(variable, environment)
        if in_code == url:
            conf.configure()
        else:
            conf.configure(dead_letter_url=in_code)


def _set_variable(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# ------------------------------------------------------------ isolation ---


def reset() -> None:
    """Put eventlib's process state back as a new process has it: the
    settings read again from the environment alone (what ``configure()``
    gave is forgotten), the sending side stopped and emptied (what its
    buffer held is published, or spooled, first), the dead-letter database's
    connections closed, every counter of :mod:`eventlib.metrics` at zero,
    the event classes found and the apps discovered forgotten.

    What code declared stays: event classes and handlers, the types given
    to ``register_type()``, the transaction hook; so do the recorders of
    the ``with`` blocks still open.  :func:`isolated` forgets declarations
    too."""
    _state.reset()


@contextmanager
def isolated() -> Iterator[None]:
    """Run the block on a fresh eventlib, then forget what it did: at both
    ends, :func:`reset`; at the end, the handler registries, the registered
    types, the transaction hook, ``alog()``'s sync runner and the group a
    listener serves are as they were at the start (events, handlers and
    types the block declared are forgotten).  Modules the
    block imported stay in ``sys.modules``: remove those you wrote, then
    call :func:`forget_event_classes`.

    For an autouse pytest fixture::

        @pytest.fixture(autouse=True)
        def fresh_eventlib():
            with eventlib.testing.isolated():
                yield
    """
    restore = _state.snapshot()
    hook, runner = dispatch.transaction_hook(), dispatch.sync_runner()
    group = broadcast.listening_group()
    reset()
    try:
        yield
    finally:
        restore()
        dispatch.set_transaction_hook(hook)
        dispatch.set_sync_runner(runner)
        broadcast.set_listening_group(group)
        reset()


def forget_event_classes() -> None:
    """Forget which class each event name found and which apps were
    discovered: the next ``log()`` or ``process()`` imports again the
    events modules no longer in ``sys.modules``.  For tests that write,
    change or remove apps."""
    clear_cache()


# ------------------------------------------------------------- failures ---

_EVENTLIB = Path(__file__).resolve().parent
_LOGGING = Path(logging.__file__).resolve().parent


class _FailureCollector(logging.Handler):
    """Hands each ERROR record eventlib writes about an event to the
    innermost active recorder.

    It is on the ``eventlib`` logger while any recorder is active, with the
    logger open to ERROR records even where logging was configured to drop
    them.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._recorders_lock = threading.Lock()
        #: The active recorders, innermost last: it is the one that gets failures.
        self.active: list[EventRecorder] = []
        self._level_before: int | None = None

    @contextmanager
    def collecting(self, recorder: EventRecorder) -> Iterator[None]:
        """Make ``recorder`` the innermost active one inside the block."""
        with self._recorders_lock:
            self.active.append(recorder)
            if len(self.active) == 1:
                logger.addHandler(self)
                if not logger.isEnabledFor(logging.ERROR):
                    self._level_before = logger.level
                    logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            with self._recorders_lock:
                self.active.remove(recorder)
                if not self.active:
                    logger.removeHandler(self)
                    if self._level_before is not None:
                        logger.setLevel(self._level_before)
                        self._level_before = None

    def reset(self) -> None:
        """Nothing to forget: the active recorders belong to their ``with``
        blocks, which remove them (as they remove theirs from the sender)."""

    def _after_fork(self) -> None:
        self._recorders_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "eventlib_event", None)
        if event is None or not self.active:
            return
        if record.exc_info and record.exc_info[1] is not None:
            trace = "".join(traceback.format_exception(*record.exc_info))
        else:
            trace = _caller()
        self.active[-1]._failed(
            Failure(
                event=event,
                event_id=getattr(record, "eventlib_event_id", None),
                handler=getattr(record, "eventlib_handler", None),
                message=record.getMessage(),
                traceback=trace,
            )
        )


_collector = _FailureCollector()
_state.process_state(_collector)


def _caller() -> str:
    """Where the code outside eventlib and ``logging`` that led to this
    record is, as a traceback line: the call to ``log()``."""
    frame = sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if not (path.is_relative_to(_EVENTLIB) or path.is_relative_to(_LOGGING)):
            summary = traceback.StackSummary.extract([(frame, frame.f_lineno)], limit=1)
            return "logged at:\n" + "".join(summary.format())
        frame = frame.f_back  # type: ignore[assignment]
    return ""


# ------------------------------------------------------------- matching ---


def _round_trip(data: Mapping[str, Any] | None) -> Any:
    return None if data is None else loads(dumps(data))


def _matches(actual: Any, expected: Any, partial: bool) -> bool:
    """Whether ``actual`` data is ``expected`` (``None``: any data), or,
    with ``partial``, holds it."""
    return expected is None or (_holds(actual, expected) if partial else actual == expected)


def _holds(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and _holds(actual[key], value) for key, value in expected.items()
        )
    return bool(actual == expected)


def _wanted(name: str, expected: Any, partial: bool) -> str:
    if expected is None:
        return name
    if partial:
        return f"{name} with {expected!r} in its data"
    return f"{name} {expected!r}"
