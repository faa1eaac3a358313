"""``process()``: what a worker does with an event.

Deserialize, find the event class, validate again, then call every handler in
``HANDLER_REGISTRY`` order.  Like Django's ``send_robust``, a handler that
raises is logged with its traceback and the next handler still runs.  A
handler that has retries left runs again, alone (in a worker, later, through
the task ``eventlib.retry_handler``, which runs :func:`retry_handler`); its
last failure, and an event that cannot be processed at all, become dead
letters (:mod:`eventlib.deadletters`).  An event that broadcasts gets one
more handler, last, :func:`eventlib.broadcast.send`; a listener runs the
external handlers of a broadcast event the same way
(:func:`process_external`).

The module reads in the order a run goes: the result types, the entry
points (:func:`process`, :func:`retry_handler`, :func:`process_external`),
loading the event, the handler loop, the failure policy (retry or dead letter), dead-letter
recording, and what every log record says about the run.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import broadcast, metrics
from .broadcast import BROADCAST_OPTIONS, EXTERNAL_TASK, ExternalEvent
from .discovery import discover_configured_apps, find_event
from .exceptions import ValidationError
from .registry import EXTERNAL_HANDLER_REGISTRY, HANDLER_REGISTRY, HandlerOptions, handler_name
from .sending import RETRY_TASK, sender
from .serialization import deserialize_event

if TYPE_CHECKING:
    from celery import Celery

    from .event import BaseEvent

__all__ = ["HandlerFailure", "ProcessResult", "process", "process_external", "retry_handler"]

logger = logging.getLogger("eventlib")


# ---------------------------------------------------------------- results ---


@dataclass(frozen=True)
class HandlerFailure:
    """One handler that raised: its qualified name and the exception's repr."""

    handler: str
    error: str


@dataclass(frozen=True)
class ProcessResult:
    """What :func:`process` did with one event."""

    name: str
    event_id: str
    #: Qualified names of the handlers that returned, in call order.
    succeeded: tuple[str, ...] = ()
    #: The handlers that raised, in call order.
    failed: tuple[HandlerFailure, ...] = ()
    #: The ``ValidationError`` message when the worker refused the data; no
    #: handler ran then.
    invalid: str | None = None
    #: Qualified names of the failed handlers that will run again later (the
    #: others in ``failed`` became dead letters).
    retrying: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the data was valid and no handler failed."""
        return self.invalid is None and not self.failed

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-able data."""
        return asdict(self)


# ----------------------------------------------------------- entry points ---


def process(name: str, payload: str | bytes, *, app: Celery | None = None) -> ProcessResult:
    """Run every handler of the event ``name`` on ``payload`` (the JSON text
    ``log()`` produced) and return a :class:`ProcessResult`.

    The configured apps are discovered first (once per process).  The data is
    deserialized and ``clean()`` runs again: when it raises
    :class:`~eventlib.ValidationError`, the error is logged, the event becomes
    a dead letter, no handler runs and the result says why.  Each handler is
    called with the event instance; one that raises an ``Exception`` is
    logged on the ``eventlib`` logger with its traceback, the event name and
    id and the handler's qualified name, and the next handler still runs.
    Once every handler ran, each failed handler with retries left runs again,
    alone, and is named in ``retrying``; the other failures become dead
    letters.  The task ``eventlib.process`` passes its Celery ``app``, which
    sends those retries as ``eventlib.retry_handler``, to run after the delay
    of :meth:`~eventlib.registry.HandlerOptions.delay`; in eager mode, and
    without ``app`` (as :mod:`eventlib.testing` and ``eventlib process``
    call it), they run at once, in this process.

    Raises :class:`~eventlib.InvalidEventName`,
    :class:`~eventlib.EventNotFound` (for an app not among the configured
    apps too, importing nothing) or :class:`~eventlib.DeserializationError`
    (for a payload that is not JSON text too), or whatever else stops the
    event from being loaded, such as a ``clean()`` that crashes, when there
    is no event to give the handlers; the event is recorded as a dead letter
    first, with that reason.
    """
    run = _Run(name, payload, attempt=1, app=app)
    try:
        event = _load(run)
    except ValidationError as error:
        return _refused(run, error)
    return _every_handler(run, event)


