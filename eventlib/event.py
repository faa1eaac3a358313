"""``BaseEvent``: what an event is, and how its data is validated."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from . import _state
from .discovery import EVENTS_MODULE
from .exceptions import ValidationError
from .registry import DEFAULT_BACKOFF, DEFAULT_RETRIES, HANDLER_REGISTRY, check_retry_options

__all__ = ["BaseEvent"]


def _app_of(module: str) -> str:
    """The app of an event class declared in ``module``: what comes before
    its ``events`` module (``shop.orders.events`` → ``shop.orders``), also
    when ``events`` is a package and the class lives in a module of it
    (``app.events.models`` → ``app``, as its ``__init__`` re-exports it);
    the module itself when it is no ``events`` module."""
    parts = module.split(".")
    if EVENTS_MODULE in parts[1:]:
        last = len(parts) - 1 - parts[::-1].index(EVENTS_MODULE)
        return ".".join(parts[:last])
    return module


class _EventIds:
    """The ids of new events: random UUIDs (version 4), as ``uuid.uuid4()``
    makes them, from the operating system's random source, read for 256 ids
    at a time.

    ``uuid.uuid4()`` reads 16 bytes per id, and each read lets other threads
    take the interpreter lock: the publisher thread of the background and
    spool modes, when it has work, took it at almost every ``log()``, which
    then waited until that thread blocked on the network (the slowest
    ``log()`` calls of a burst).  A forked child reads afresh, so that it
    never makes its parent's ids.  Thread-safe: each id of a read is handed
    out once.
    """

    _PER_READ = 1024

    def __init__(self) -> None:
        self._pool: Iterator[bytes] = iter(())

    def new(self) -> str:
        try:
            raw = next(self._pool)
        except StopIteration:
            read = os.urandom(16 * self._PER_READ)
            pool = self._pool = iter([read[i : i + 16] for i in range(0, len(read), 16)])
            raw = next(pool)
        return str(uuid.UUID(bytes=raw, version=4))

    def reset(self) -> None:
        self._pool = iter(())

    def _after_fork(self) -> None:
        self.reset()


_event_ids = _EventIds()
_state.process_state(_event_ids)


class BaseEvent:
    """The base class of every event.

    Declare an event by subclassing it in your app's ``events`` module; the
    class ``Refund`` in ``shop/events.py`` is the event ``'shop.Refund'``.
    Declaring the class registers it in :data:`~eventlib.HANDLER_REGISTRY`,
    together with its methods marked with ``@handler``.

    An instance has:

    - ``name``: the event name, ``'app.EventName'``;
    - ``data``: a dict, the data given to ``log()`` (after ``clean()``);
    - ``id``: a string, unique to this occurrence of the event, the same in
      the caller and in every handler (use it to make handlers idempotent);
    - ``created_at``: a timezone-aware UTC ``datetime``, when ``log()`` ran;
    - ``source``: where it was logged, ``'python'`` (a ``log()`` call) or
      ``'http'`` (the HTTP endpoint, see :mod:`eventlib.http`);
    - ``client_address``: for an event from the HTTP endpoint, the address
      of the client that sent it (``None`` otherwise).

    An event is broadcast, once its handlers ran in the worker, to the
    listeners of other processes (:mod:`eventlib.broadcast`) when its class
    says ``broadcast = True`` or overrides :meth:`broadcast`, or when the
    ``broadcast`` setting is on and the class does not say
    ``broadcast = False``.

    The class attributes ``retries`` and ``backoff`` are the retry options of
    the event's handlers that declare none (see :func:`~eventlib.handler`);
    a subclass that sets one to something other than a number >= 0 raises
    ``TypeError`` or ``ValueError`` when it is declared.
    """

    #: The event name, derived from the module and class name.
    name: ClassVar[str] = "eventlib.BaseEvent"
    #: Whether browsers may log this event through the HTTP endpoint.
    public: ClassVar[bool] = False
    #: How many times a failed handler of this event runs again, unless it
    #: declares its own ``retries``.
    retries: ClassVar[int] = DEFAULT_RETRIES
    #: Retry ``n`` of a handler of this event waits about ``backoff ** n``
    #: seconds, unless the handler declares its own ``backoff``.
    backoff: ClassVar[float] = DEFAULT_BACKOFF

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = f"{_app_of(cls.__module__)}.{cls.__name__}"
        check_retry_options(cls.retries, cls.backoff, f"the event {cls.name}")
        HANDLER_REGISTRY._declare(cls)

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        created_at: datetime | None = None,
        source: str = "python",
        client_address: str | None = None,
    ) -> None:
        self.data: dict[str, Any] = {} if data is None else dict(data)
        self.source = source
        self.client_address = client_address
        self.id: str = id if id is not None else _event_ids.new()
        self.created_at: datetime = created_at if created_at is not None else datetime.now(UTC)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} id={self.id}>"

    def clean(self) -> Mapping[str, Any] | None:
        """Validate ``self.data``; override it in your event.

        Raise :class:`~eventlib.ValidationError` to refuse the data.  Return a
        new mapping to replace ``self.data`` (to normalise or add values), or
        ``None`` to keep it.  It runs twice: in ``log()`` before the event is
        sent, and in the worker on the deserialized data, so it must accept
        its own output after a JSON round trip.
        """
        return None

    def broadcast(self, data: dict[str, Any]) -> Mapping[str, Any] | None:
        """What is broadcast of this event: by default ``data`` itself (the
        event's data, as its handlers saw it).  Override it to send less or
        more, or return ``None`` to send nothing this time.  It runs in the
        worker, after the handlers; what it returns must serialize, as data
        given to ``log()`` must.

        Overriding it opts the event in, as ``broadcast = True`` does; a
        class may instead set ``broadcast = False`` (never broadcast, even
        with the ``broadcast`` setting on) or ``broadcast = True``.
        """
        return data

    def require_data_keys(self, keys: Iterable[str]) -> None:
        """Raise :class:`~eventlib.ValidationError` unless every key is in
        ``self.data``; the message lists the missing keys in the order given:
        ``The following keys are missing: deal_id, code``."""
        missing = [key for key in keys if key not in self.data]
        if missing:
            raise ValidationError(f"The following keys are missing: {', '.join(missing)}")

    def validate(self) -> None:
        """Run :meth:`clean` and apply what it returns.

        Raises whatever ``clean()`` raises, and ``TypeError`` when it returns
        something that is neither ``None`` nor a mapping.
        """
        cleaned = self.clean()
        if cleaned is None:
            return
        if not isinstance(cleaned, Mapping):
            raise TypeError(
                f"{type(self).__qualname__}.clean() must return a mapping or None, "
                f"not {type(cleaned).__name__}"
            )
        self.data = dict(cleaned)
