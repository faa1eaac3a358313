"""``log()`` and ``alog()``: validate, serialize and hand an event to the
sending side.

This is the only code that runs in the caller (a web view, a script, a
coroutine).  It finds the event class, runs ``clean()``, serializes the data
to JSON and gives the payload to :data:`eventlib.sending.sender`, which
publishes it to the configured queue as the ``dispatch`` setting says (or, in
eager mode, runs it in place through the same serialization round trip).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
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
    "SyncRunner",
    "TransactionHook",
    "alog",
    "log",
    "log_from",
    "set_sync_runner",
    "set_transaction_hook",
    "sync_runner",
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


#: ``await runner(call)`` runs ``call()``, synchronous work of :func:`alog`,
#: without blocking the event loop, in the thread it must run in.
SyncRunner = Callable[[Callable[[], None]], Awaitable[None]]


async def _in_a_thread(call: Callable[[], None]) -> None:
    await asyncio.to_thread(call)


_sync_runner: SyncRunner = _in_a_thread


def set_sync_runner(runner: SyncRunner | None) -> None:
    """Install how :func:`alog` runs its synchronous work (calling the
    transaction hook, a send that waits for the broker or the spool, eager
    handlers) from a coroutine; ``None`` puts back the default, a thread of
    asyncio's (:func:`asyncio.to_thread`).  ``eventlib.contrib.django``
    installs asgiref's ``sync_to_async(thread_sensitive=True)``: the thread
    that holds the connection, and so the transaction, of the request."""
    global _sync_runner
    _sync_runner = runner or _in_a_thread


def sync_runner() -> SyncRunner:
    """The runner :func:`set_sync_runner` installed (or the default)."""
    return _sync_runner


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
    thread publishes it (see :mod:`eventlib.sending`).  In a coroutine,
    ``await`` :func:`alog` instead, which never blocks the event loop.

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
    return log_from(name, data, on_commit=on_commit)


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
    accepted = _accept("log", name, data, raise_errors, source, client_address, clean_failures=True)
    if accepted is None:
        return None
    event, payload = accepted
    send = _sending(name, event, payload)
    if _waits_for_commit(on_commit):
        _hook_for("log", name)(send)
    else:
        send()
    return event.id


async def alog(
    name: str, data: Mapping[str, Any] | None = None, *, on_commit: bool | None = None
) -> str | None:
    """:func:`log` for coroutines (``await eventlib.alog(name, data)``),
    which never blocks the event loop.

    The event is looked up, validated and serialized in the coroutine, as
    :func:`log` does, with the same errors raised (or logged) and the same
    return value: the id, or ``None`` for data ``clean()`` refused with
    ``raise_errors`` off.  ``clean()`` runs in the coroutine: like the rest of
    an async view, it must not call Django's ORM synchronously.

    Sending then never waits in the event loop: in the ``background``
    dispatch mode the event goes into the buffer in memory, here, as with
    :func:`log`; in the ``spool`` and ``direct`` modes, in eager mode, and
    while a recorder of :mod:`eventlib.testing` is active, it is sent from
    a thread (see :func:`set_sync_runner`), and ``alog()`` returns once it
    is published or spooled (or handled, in eager mode).
    :class:`~eventlib.DispatchError` is raised as by :func:`log`.

    With ``on_commit=True`` (default: the ``on_commit`` setting), the
    transaction hook is called from that thread too, which, with
    ``eventlib.contrib.django``, is the thread of the request's database
    connection: the event is sent once the transaction open there commits,
    never if it rolls back, and at once when none is open.  Without a hook it
    raises :class:`~eventlib.ConfigurationError`.
    """
    accepted = _accept("alog", name, data, None, "python", None)
    if accepted is None:
        return None
    event, payload = accepted
    send = _sending(name, event, payload)
    if _waits_for_commit(on_commit):
        await _sync_runner(partial(_hook_for("alog", name), send))
    elif _sends_in_memory():
        send()
    else:
        await _sync_runner(send)
    return event.id


def _accept(
    function: str,
    name: str,
    data: Mapping[str, Any] | None,
    raise_errors: bool | None,
    source: str,
    client_address: str | None,
    *,
    clean_failures: bool = False,
) -> tuple[BaseEvent, str] | None:
    """Find, validate and serialize the event ``name`` for
    ``eventlib.<function>()``: return it with its payload, or ``None`` when
    its data was refused and the refusal logged.  With ``clean_failures``,
    whatever else ``clean()`` raises is raised as :class:`CleanFailed`."""
    if data is None:
        data = {}
    elif not isinstance(data, Mapping):
        raise TypeError(
            f"eventlib.{function}({name!r}, data): data must be a mapping, "
            f"not {type(data).__name__}"
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
    except Exception as error:
        if clean_failures:
            raise CleanFailed(name) from error
        raise
    return event, serialize_event(event)


def _sending(name: str, event: BaseEvent, payload: str) -> Callable[[], None]:
    """A function that sends the accepted event: what a transaction hook
    calls back (a function, not a ``partial``: Django names it by its
    ``__qualname__`` when it fails)."""

    def send_after_commit() -> None:
        sender.send(name, event.id, payload)

    return send_after_commit


def _waits_for_commit(on_commit: bool | None) -> bool:
    return get_settings().on_commit if on_commit is None else on_commit


def _hook_for(function: str, name: str) -> TransactionHook:
    """The transaction hook, or :class:`~eventlib.ConfigurationError` saying
    how to install one."""
    if _transaction_hook is None:
        raise ConfigurationError(
            f"eventlib.{function}({name!r}, on_commit=True) needs a transaction hook: add "
            "'eventlib.contrib.django' to INSTALLED_APPS (or call set_transaction_hook)"
        )
    return _transaction_hook


def _sends_in_memory() -> bool:
    """Whether :meth:`~eventlib.sending.Sender.send` would only put the event
    into the buffer of the ``background`` mode, which has room for it."""
    settings = get_settings()
    return (
        settings.dispatch == "background"
        and not sender.is_eager(settings.celery_app)
        and not sender._recorders
        and len(sender._buffer) < settings.buffer_size
    )
