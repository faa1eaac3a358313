"""Naming and discovery: from ``'app.EventName'`` to an event class.

``'shop.orders.Refund'`` names the class ``Refund`` in the module
``shop.orders.events``: the class name is what follows the last dot, the app is
everything before it.  When the ``apps`` setting names apps, only their events
are found: a name of any other app is refused without importing anything, so
that whoever can write to the broker cannot make a worker import a module.
"""

from __future__ import annotations

import importlib
import re
import threading
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

from . import _state
from .conf import get_settings
from .exceptions import EventNotFound, InvalidEventName

if TYPE_CHECKING:
    from .event import BaseEvent

__all__ = [
    "EVENTS_MODULE",
    "EventName",
    "autodiscover",
    "clear_cache",
    "discover_configured_apps",
    "find_event",
    "parse_event_name",
]

EVENTS_MODULE = "events"

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_NAME = re.compile(rf"(?P<app>{_IDENTIFIER}(?:\.{_IDENTIFIER})*)\.(?P<event>{_IDENTIFIER})")


class EventName(NamedTuple):
    """An event name split in its two parts."""

    app: str
    event: str

    @property
    def module(self) -> str:
        """The module that declares the event, ``'<app>.events'``."""
        return f"{self.app}.{EVENTS_MODULE}"


class _Found:
    """What this process found: the class of each event name looked up, and
    the apps whose events modules :func:`discover_configured_apps` imported,
    with the lock that guards them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.classes: dict[str, tuple[EventName, type[BaseEvent]]] = {}
        self.apps: tuple[str, ...] | None = None

    def remember(self, name: str, parsed: EventName, event_class: type[BaseEvent]) -> None:
        with self._lock:
            self.classes[name] = (parsed, event_class)

    def discover(self, apps: tuple[str, ...]) -> None:
        """:func:`autodiscover` ``apps`` unless they are the apps discovered last."""
        if self.apps == apps:
            return
        with self._lock:
            if self.apps != apps:
                autodiscover(apps)
                self.apps = apps

    def reset(self) -> None:
        """Forget every class found and the apps discovered."""
        with self._lock:
            self.classes.clear()
            self.apps = None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


_found = _Found()
_state.process_state(_found)


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
    no ``events`` module.  When the ``apps`` setting is not empty and the app
    is not one of them (exactly: ``'shop'`` does not admit ``'shop.orders'``),
    it raises ``EventNotFound`` saying so, and imports nothing.  Any other
    error raised while importing the module propagates unchanged, so a broken
    events module is reported as itself.
    """
    apps = get_settings().apps
    cached = _found.classes.get(name) if isinstance(name, str) else None
    if cached is not None:
        parsed, event_class = cached
        _check_configured(parsed, apps)
        return event_class
    parsed = parse_event_name(name)
    _check_configured(parsed, apps)
    event_class = _import_event(parsed)
    _found.remember(name, parsed, event_class)
    return event_class


def _check_configured(parsed: EventName, apps: tuple[str, ...]) -> None:
    if apps and parsed.app not in apps:
        raise EventNotFound(
            f"There is no event named {parsed.event} in the {parsed.app} app: "
            f"{parsed.app} is not among the configured apps"
        )


def _import_event(parsed: EventName) -> type[BaseEvent]:
    from .event import BaseEvent

    not_found = EventNotFound(f"There is no event named {parsed.event} in the {parsed.app} app")
    try:
        module = importlib.import_module(parsed.module)
    except ModuleNotFoundError as error:
        if not _is_missing(parsed.module, error):
            raise
        raise not_found from error
    candidate = getattr(module, parsed.event, None)
    if not (isinstance(candidate, type) and issubclass(candidate, BaseEvent)):
        raise not_found
    if candidate is BaseEvent:
        raise not_found
    wanted = f"{parsed.app}.{parsed.event}"
    if candidate.name != wanted:
        # Declared elsewhere and imported here, or under another name:
        # its handlers are those of its one name, so refuse the other.
        raise EventNotFound(
            f"There is no event named {parsed.event} in the {parsed.app} app: "
            f"{parsed.module}.{parsed.event} is the event {candidate.name} (declared in "
            f"{candidate.__module__}), which has one name: log it as {candidate.name!r}"
        )
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


def discover_configured_apps() -> None:
    """Run :func:`autodiscover` once per process and per ``apps`` setting,
    so that the function handlers declared in the configured apps are
    registered (what :func:`eventlib.process` does before its first event).
    Raises what :func:`autodiscover` raises; the next call tries again."""
    _found.discover(get_settings().apps)


def clear_cache() -> None:
    """Forget every event class found and the apps discovered, so that the
    next lookup imports again what is no longer in ``sys.modules`` (for
    tests that create and remove apps)."""
    _found.reset()