def retry_handler(
    name: str,
    payload: str | bytes,
    handler: str | None,
    attempt: int,
    *,
    dead_letter: int | None = None,
    app: Celery | None = None,
) -> ProcessResult:
    """Run the handler named ``handler`` (a qualified name) of the event
    again, alone, and return a :class:`ProcessResult`: what the task
    ``eventlib.retry_handler`` runs, and ``deadletters.retry(id, here=True)``.

    The event is loaded as :func:`process` loads it, with the same errors.
    ``attempt`` is the number of this run of the handler (1 for its first);
    while it is not above the handler's ``retries``, a failure is retried, as
    :func:`process` retries it, through ``app``.  A handler that no longer
    exists fails at once, as a dead letter.

    With ``dead_letter``, the id of the dead letter being retried, there is
    no automatic retry: a success removes the dead letter, a failure counts
    one more attempt on it.  ``handler`` is ``None`` for a dead letter of the
    whole event: once the event loads, the dead letter is removed and every
    handler runs as :func:`process` runs them, with their retries and dead
    letters of their own.
    """
    run = _Run(name, payload, attempt, app, handler=handler, dead_letter=dead_letter)
    try:
        event = _load(run)
    except ValidationError as error:
        return _refused(run, error)
    if handler is None:
        if dead_letter is not None:
            _remove_dead_letter(run)
        return _every_handler(replace(run, attempt=1, dead_letter=None), event)
    try:
        if handler == _BROADCAST_STEP:
            function: Callable[..., Any] = broadcast.send
        else:
            function = HANDLER_REGISTRY.find_handler(type(event), handler)
    except KeyError as error:
        return _handler_gone(run, handler, str(error.args[0]))
    return _run_alone(run, event, function)


def process_external(
    name: str,
    payload: str | bytes,
    *,
    group: str | None,
    handler: str | None = None,
    attempt: int = 1,
    dead_letter: int | None = None,
    app: Celery | None = None,
) -> ProcessResult:
    """Run the external handlers (:func:`~eventlib.external_handler`) of
    the broadcast event ``name`` on ``payload``, in this process, and return
    a :class:`ProcessResult`: what a listener of ``group`` does
    (:mod:`eventlib.broadcast`), with the same isolation, logging, retries
    and dead letters as :func:`process` gives handlers.  The event's class
    is not needed: the handlers get an :class:`~eventlib.broadcast.ExternalEvent`.

    ``handler``, ``attempt`` and ``dead_letter`` run one handler again, as
    for :func:`retry_handler`.  Retries go to the listeners of ``group``
    through ``app``; without ``app``, or in eager mode, they run at once,
    here.  A dead letter names the handler ``external:<group>:<handler>``.

    Raises :class:`~eventlib.DeserializationError` when the payload is not
    one, after recording it as a dead letter.
    """
    run = _Run(name, payload, attempt, app, handler, dead_letter, external=True, group=group)
    try:
        envelope = deserialize_event(run.payload)
    except Exception as error:
        _unloadable(run, error)
        raise
    run.event_id = envelope.id
    event = ExternalEvent(name, envelope.id, envelope.created_at, envelope.data)
    if handler is None:
        metrics.increment("broadcast_received")
        return _run_handlers(run, event, EXTERNAL_HANDLER_REGISTRY.handlers_of(name))
    try:
        function = EXTERNAL_HANDLER_REGISTRY.find_handler(name, handler)
    except KeyError as error:
        return _handler_gone(run, handler, str(error.args[0]))
    return _run_alone(run, event, function)


def _every_handler(run: _Run, event: BaseEvent) -> ProcessResult:
    metrics.increment("processed")
    functions = HANDLER_REGISTRY.handlers_of(type(event))
    if broadcast.broadcasts(type(event)):
        functions += (broadcast.send,)
    return _run_handlers(run, event, functions)


