"""``process()``: what a worker does with an event.

Deserialize, find the event class, validate again, then call every handler in
``HANDLER_REGISTRY`` order.  Like Django's ``send_robust``, a handler that
raises is logged with its traceback and the next handler still runs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from .conf import get_settings
from .discovery import autodiscover, find_event
from .exceptions import ValidationError
from .registry import HANDLER_REGISTRY, handler_name
from .serialization import deserialize_event

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

    @property
    def ok(self) -> bool:
        """True when the data was valid and no handler failed."""
        return self.invalid is None and not self.failed

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-able data (what the Celery task returns)."""
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
    :class:`~eventlib.ValidationError`, the error is logged, no handler runs
    and the result says why.  Each handler is called with the event instance;
    one that raises an ``Exception`` is logged on the ``eventlib`` logger with
    its traceback, the event name and id and the handler's qualified name, and
    the next handler still runs.

    Raises :class:`~eventlib.InvalidEventName`,
    :class:`~eventlib.EventNotFound` or :class:`~eventlib.DeserializationError`
    when there is no event to give the handlers.
    """
    _ensure_discovered()
    event_class = find_event(name)
    envelope = deserialize_event(payload)
    event = event_class(
        envelope.data,
        id=envelope.id,
        created_at=envelope.created_at,
        source=envelope.source,
        client_address=envelope.client_address,
    )
    context = {"eventlib_event": name, "eventlib_event_id": event.id}
    try:
        event.validate()
    except ValidationError as error:
        logger.error(
            "Event %s (id %s) has invalid data in the worker, its handlers were not run: %s",
            name,
            event.id,
            error,
            extra=context,
        )
        return ProcessResult(name, event.id, invalid=str(error))

    succeeded: list[str] = []
    failed: list[HandlerFailure] = []
    for function in HANDLER_REGISTRY.handlers_of(event_class):
        try:
            function(event)
        except Exception as error:
            qualified = handler_name(function)
            logger.exception(
                "Handler %s failed on event %s (id %s)",
                qualified,
                name,
                event.id,
                extra={**context, "eventlib_handler": qualified},
            )
            failed.append(HandlerFailure(qualified, repr(error)))
        else:
            succeeded.append(handler_name(function))
    return ProcessResult(name, event.id, tuple(succeeded), tuple(failed))


def _forget_discovery() -> None:
    """Make the next :func:`process` call discover the apps again (tests)."""
    global _discovered
    _discovered = None
