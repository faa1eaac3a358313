"""``log()``: validate, serialize and hand an event to the sending side.

This is the only code that runs in the caller (a web view, a script).  It
finds the event class, runs ``clean()``, serializes the data to JSON and
gives the payload to :data:`eventlib.sending.sender`, which publishes it to
the configured queue as the ``dispatch`` setting says (or, in eager mode,
runs it in place through the same serialization round trip).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from . import tasks as _tasks  # noqa: F401  (registers eventlib's shared tasks)
from .conf import get_settings
from .discovery import find_event
from .event import BaseEvent
from .exceptions import ConfigurationError, ValidationError
from .sending import sender
from .serialization import serialize_event

__all__ = [
    "CleanFailed",
    "TransactionHook",
    "log",
    "log_from",
    "set_transaction_hook",
    "transaction_hook",
]

logger = logging.getLogger("eventlib")

#: ``hook(callback)`` runs ``callback`` once the current database
#: transaction commits (at once when there is none); installed by framework
#: integrations such as :mod:`eventlib.contrib.django`.
TransactionHook = Callable[[Callable[[], None]], None]
_transaction_hook: TransactionHook | None = None


def set_transaction_hook(hook: TransactionHook | None) -> None:
    """Install the function ``log(..., on_commit=True)`` defers sending with."""
    global _transaction_hook
    _transaction_hook = hook


def transaction_hook() -> TransactionHook | None:
    """The function installed by :func:`set_transaction_hook`, if any."""
    return _transaction_hook


class CleanFailed(Exception):
    """The ``clean()`` of the event raised something other than
    :class:`~eventlib.ValidationError`: a bug of the event's, which the data
    made show.  Raised by :func:`log_from` with that error as its
    ``__cause__``, so that a transport can answer it as bad data rather
    than as its own failure; nothing was sent."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the clean() of the event {name} raised")
        self.name = name


def log(
    name: str, data: Mapping[str, Any] | None = None, *, on_commit: bool | None = None
) -> str | None:
    """Log the event ``name`` with ``data`` and return the new event's id.

    ``data`` must be a mapping (``None`` means ``{}``); anything else raises
    ``TypeError``.  The event class is looked up (raising
    :class:`~eventlib.InvalidEventName` or :class:`~eventlib.EventNotFound`),
    its ``clean()`` runs, the data is serialized to JSON (a value with no JSON
    form raises :class:`~eventlib.SerializationError`, a ``TypeError`` naming
    the key path) and the event is handed to the sending side, which sends
    it to the Celery queue as the ``dispatch`` setting says: by default it
    is put in a buffer in memory and ``log()`` returns at once, while a
    thread publishes it (see :mod:`eventlib.sending`).

    When the broker cannot take it (connection refused, no answer within
    ``broker_timeout`` seconds), the event is kept in the local spool and
    published once the broker is back (see :mod:`eventlib.spool`).  The id
    is returned either way.  :class:`~eventlib.DispatchError`, naming the
    broker and the spool, is raised only when the event can be neither
    published nor kept in the spool.

    When ``clean()`` raises :class:`~eventlib.ValidationError`, nothing is
    sent: with ``raise_errors`` on (the default in eager mode) the error
    propagates; otherwise it is logged at ERROR level on the ``eventlib``
    logger, with the event name, the message and the data's keys, and ``log()``
    returns ``None``.

    With ``on_commit=True`` (default: the ``on_commit`` setting) the event is
    validated and serialized at once but sent only when the current database
    transaction commits, and never if it rolls back, so that a worker never
    looks for a row that is not there yet.  That needs a transaction hook
    (``eventlib.contrib.django`` installs Django's); without one it raises
    :class:`~eventlib.ConfigurationError`.
    """
    event = _new_event(name, data, source="python", client_address=None)
    if not _accepted(name, event, data, raise_errors=None):
        return None
    return _send_accepted(name, event, on_commit)


def log_from(
    name: str,
    data: Mapping[str, Any] | None,
    *,
    on_commit: bool | None = None,
    raise_errors: bool | None = None,
    source: str = "python",
    client_address: str | None = None,
) -> str | None:
    """:func:`log` for transports such as the HTTP endpoint: the same, with
    ``raise_errors`` overriding the setting, and the event's ``source`` and
    ``client_address``; a ``clean()`` that raises anything but
    :class:`~eventlib.ValidationError` raises :class:`CleanFailed`."""
    event = _new_event(name, data, source=source, client_address=client_address)
    try:
        accepted = _accepted(name, event, data, raise_errors=raise_errors)
    except ValidationError:
        raise
    except Exception as error:
        raise CleanFailed(name) from error
    if not accepted:
        return None
    return _send_accepted(name, event, on_commit)


def _new_event(
    name: str, data: Mapping[str, Any] | None, *, source: str, client_address: str | None
) -> BaseEvent:
    """An instance of the event class ``name`` holding ``data``, not
    validated yet; ``TypeError`` when ``data`` is not a mapping."""
    if data is None:
        data = {}
    elif not isinstance(data, Mapping):
        raise TypeError(
            f"eventlib.log({name!r}, data): data must be a mapping, not {type(data).__name__}"
        )
    return find_event(name)(data, source=source, client_address=client_address)


def _accepted(
    name: str, event: BaseEvent, data: Mapping[str, Any] | None, *, raise_errors: bool | None
) -> bool:
    """Run the event's ``clean()``; whether it accepted the data.  Its
    :class:`~eventlib.ValidationError` is raised (``raise_errors``, by
    default the setting) or logged; anything else it raises propagates."""
    try:
        event.validate()
    except ValidationError as error:
        if get_settings().should_raise if raise_errors is None else raise_errors:
            error.add_note(f"raised by the clean() of the event {name}; nothing was sent")
            raise
        logger.error(
            "Event %s was not logged, its data is invalid: %s (data keys: %s)",
            name,
            error,
            ", ".join(map(str, data or {})) or "none",
            extra={
                "eventlib_event": name,
                "eventlib_event_id": event.id,
                "eventlib_handler": None,
            },
        )
        return False
    return True


def _send_accepted(name: str, event: BaseEvent, on_commit: bool | None) -> str:
    """Serialize the event and hand it to the sending side, now or, with
    ``on_commit`` (by default the setting), once the transaction commits."""
    payload = serialize_event(event)
    if get_settings().on_commit if on_commit is None else on_commit:
        if _transaction_hook is None:
            raise ConfigurationError(
                f"eventlib.log({name!r}, on_commit=True) needs a transaction hook: add "
                "'eventlib.contrib.django' to INSTALLED_APPS (or call set_transaction_hook)"
            )

        def send_after_commit() -> None:
            sender.send(name, event.id, payload)

        _transaction_hook(send_after_commit)
    else:
        sender.send(name, event.id, payload)
    return event.id
