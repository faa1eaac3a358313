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
from .exceptions import ConfigurationError, ValidationError
from .sending import sender
from .serialization import serialize_event

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
    return log_event(name, data, on_commit=on_commit)


def log_event(
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
    ``client_address``."""
    if data is None:
        data = {}
    elif not isinstance(data, Mapping):
        raise TypeError(
            f"eventlib.log({name!r}, data): data must be a mapping, not {type(data).__name__}"
        )
    settings = get_settings()
    event = find_event(name)(data, source=source, client_address=client_address)
    try:
        event.validate()
    except ValidationError as error:
        if settings.should_raise if raise_errors is None else raise_errors:
            error.add_note(f"raised by the clean() of the event {name}; nothing was sent")
            raise
        logger.error(
            "Event %s was not logged, its data is invalid: %s (data keys: %s)",
            name,
            error,
            ", ".join(map(str, data)) or "none",
            extra={
                "eventlib_event": name,
                "eventlib_event_id": event.id,
                "eventlib_handler": None,
            },
        )
        return None
    payload = serialize_event(event)
    if settings.on_commit if on_commit is None else on_commit:
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
