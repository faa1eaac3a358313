"""Handlers: the ``handler`` decorator and ``HANDLER_REGISTRY``.

A handler is any callable taking the event instance.  Methods of an event
class marked with a bare ``@handler`` are called as ``method(event)``, which is
what calling an unbound method means; functions declared anywhere with
``@handler('app.EventName')`` are called the same way.  Both forms return the
decorated function unchanged, so it can still be called directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .discovery import parse_event_name
from .exceptions import InvalidEventName

if TYPE_CHECKING:
    from .event import BaseEvent

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set on a method marked with a bare ``@handler``.
METHOD_MARK = "__eventlib_handler__"

ALL_EVENTS = "*"


@overload
def handler(target: F, /) -> F: ...
@overload
def handler(target: str, /) -> Callable[[F], F]: ...
def handler(target: Any, /) -> Any:
    """Declare a handler.

    Used bare on a method of a :class:`~eventlib.BaseEvent` subclass, it marks
    the method as a handler of that event::

        class EmailClick(BaseEvent):
            @handler
            def count(self): ...

    Called with an event name, it registers a function declared anywhere::

        @handler('shop.Refund')          # one event
        @handler('shop.*')               # every event of the shop app
        @handler('*')                    # every event
        def audit(event): ...

    ``'shop.*'`` matches the events of the app ``shop`` itself, not those of
    ``shop.orders``.  Registering a module-level function again under the
    same module and qualified name (a module imported twice) replaces the
    earlier one in place; lambdas and nested functions are told apart by
    identity.

    Raises :class:`~eventlib.InvalidEventName` for a malformed name or
    pattern, and ``TypeError`` when used bare on something that is not a
    method of a class (a function handler needs its event name).
    """
    if isinstance(target, str):
        pattern = _parse_target(target)

        def register(function: F) -> F:
            if not callable(function):
                raise TypeError(f"@handler({target!r}) decorates a callable, not {function!r}")
            HANDLER_REGISTRY._register(pattern, function)
            return function

        return register
    if callable(target):
        parts = getattr(target, "__qualname__", "").split(".")
        if len(parts) < 2 or parts[-2] == "<locals>":
            raise TypeError(
                f"@handler is used bare on {_qualified_name(target)}, which is not a method: "
                "a function handler names its event, as in @handler('app.EventName')"
            )
        setattr(target, METHOD_MARK, True)
        return target
    raise TypeError(f"@handler takes a method or an event name, not {target!r}")


def _parse_target(target: str) -> str:
    if target == ALL_EVENTS:
        return target
    if target.endswith(".*"):
        app = target[:-2]
        parse_event_name(f"{app}.Event")  # the app part must be well formed
        return target
    if "*" in target:
        raise InvalidEventName(
            f"Invalid handler pattern {target!r}: patterns are '*' and 'app.*' only"
        )
    parse_event_name(target)
    return target


def _qualified_name(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def handler_name(function: Callable[..., Any]) -> str:
    """The name eventlib uses for a handler in logs and summaries:
    ``module.QualifiedName``."""
    return _qualified_name(function)


def method_handlers(event_class: type) -> tuple[Callable[..., Any], ...]:
    """The methods of ``event_class`` marked with ``@handler``, in the order
    their names were first declared (bases before subclasses).  A subclass that
    overrides a handler keeps its place; overriding it with an unmarked method
    removes it."""
    order: dict[str, int] = {}
    for klass in reversed(event_class.__mro__):
        for attribute in vars(klass):
            order.setdefault(attribute, len(order))
    found = []
    for attribute in order:
        value = next(vars(k)[attribute] for k in event_class.__mro__ if attribute in vars(k))
        if callable(value) and getattr(value, METHOD_MARK, False):
            found.append(value)
    return tuple(found)


class HandlerRegistry(Mapping["type[BaseEvent]", "list[Callable[..., Any]]"]):
    """A read-only mapping from each declared event class to its handlers, in
    call order: methods first (in declaration order), then functions
    registered for its name (in registration order), then pattern handlers
    that match it (in registration order).

    Every lookup returns a new list; changing it changes nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._events: dict[type, tuple[Callable[..., Any], ...]] = {}
        # (pattern, qualified name, function), in registration order.
        self._functions: list[tuple[str, str, Callable[..., Any]]] = []
        self._resolved: dict[type, tuple[Callable[..., Any], ...]] = {}

    def __getitem__(self, event_class: type[BaseEvent]) -> list[Callable[..., Any]]:
        return list(self.handlers_of(event_class))

    def __iter__(self) -> Iterator[type[BaseEvent]]:
        return iter(list(self._events))

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"<HandlerRegistry of {len(self)} event classes>"

    def handlers_of(self, event_class: type[BaseEvent]) -> tuple[Callable[..., Any], ...]:
        """The handlers of ``event_class`` as a tuple, cached until the next
        registration.  Raises ``KeyError`` for a class that is not an event."""
        try:
            return self._resolved[event_class]
        except KeyError:
            pass
        with self._lock:
            methods = self._events[event_class]
            name = event_class.name
            app_pattern = name.rpartition(".")[0] + ".*"
            functions = tuple(f for pattern, _, f in self._functions if pattern == name)
            patterns = tuple(
                f for pattern, _, f in self._functions if pattern in (app_pattern, ALL_EVENTS)
            )
            resolved = self._resolved[event_class] = methods + functions + patterns
            return resolved

    def _declare(self, event_class: type) -> None:
        with self._lock:
            self._events[event_class] = method_handlers(event_class)
            self._resolved.clear()

    def _register(self, pattern: str, function: Callable[..., Any]) -> None:
        key = _qualified_name(function)
        if "<" in key:  # a lambda or a nested function: only itself is itself
            key = f"{key}#{id(function)}"
        with self._lock:
            entry = (pattern, key, function)
            for index, (registered_pattern, registered_key, _) in enumerate(self._functions):
                if (registered_pattern, registered_key) == (pattern, key):
                    self._functions[index] = entry
                    break
            else:
                self._functions.append(entry)
            self._resolved.clear()

    def _snapshot(self) -> tuple[Any, ...]:
        with self._lock:
            return dict(self._events), list(self._functions)

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        with self._lock:
            events, functions = snapshot
            self._events, self._functions = dict(events), list(functions)
            self._resolved.clear()


HANDLER_REGISTRY = HandlerRegistry()