def _run_alone(
    run: _Run, event: BaseEvent | ExternalEvent, function: Callable[..., Any]
) -> ProcessResult:
    """Run one handler again; a dead letter it retried is removed when it succeeds."""
    result = _run_handlers(run, event, (function,))
    if run.dead_letter is not None and result.succeeded:
        _remove_dead_letter(run)
    return result


#: What the broadcast of an event is called as the last of its handlers.
_BROADCAST_STEP = handler_name(broadcast.send)


def _handler_gone(run: _Run, handler: str, reason: str) -> ProcessResult:
    """The retried handler was renamed or removed: a dead letter at once."""
    run.log(handler).error(
        "Handler %s of event %s (id %s) cannot be retried: %s",
        handler,
        run.name,
        run.event_id,
        reason,
    )
    _dead(run, handler, reason, "")
    return ProcessResult(run.name, run.event_id or "", failed=(HandlerFailure(handler, reason),))


# ------------------------------------------------------- loading the event ---


def _load(run: _Run) -> BaseEvent:
    """The event of ``run``: its class found, its payload deserialized, its
    data validated again.  A :class:`~eventlib.ValidationError` is raised as
    it is, for the caller to return as :func:`_refused`; any other error is
    logged, recorded as a dead letter and raised."""
    discover_configured_apps()
    try:
        event_class = find_event(run.name)
        envelope = deserialize_event(run.payload)
        run.event_id = envelope.id
        event = event_class(
            envelope.data,
            id=envelope.id,
            created_at=envelope.created_at,
            source=envelope.source,
            client_address=envelope.client_address,
        )
        event.validate()
    except ValidationError:
        raise
    except Exception as error:
        _unloadable(run, error)
        raise
    return event


def _refused(run: _Run, error: ValidationError) -> ProcessResult:
    """The worker refused the event's data: logged, a dead letter, no handler run."""
    run.log(run.handler).error(
        "Event %s (id %s) has invalid data in the worker, its handlers were not run: %s",
        run.name,
        run.event_id,
        error,
    )
    _dead(run, run.handler, f"ValidationError: {error}", _traceback(error))
    return ProcessResult(run.name, run.event_id or "", invalid=str(error))


def _unloadable(run: _Run, error: Exception) -> None:
    """There is no event to give the handlers: logged and a dead letter."""
    if run.event_id is None:
        run.event_id = _peek_id(run.text)
    if not isinstance(run.name, str):  # a message that log() did not write
        run.name = repr(run.name)
    run.log(run.handler).error(
        "Event %s (id %s) cannot be processed: %s", run.name, run.event_id, _reason(error)
    )
    _dead(run, run.handler, _reason(error), _traceback(error))


# ------------------------------------------------------- the handler loop ---


def _run_handlers(
    run: _Run, event: BaseEvent | ExternalEvent, functions: tuple[Callable[..., Any], ...]
) -> ProcessResult:
    """Call ``functions`` with the event, in order; hand each failure to the
    failure policy as it happens, then send the retries it asked for."""
    succeeded: list[str] = []
    failed: list[HandlerFailure] = []
    retries: list[_Retry] = []
    for function, error in _call_each(functions, event):
        if error is None:
            succeeded.append(handler_name(function))
            continue
        failed.append(HandlerFailure(handler_name(function), repr(error)))
        retry = _on_failure(run, event, function, error)
        if retry is not None:
            retries.append(retry)
    sent = _send_retries(run, retries)
    return ProcessResult(run.name, event.id, tuple(succeeded), tuple(failed), retrying=sent)


def _call_each(
    functions: tuple[Callable[..., Any], ...], event: BaseEvent | ExternalEvent
) -> Iterator[tuple[Callable[..., Any], Exception | None]]:
    """Call each function with ``event``, in order, and yield it with the
    ``Exception`` it raised (``None`` when it returned), as Django's
    ``send_robust`` does: a failure does not stop the next function."""
    for function in functions:
        try:
            function(event)
        except Exception as error:
            outcome: Exception | None = error
        else:
            outcome = None
        yield function, outcome


# ----------------------------------------------------- the failure policy ---


