"""``log()``: validate, serialize and hand an event to Celery.

This is the only code that runs in the caller (a web view, a script).  It
finds the event class, runs ``clean()``, serializes the data to JSON and sends
``eventlib.process(name, payload)`` to the configured queue, or, in eager mode,
runs it in place through the same serialization round trip.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery

from .conf import Settings, get_settings, on_change
from .discovery import find_event
from .exceptions import ValidationError
from .serialization import serialize_event
from .tasks import TASK_NAME

logger = logging.getLogger("eventlib")

#: Called as ``interceptor(name, payload)`` instead of sending; the last one
#: pushed wins (see :mod:`eventlib.testing`).
Interceptor = Callable[[str, str], None]
_interceptors: list[Interceptor] = []

_own_app: Celery | None = None
_app_lock = threading.Lock()


def log(name: str, data: Mapping[str, Any] | None = None) -> str | None:
    """Log the event ``name`` with ``data`` and return the new event's id.

    ``data`` must be a mapping (``None`` means ``{}``); anything else raises
    ``TypeError``.  The event class is looked up (raising
    :class:`~eventlib.InvalidEventName` or :class:`~eventlib.EventNotFound`),
    its ``clean()`` runs, the data is serialized to JSON (a value with no JSON
    form raises :class:`~eventlib.SerializationError`, a ``TypeError`` naming
    the key path) and the event is sent to the Celery queue.

    When ``clean()`` raises :class:`~eventlib.ValidationError`, nothing is
    sent: with ``raise_errors`` on (the default in eager mode) the error
    propagates; otherwise it is logged at ERROR level on the ``eventlib``
    logger, with the event name, the message and the data's keys, and ``log()``
    returns ``None``.
    """
    if data is None:
        data = {}
    elif not isinstance(data, Mapping):
        raise TypeError(
            f"eventlib.log({name!r}, data): data must be a mapping, not {type(data).__name__}"
        )
    settings = get_settings()
    event = find_event(name)(data)
    try:
        event.validate()
    except ValidationError as error:
        if settings.should_raise:
            error.add_note(f"raised by the clean() of the event {name}; nothing was sent")
            raise
        logger.error(
            "Event %s was not logged, its data is invalid: %s (data keys: %s)",
            name,
            error,
            ", ".join(map(str, data)) or "none",
            extra={"eventlib_event": name, "eventlib_event_id": event.id},
        )
        return None
    payload = serialize_event(event)
    if _interceptors:
        _interceptors[-1](name, payload)
    else:
        _send(name, event.id, payload, settings)
    return event.id


def _send(name: str, event_id: str, payload: str, settings: Settings) -> None:
    task = celery_app().tasks[TASK_NAME]
    if settings.always_eager:
        task.apply(args=(name, payload), task_id=event_id, throw=settings.should_raise)
    else:
        task.apply_async(args=(name, payload), task_id=event_id, queue=settings.queue)


def celery_app() -> Celery:
    """The Celery app events are sent with: the ``celery_app`` setting when
    one is given, otherwise one eventlib creates from its settings (JSON only,
    ``broker_url``, results ignored)."""
    settings = get_settings()
    if settings.celery_app is not None:
        return settings.celery_app  # type: ignore[no-any-return]
    global _own_app
    if _own_app is None:
        with _app_lock:
            if _own_app is None:
                _own_app = _create_app(settings)
    return _own_app


def _create_app(settings: Settings) -> Celery:
    app = Celery("eventlib", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=settings.queue,
    )
    return app


def _drop_own_app(_: Settings) -> None:
    """Settings changed: the next send builds a new app from them."""
    global _own_app
    with _app_lock:
        old, _own_app = _own_app, None
    if old is not None:
        old.close()


on_change(_drop_own_app)
