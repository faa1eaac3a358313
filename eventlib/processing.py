"""``process()``: what a worker does with an event.

Deserialize, find the event class, validate again, then call every handler in
``HANDLER_REGISTRY`` order.  Like Django's ``send_robust``, a handler that
raises is logged with its traceback and the next handler still runs.  A
handler that has retries left runs again, alone (in a worker, later, through
the task ``eventlib.retry_handler``); its last failure, and an event that
cannot be processed at all, become dead letters (:mod:`eventlib.deadletters`).
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import metrics
from .conf import get_settings
from .discovery import autodiscover, find_event
from .exceptions import ValidationError
from .registry import HANDLER_REGISTRY, handler_name
from .sending import RETRY_TASK, sender
from .serialization import deserialize_event

if TYPE_CHECKING:
    from celery import Celery

    from .event import BaseEvent

logger = logging.getLogger("eventlib")


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


_discovered: tuple[str, ...] | None = None
_discovery_lock = threading.Lock()


def _ensure_discovered() -> None:
    """Run :func:`autodiscover` once per process and per ``apps`` setting, so
    that function handlers declared in other apps are registered."""
    global _discovered
    apps = get_settings().apps
    if _discovered == apps:
        return
    with _discovery_lock:
        if _discovered != apps:
            autodiscover(apps)
            _discovered = apps


def process(name: str, payload: str | bytes) -> ProcessResult:
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
    letters.  In a worker, the task ``eventlib.process`` sends those retries
    as ``eventlib.retry_handler``, to run after the delay of
    :meth:`~eventlib.registry.HandlerOptions.delay`; in eager mode, and when
    ``process()`` is called directly (as :mod:`eventlib.testing` and
    ``eventlib process`` do), they run at once, in this process.

    Raises :class:`~eventlib.InvalidEventName`,
    :class:`~eventlib.EventNotFound` (for an app not among the configured
    apps too, importing nothing) or :class:`~eventlib.DeserializationError`
    (for a payload that is not JSON text too), or whatever else stops the
    event from being loaded, such as a ``clean()`` that crashes, when there
    is no event to give the handlers; the event is recorded as a dead letter
    first, with that reason.
    """
    return run_handler(name, payload, None, 1)


def run_handler(
    name: str,
    payload: str | bytes,
    handler: str | None,
    attempt: int,
    *,
    dead_letter: int | None = None,
    app: Celery | None = None,
) -> ProcessResult:
    """Run the handler named ``handler`` (a qualified name) of the event, or
    every handler when it is ``None``, as :func:`process` does; what the task
    ``eventlib.retry_handler`` runs.

    ``attempt`` is the number of this run of the handler (1 for its first);
    while it is not above the handler's ``retries``, a failure is retried.
    With ``dead_letter``, the id of the dead letter being retried, there is
    no automatic retry: a success removes the dead letter, a failure counts
    one more attempt on it.  A handler that no longer exists fails at once,
    as a dead letter.  ``app``, the Celery app of the worker's task, sends
    the retries; without it (or in eager mode) they run at once, here.
    """
    return _Run(name, payload, handler, attempt, dead_letter, app).run()


@dataclass(frozen=True)
class _Retry:
    """A failed handler to run again."""

    handler: str
    attempt: int
    delay: float
    reason: str
    traceback: str