@dataclass(frozen=True)
class _Retry:
    """A failed handler to run again."""

    handler: str
    attempt: int
    delay: float
    reason: str
    traceback: str


def _on_failure(
    run: _Run, event: BaseEvent | ExternalEvent, function: Callable[..., Any], error: Exception
) -> _Retry | None:
    """Decide what follows a handler's failure, and log it with its
    traceback: the retry to send while the handler has retries left (at
    WARNING level), or else a dead letter (at ERROR level).  A dead letter
    being retried is not retried automatically."""
    metrics.increment("handler_failures")
    name = handler_name(function)
    options = _options(run, event, function)
    retries = options.retries or 0  # options_of() always sets it
    log = run.log(name)
    if run.dead_letter is None and run.attempt <= retries:
        delay = options.delay(run.attempt)
        log.warning(
            "Handler %s failed on event %s (id %s), attempt %d of %d; it runs again in %.1fs",
            name,
            run.name,
            event.id,
            run.attempt,
            retries + 1,
            delay,
            exc_info=error,
        )
        return _Retry(name, run.attempt + 1, delay, _reason(error), _traceback(error))
    log.error("Handler %s failed on event %s (id %s)", name, run.name, event.id, exc_info=error)
    _dead(run, name, _reason(error), _traceback(error))
    return None


def _options(
    run: _Run, event: BaseEvent | ExternalEvent, function: Callable[..., Any]
) -> HandlerOptions:
    """The retry options of ``function`` as a handler of ``event``."""
    if isinstance(event, ExternalEvent):
        return EXTERNAL_HANDLER_REGISTRY.options_of(run.name, function)
    if function is broadcast.send:
        return BROADCAST_OPTIONS
    return HANDLER_REGISTRY.options_of(type(event), function)


def _send_retries(run: _Run, retries: list[_Retry]) -> tuple[str, ...]:
    """Send the retries to the workers of ``run.app``, or, in eager mode and
    without an app, queue them for :func:`_retries_in_turn`.  A retry that
    cannot be sent becomes a dead letter.  Returns the names of the handlers
    whose retry was sent or queued."""
    if not retries:
        return ()
    here = run.app is None or sender.is_eager(run.app)
    sent = []
    with _retries_in_turn():
        for retry in retries:
            args = (run.name, run.text, retry.handler, retry.attempt)
            try:
                if here:
                    _here.pending.append((run, args))
                else:
                    task, routing = _retry_destination(run)
                    sender.send_task(
                        task,
                        args,
                        countdown=retry.delay,
                        app=run.app,
                        shadow=f"{run.name} retry of {retry.handler}",
                        **routing,
                    )
            except Exception as error:
                run.log(retry.handler).exception(
                    "The retry of handler %s on event %s (id %s) could not be sent",
                    retry.handler,
                    run.name,
                    run.event_id,
                )
                reason = f"{retry.reason} (its retry could not be sent: {error!r})"
                _dead(run, retry.handler, reason, retry.traceback)
            else:
                metrics.increment("retries")
                sent.append(retry.handler)
    return tuple(sent)


def _retry_destination(run: _Run) -> tuple[str, dict[str, Any]]:
    """The task that runs a handler of ``run`` again, and where it goes:
    ``eventlib.external`` to the listeners of ``run``'s group for an
    external handler, ``eventlib.retry_handler`` to eventlib's queue
    otherwise."""
    if run.external:
        routing: dict[str, Any] = {
            "exchange": broadcast.EXCHANGE.name,
            "routing_key": run.group or "",
        }
        return EXTERNAL_TASK, routing
    return RETRY_TASK, {}


_here = threading.local()


@contextmanager
def _retries_in_turn() -> Iterator[None]:
    """Run the retries queued inside the block (eager mode, or no worker)
    once it ends, at once and in this process: each round of retries after
    the one before, in a loop rather than deeper and deeper in the stack, so
    that any number of retries ends.  Inside such a retry, the outermost
    block runs them."""
    if getattr(_here, "pending", None) is not None:
        yield
        return
    pending: deque[tuple[_Run, tuple[str, str, str, int]]] = deque()
    _here.pending = pending
    try:
        yield
        while pending:
            run, (name, payload, handler, attempt) = pending.popleft()
            if run.external:
                process_external(
                    name, payload, group=run.group, handler=handler, attempt=attempt, app=run.app
                )
            else:
                retry_handler(name, payload, handler, attempt, app=run.app)
    finally:
        del _here.pending


