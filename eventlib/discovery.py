"""Naming and discovery: from ``'app.EventName'`` to an event class.

``'shop.orders.Refund'`` names the class ``Refund`` in the module
``shop.orders.events``: the class name is what follows the last dot, the app is
everything before it.
"""

from __future__ import annotations

import importlib
import re
import threading
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

from .conf import get_settings
from .exceptions import EventNotFound, InvalidEventName

if TYPE_CHECKING:
    from .event import BaseEvent

EVENTS_MODULE = "events"

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME = re.compile(rf"(?P<app>{_IDENTIFIER}(?:\.{_IDENTIFIER})*)\.(?P<event>{_IDENTIFIER})")

_cache: dict[str, type[BaseEvent]] = {}
_cache_lock = threading.Lock()


class EventName(NamedTuple):
    """An event name split in its two parts."""

    app: str
    event: str

    @property
    def module(self) -> str:
        """The module that declares the event, ``'<app>.events'``."""
        return f"{self.app}.{EVENTS_MODULE}"


def parse_event_name(name: str) -> EventName:
    """Split ``'app.EventName'`` into its app and class name.

    Raises :class:`~eventlib.InvalidEventName` when ``name`` is not a string
    of at least two dotted Python identifiers (``'nodots'``, ``'app.'``,
    ``'.Event'``, ``'app..Event'`` are all refused).
    """
    if not isinstance(name, str):
        raise InvalidEventName(f"An event name must be a string, not {type(name).__name__}")
    match = _NAME.fullmatch(name)
    if match is None:
        raise InvalidEventName(
            f"Invalid event name {name!r}: expected 'app.EventName', "
            "where the app may be dotted and every part is a Python identifier"
        )
    return EventName(match["app"], match["event"])


def find_event(name: str) -> type[BaseEvent]:
    """Return the event class named ``name``, importing its app's ``events``
    module on first use.  Later calls are answered from a cache.

    Raises :class:`~eventlib.InvalidEventName` for a malformed name and
    :class:`~eventlib.EventNotFound` (``There is no event named Refund in the
    shop.orders app``) when the module has no such event class or the app has
    no ``events`` module.  Any other error raised while importing the module
    propagates unchanged, so a broken events module is reported as itself.
    """
    try:
        return _cache[name]
    except KeyError:
        pass
    from .event import BaseEvent

    parsed = parse_event_name(name)
    not_found = EventNotFound(f"There is no event named {parsed.event} in the {parsed.app} app")
    try:
        module = importlib.import_module(parsed.module)
    except ModuleNotFoundError as error:
        if not _is_missing(parsed.module, error):
            raise
        raise not_found from error
    candidate = getattr(module, parsed.event, None)
    is_event = isinstance(candidate, type) and issubclass(candidate, BaseEvent)
    if not is_event or candidate is BaseEvent:
        raise not_found
    with _cache_lock:
        _cache[name] = candidate
    return candidate


def _is_missing(module: str, error: ModuleNotFoundError) -> bool:
    """Whether ``error`` says ``module`` (or a package above it) does not
    exist, as opposed to that module importing something that does not."""
    missing = error.name or ""
    return module == missing or module.startswith(missing + ".")


def autodiscover(apps: list[str] | tuple[str, ...] | None = None) -> dict[str, ModuleType]:
    """Import the ``events`` module of every app and return them by app name.

    ``apps`` defaults to the ``apps`` setting.  As with Celery's
    ``autodiscover_tasks``, an app package that cannot be imported raises its
    ``ImportError``, an app without an ``events`` module is skipped, and an
    events module that fails to import raises its error.  Function
    handlers declared in those modules are registered as a side effect, which
    is why a worker calls this before processing its first event.
    """
    found: dict[str, ModuleType] = {}
    for app in get_settings().apps if apps is None else apps:
        importlib.import_module(app)
        module_name = f"{app}.{EVENTS_MODULE}"
        try:
            found[app] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if not _is_missing(module_name, error):
                raise
    return found


def clear_cache() -> None:
    """Forget every cached lookup (for tests that create and remove apps)."""
    with _cache_lock:
        _cache.clear()