class _Run:
    """One run of an event's handlers (or of one of them)."""

    def __init__(
        self,
        name: str,
        payload: str | bytes,
        handler: str | None,
        attempt: int,
        dead_letter: int | None,
        app: Celery | None,
    ) -> None:
        self.name = name
        self.payload = payload
        self.text = _payload_text(payload)
        self.handler = handler
        self.attempt = attempt
        self.dead_letter = dead_letter
        self.app = app
        self.event_id: str | None = None

    def run(self) -> ProcessResult:
        _ensure_discovered()
        try:
            event_class, event = self._load()
        except ValidationError as error:
            logger.error(
                "Event %s (id %s) has invalid data in the worker, its handlers were not run: %s",
                self.name,
                self.event_id,
                error,
                extra=self._context(self.handler),
            )
            self._dead(self.handler, f"ValidationError: {error}", traceback.format_exc())
            return ProcessResult(self.name, self.event_id or "", invalid=str(error))
        except Exception as error:
            if self.event_id is None:
                self.event_id = _peek_id(self.text)
            if not isinstance(self.name, str):  # a message that log() did not write
                self.name = repr(self.name)
            logger.error(
                "Event %s (id %s) cannot be processed: %s",
                self.name,
                self.event_id,
                _reason(error),
                extra=self._context(self.handler),
            )
            self._dead(self.handler, _reason(error), traceback.format_exc())
            raise
        if self.handler is None:
            if self.dead_letter is not None:
                # The event can be processed again: its handlers take it from
                # here, their failures are dead letters of their own.
                self._resolve()
                self.dead_letter = None
            functions = HANDLER_REGISTRY.handlers_of(event_class)
            metrics.increment("processed")
        else:
            try:
                functions = (HANDLER_REGISTRY.find_handler(event_class, self.handler),)
            except KeyError as error:
                reason = str(error.args[0])
                logger.error(
                    "Handler %s of event %s (id %s) cannot be retried: %s",
                    self.handler,
                    self.name,
                    event.id,
                    reason,
                    extra=self._context(self.handler),
                )
                self._dead(self.handler, reason, "")
                return ProcessResult(
                    self.name, event.id, failed=(HandlerFailure(self.handler, reason),)
                )
        return self._call(event_class, event, functions)

    def _load(self) -> tuple[type[BaseEvent], BaseEvent]:
        event_class = find_event(self.name)
        envelope = deserialize_event(self.payload)
        self.event_id = envelope.id
        event = event_class(
            envelope.data,
            id=envelope.id,
            created_at=envelope.created_at,
            source=envelope.source,
            client_address=envelope.client_address,
        )
        event.validate()
        return event_class, event

    def _call(
        self,
        event_class: type[BaseEvent],
        event: BaseEvent,
        functions: tuple[Callable[..., Any], ...],
    ) -> ProcessResult:
        retrying_dead_letter = self.dead_letter is not None and self.handler is not None
        succeeded: list[str] = []
        failed: list[HandlerFailure] = []
        retries: list[_Retry] = []
        for function in functions:
            try:
                function(event)
            except Exception as error:
                metrics.increment("handler_failures")
                qualified = handler_name(function)
                failed.append(HandlerFailure(qualified, repr(error)))
                context = self._context(qualified)
                options = HANDLER_REGISTRY.options_of(event_class, function)
                if not retrying_dead_letter and self.attempt <= options.retries:
                    delay = options.delay(self.attempt)
                    logger.warning(
                        "Handler %s failed on event %s (id %s), attempt %d of %d; "
                        "it runs again in %.1fs",
                        qualified,
                        self.name,
                        event.id,
                        self.attempt,
                        options.retries + 1,
                        delay,
                        exc_info=True,
                        extra=context,
                    )
                    retries.append(
                        _Retry(
                            qualified,
                            self.attempt + 1,
                            delay,
                            _reason(error),
                            traceback.format_exc(),
                        )
                    )
                    continue
                logger.exception(
                    "Handler %s failed on event %s (id %s)",
                    qualified,
                    self.name,
                    event.id,
                    extra=context,
                )
                self._dead(qualified, _reason(error), traceback.format_exc())
            else:
                succeeded.append(handler_name(function))
                if retrying_dead_letter:
                    self._resolve()
        sent = self._send(retries)
        return ProcessResult(
            self.name, event.id, tuple(succeeded), tuple(failed), retrying=tuple(sent)
        )

    def _send(self, retries: list[_Retry]) -> list[str]:
        """Send the retries to the workers, or, in eager mode and when not run
        by a worker's task, queue them for :func:`_retries_in_turn`.  A retry
        that cannot be sent becomes a dead letter.  Returns the names of the
        handlers whose retry was sent or queued."""
        if not retries:
            return []
        here = self.app is None or sender.is_eager(self.app)
        sent = []
        with _retries_in_turn():
            for retry in retries:
                args = (self.name, self.text, retry.handler, retry.attempt)
                try:
                    if here:
                        _here.pending.append((args, self.app))
                    else:
                        sender.send_task(RETRY_TASK, args, countdown=retry.delay, app=self.app)
                except Exception as error:
                    logger.exception(
                        "The retry of handler %s on event %s (id %s) could not be sent",
                        retry.handler,
                        self.name,
                        self.event_id,
                        extra=self._context(retry.handler),
                    )
                    self._dead(
                        retry.handler,
                        f"{retry.reason} (its retry could not be sent: {error!r})",
                        retry.traceback,
                        attempts=retry.attempt - 1,
                    )
                else:
                    metrics.increment("retries")
                    sent.append(retry.handler)
        return sent

    def _dead(
        self, handler: str | None, reason: str, trace: str, *, attempts: int | None = None
    ) -> None:
        """Record the failure as a dead letter, or, when retrying one, count
        one more failure on it.  A database that cannot be written is logged
        with the payload, so that the event can still be found."""
        from . import deadletters  # SQLAlchemy, only once something failed

        context = self._context(handler)
        try:
            if self.dead_letter is not None:
                deadletters.failed_again(self.dead_letter, reason=reason, traceback=trace)
                logger.warning(
                    "Dead letter %d failed again: %s on event %s (id %s)",
                    self.dead_letter,
                    handler or "the whole event",
                    self.name,
                    self.event_id,
                    extra=context,
                )
                return
            new_id = deadletters.record(
                event_name=self.name,
                event_id=self.event_id,
                payload=self.text,
                handler=handler,
                attempts=self.attempt if attempts is None else attempts,
                reason=reason,
                traceback=trace,
            )
        except Exception:
            logger.exception(
                "Could not record the dead letter of %s on event %s (id %s) in %s; its payload: %s",
                handler or "the whole event",
                self.name,
                self.event_id,
                deadletters.database_name(),
                self.text,
                extra=context,
            )
            return
        logger.warning(
            "Recorded dead letter %d: %s on event %s (id %s)",
            new_id,
            handler or "the whole event",
            self.name,
            self.event_id,
            extra=context,
        )

    def _resolve(self) -> None:
        from . import deadletters

        assert self.dead_letter is not None
        try:
            deadletters.resolve(self.dead_letter)
        except Exception:
            logger.exception(
                "Dead letter %d succeeded but could not be removed",
                self.dead_letter,
                extra=self._context(self.handler),
            )
            return
        logger.info(
            "Dead letter %d succeeded and was removed",
            self.dead_letter,
            extra=self._context(self.handler),
        )

    def _context(self, handler: str | None = None) -> dict[str, Any]:
        return {
            "eventlib_event": self.name,
            "eventlib_event_id": self.event_id,
            "eventlib_handler": handler,
        }


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
    _here.pending = pending = deque()
    try:
        yield
        while pending:
            args, app = pending.popleft()
            run_handler(*args, app=app)
    finally:
        del _here.pending


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


def _forget_discovery() -> None:
    """Make the next :func:`process` call discover the apps again (tests)."""
    global _discovered
    _discovered = None