# ----------------------------------------------------------- dead letters ---


def _dead(run: _Run, handler: str | None, reason: str, trace: str) -> None:
    """Record the failure of ``handler`` (``None``: of the whole event) as a
    dead letter, or, when ``run`` retries one, count one more failure on it.
    A database that cannot be written is logged with the payload, so that
    the event can still be found."""
    from . import deadletters  # SQLAlchemy, only once something failed

    what = handler or "the whole event"
    log = run.log(handler)
    if run.external:
        handler = broadcast.external_handler_key(run.group, handler or "")
    try:
        if run.dead_letter is None:
            number = deadletters.record(
                event_name=run.name,
                event_id=run.event_id,
                payload=run.text,
                handler=handler,
                attempts=run.attempt,
                reason=reason,
                traceback=trace,
            )
            message = "Recorded dead letter %d: %s on event %s (id %s)"
        else:
            deadletters.failed_again(run.dead_letter, reason=reason, traceback=trace)
            number = run.dead_letter
            message = "Dead letter %d failed again: %s on event %s (id %s)"
    except Exception:
        log.exception(
            "Could not record the dead letter of %s on event %s (id %s) in %s; its payload: %s",
            what,
            run.name,
            run.event_id,
            deadletters.database_name(),
            run.text,
        )
        return
    log.warning(message, number, what, run.name, run.event_id)


def _remove_dead_letter(run: _Run) -> None:
    """Remove the dead letter ``run`` retried, which succeeded."""
    from . import deadletters

    assert run.dead_letter is not None
    log = run.log(run.handler)
    try:
        deadletters.resolve(run.dead_letter)
    except Exception:
        log.exception("Dead letter %d succeeded but could not be removed", run.dead_letter)
        return
    log.info("Dead letter %d succeeded and was removed", run.dead_letter)


# ---------------------------------------------------------------- the run ---


@dataclass
class _Run:
    """One run of an event's handlers, as its log records and dead letters
    name it."""

    name: str
    #: What arrived, for :func:`deserialize_event`.
    payload: str | bytes
    #: The number of this run of the handlers (1 for their first).
    attempt: int
    #: The Celery app that sends retries; ``None`` runs them here.
    app: Celery | None
    #: The handler retried alone; ``None`` for every handler.
    handler: str | None = None
    #: The id of the dead letter being retried.
    dead_letter: int | None = None
    #: Known once the payload is deserialized (or peeked at).
    event_id: str | None = None
    #: Whether the handlers are external handlers, run by a listener.
    external: bool = False
    #: The group of listeners running them (``None`` in eager mode).
    group: str | None = None
    #: The payload as text, to send again or keep in a dead letter.
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.text = _payload_text(self.payload)

    def log(self, handler: str | None) -> logging.LoggerAdapter[logging.Logger]:
        """The ``eventlib`` logger, giving each record the attributes
        ``eventlib_event``, ``eventlib_event_id`` and ``eventlib_handler``
        (``handler``: ``None`` when no handler is concerned)."""
        context = {
            "eventlib_event": self.name,
            "eventlib_event_id": self.event_id,
            "eventlib_handler": handler,
        }
        return logging.LoggerAdapter(logger, context)


def _payload_text(payload: Any) -> str:
    """The payload as text, to send again or keep in a dead letter: a
    message written by something else than ``log()`` may hold anything."""
    if isinstance(payload, str):
        return payload
    if isinstance(payload, (bytes, bytearray)):
        return payload.decode("utf-8", "replace")
    return repr(payload)


def _peek_id(payload: str) -> str | None:
    """The event id of a payload whose event could not be loaded, if it has
    one: the payload's types may be unknown here, JSON is enough."""
    try:
        found = json.loads(payload).get("id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return found if isinstance(found, str) else None


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))
