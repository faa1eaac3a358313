"""Handlers: the ``handler`` decorator and ``HANDLER_REGISTRY``.

A handler is any callable taking the event instance.  Methods of an event
class marked with a bare ``@handler`` are called as ``method(event)``, which is
what calling an unbound method means; functions declared anywhere with
``@handler('app.EventName')`` are called the same way.  Both forms return the
decorated function unchanged, so it can still be called directly.

A handler may declare how often it is retried when it raises
(``@handler(retries=5, backoff=2.0)``); an event class may declare the same
for its handlers that don't (``retries = 3`` in its body).  Across processes
a handler is known by its qualified name, ``module.QualifiedName``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _state
from .discovery import parse_event_name
from .exceptions import InvalidEventName

if TYPE_CHECKING:
    from .event import BaseEvent

__all__ = [
    "ALL_EVENTS",
    "DEFAULT_BACKOFF",
    "DEFAULT_RETRIES",
    "EXTERNAL_HANDLER_REGISTRY",
    "HANDLER_REGISTRY",
    "MAX_RETRY_DELAY",
    "METHOD_MARK",
    "ExternalHandlerRegistry",
    "HandlerOptions",
    "HandlerRegistry",
    "check_retry_options",
    "external_handler",
    "handler",
    "handler_name",
    "matches",
    "method_handlers",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute holding the :class:`HandlerOptions` of a method marked with
#: ``@handler``.
METHOD_MARK = "__eventlib_handler__"

ALL_EVENTS = "*"

#: Retries of a handler when neither it nor its event class declares any.
DEFAULT_RETRIES = 0
#: Base of the delay between retries, in seconds, when none is declared.
DEFAULT_BACKOFF = 2.0
#: No retry waits longer than this, in seconds: a retry waits in a worker,
#: unacknowledged, and brokers give such messages back after a while (Redis's
#: ``visibility_timeout``, one hour by default; RabbitMQ's ``consumer_timeout``,
#: 30 minutes by default).
MAX_RETRY_DELAY = 900.0


@dataclass(frozen=True)
class HandlerOptions:
    """How a handler is retried: ``None`` means "not declared here", and
    :meth:`HandlerRegistry.options_of` fills it from the event class or the
    defaults."""

    #: How many times the handler runs again after it raised, before the
    #: failure becomes a dead letter.
    retries: int | None = None
    #: Retry ``n`` (1, 2, ...) waits about ``backoff ** n`` seconds.
    backoff: float | None = None

    def __post_init__(self) -> None:
        check_retry_options(self.retries, self.backoff, "@handler")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first):
        ``backoff ** retry`` (at most :data:`MAX_RETRY_DELAY`), times a random
        factor between 0.5 and 1.5 so that handlers failing together do not
        retry together, and never more than :data:`MAX_RETRY_DELAY`."""
        backoff = DEFAULT_BACKOFF if self.backoff is None else self.backoff
        backoff = float(min(backoff, MAX_RETRY_DELAY))  # a huge int has no float
        try:
            base = min(backoff**retry, MAX_RETRY_DELAY)
        except OverflowError:
            base = MAX_RETRY_DELAY
        return min(base * random.uniform(0.5, 1.5), MAX_RETRY_DELAY)


def check_retry_options(retries: Any, backoff: Any, where: str) -> None:
    """Check declared retry options; ``None`` means not declared.

    Raises ``TypeError`` unless ``retries`` is an int and ``backoff`` a
    number, ``ValueError`` when either is negative; ``where`` names the
    declaration in the message.
    """
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"{where}: retries must be a whole number, not {retries!r}")
        if retries < 0:
            raise ValueError(f"{where}: retries must be 0 or more, not {retries!r}")
    if backoff is not None:
        if isinstance(backoff, bool) or not isinstance(backoff, int | float):
            raise TypeError(f"{where}: backoff must be a number of seconds, not {backoff!r}")
        if not backoff >= 0:
            raise ValueError(f"{where}: backoff must be 0 or more, not {backoff!r}")


@overload
def handler(target: F, /) -> F: ...
@overload
def handler(
    target: str, /, *, retries: int | None = None, backoff: float | None = None
) -> Callable[[F], F]: ...
@overload
def handler(
    target: None = None, /, *, retries: int | None = None, backoff: float | None = None
) -> Callable[[F], F]: ...
def handler(
    target: Any = None, /, *, retries: int | None = None, backoff: float | None = None
) -> Any:
    """Declare a handler.

    Used bare on a method of a :class:`~eventlib.BaseEvent` subclass, it marks
    the method as a handler of that event::

        class EmailClick(BaseEvent):
            @handler
            def count(self): ...

            @handler(retries=5, backoff=2.0)
            def sync_crm(self): ...

    Called with an event name, it registers a function declared anywhere::

        @handler('shop.Refund')          # one event
        @handler('shop.*')               # every event of the shop app
        @handler('*')                    # every event
        @handler('shop.Refund', retries=3)
        def audit(event): ...

    ``'shop.*'`` matches the events of the app ``shop`` itself, not those of
    ``shop.orders``.  Registering a module-level function again under the
    same module and qualified name (a module imported twice) replaces the
    earlier one in place; lambdas and nested functions are told apart by
    identity.

    ``retries`` is how many times the handler alone runs again, in a worker,
    after it raised; retry ``n`` waits about ``backoff ** n`` seconds (see
    :meth:`HandlerOptions.delay`).  A handler that declares neither takes its
    event class's ``retries`` and ``backoff``, by default 0 and 2.0.  The
    decorated function is returned unchanged either way.

    Raises :class:`~eventlib.InvalidEventName` for a malformed name or
    pattern; ``TypeError`` when used bare on something that is not a method
    of a class (a function handler needs its event name) or when ``retries``
    or ``backoff`` is not a number; ``ValueError`` when one is negative.
    """
    options = HandlerOptions(retries, backoff)
    if isinstance(target, str):
        pattern = _parse_target(target)

        def register(function: F) -> F:
            if not callable(function):
                raise TypeError(f"@handler({target!r}) decorates a callable, not {function!r}")
            HANDLER_REGISTRY._register(pattern, function, options)
            return function

        return register
    if target is None:

        def mark(method: F) -> F:
            return _mark_method(method, options)

        return mark
    if callable(target):
        return _mark_method(target, options)
    raise TypeError(f"@handler takes a method or an event name, not {target!r}")


def _mark_method(method: F, options: HandlerOptions) -> F:
    if not callable(method):
        raise TypeError(f"@handler(...) decorates a method, not {method!r}")
    parts = getattr(method, "__qualname__", "").split(".")
    if len(parts) < 2 or parts[-2] == "<locals>":
        raise TypeError(
            f"@handler is used bare on {_qualified_name(method)}, which is not a method: "
            "a function handler names its event, as in @handler('app.EventName')"
        )
    setattr(method, METHOD_MARK, options)
    return method


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


def _first_set(*values: Any) -> Any:
    return next(value for value in values if value is not None)


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
        if callable(value) and isinstance(getattr(value, METHOD_MARK, None), HandlerOptions):
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
        # (pattern, qualified name, function, options), in registration order.
        self._functions: list[tuple[str, str, Callable[..., Any], HandlerOptions]] = []
        # Per event class: its handlers and the options each declared.
        self._resolved: dict[
            type, tuple[tuple[Callable[..., Any], ...], tuple[HandlerOptions, ...]]
        ] = {}

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
        return self._handlers_and_options(event_class)[0]

    def options_of(
        self, event_class: type[BaseEvent], function: Callable[..., Any]
    ) -> HandlerOptions:
        """The retry options ``function`` has as a handler of ``event_class``,
        both set: what the handler declared, else what the event class
        declares (its ``retries`` and ``backoff`` attributes), else the
        defaults.  Raises ``KeyError`` when ``function`` is not one of its
        handlers."""
        handlers, declared = self._handlers_and_options(event_class)
        found = [options for f, options in zip(handlers, declared, strict=True) if f is function]
        if not found:
            raise KeyError(f"{_qualified_name(function)} is not a handler of {event_class.name}")
        options = found[0]
        return HandlerOptions(
            _first_set(options.retries, getattr(event_class, "retries", None), DEFAULT_RETRIES),
            _first_set(options.backoff, getattr(event_class, "backoff", None), DEFAULT_BACKOFF),
        )

    def find_handler(self, event_class: type[BaseEvent], name: str) -> Callable[..., Any]:
        """The handler of ``event_class`` whose :func:`handler_name` is
        ``name`` (the first, in call order, should two share it).  Raises
        ``KeyError`` when there is none: it was renamed or removed."""
        for function in self.handlers_of(event_class):
            if _qualified_name(function) == name:
                return function
        raise KeyError(f"the event {event_class.name} has no handler named {name}")

    def _handlers_and_options(
        self, event_class: type[BaseEvent]
    ) -> tuple[tuple[Callable[..., Any], ...], tuple[HandlerOptions, ...]]:
        """The handlers of ``event_class`` in call order, and the options
        each declared; cached until the next declaration."""
        try:
            return self._resolved[event_class]
        except KeyError:
            pass
        with self._lock:
            methods = self._events[event_class]
            name = event_class.name
            functions = [(f, o) for pattern, _, f, o in self._functions if pattern == name]
            patterns = [
                (f, o)
                for pattern, _, f, o in self._functions
                if pattern != name and matches(pattern, name)
            ]
            entries = [(f, getattr(f, METHOD_MARK)) for f in methods] + functions + patterns
            resolved = self._resolved[event_class] = (
                tuple(f for f, _ in entries),
                tuple(o for _, o in entries),
            )
            return resolved

    def _declare(self, event_class: type) -> None:
        with self._lock:
            self._events[event_class] = method_handlers(event_class)
            self._resolved.clear()

    def _register(
        self, pattern: str, function: Callable[..., Any], options: HandlerOptions
    ) -> None:
        with self._lock:
            _add_function(self._functions, pattern, function, options)
            self._resolved.clear()

    def _snapshot(self) -> tuple[Any, ...]:
        with self._lock:
            return dict(self._events), list(self._functions)

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        with self._lock:
            events, functions = snapshot
            self._events, self._functions = dict(events), list(functions)
            self._resolved.clear()

    def _after_fork(self) -> None:
        self._lock = threading.RLock()


def _add_function(
    functions: list[tuple[str, str, Callable[..., Any], HandlerOptions]],
    pattern: str,
    function: Callable[..., Any],
    options: HandlerOptions,
) -> None:
    """Add ``function`` to ``functions`` for ``pattern``, or replace the
    one registered under the same pattern and qualified name (its module
    imported twice).  Lambdas and nested functions are told apart by
    identity."""
    key = _qualified_name(function)
    if "<" in key:
        key = f"{key}#{id(function)}"
    entry = (pattern, key, function, options)
    for index, (registered_pattern, registered_key, _, _) in enumerate(functions):
        if (registered_pattern, registered_key) == (pattern, key):
            functions[index] = entry
            return
    functions.append(entry)


def matches(pattern: str, name: str) -> bool:
    """Whether the handler pattern ``pattern`` (``'app.Event'``, ``'app.*'``
    or ``'*'``) matches the event name ``name``."""
    if pattern in (name, ALL_EVENTS):
        return True
    return pattern.endswith(".*") and pattern[:-2] == name.rpartition(".")[0]


HANDLER_REGISTRY = HandlerRegistry()
_state.declarations(HANDLER_REGISTRY)


# ------------------------------------------------------ external handlers ---


class ExternalHandlerRegistry:
    """The functions declared with :func:`external_handler` in this
    process, by pattern, in registration order.  Unlike
    :class:`HandlerRegistry` it knows no event classes: a listener matches
    the event names it receives against the patterns."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._functions: list[tuple[str, str, Callable[..., Any], HandlerOptions]] = []

    def __repr__(self) -> str:
        return f"<ExternalHandlerRegistry of {len(self._functions)} functions>"

    def __len__(self) -> int:
        return len(self._functions)

    def handlers_of(self, name: str) -> tuple[Callable[..., Any], ...]:
        """The external handlers of the event ``name``, in registration order."""
        with self._lock:
            return tuple(f for pattern, _, f, _ in self._functions if matches(pattern, name))

    def options_of(self, name: str, function: Callable[..., Any]) -> HandlerOptions:
        """The retry options of ``function`` as an external handler of the
        event ``name``, both set (what it declared, else the defaults).
        Raises ``KeyError`` when it is not one of its handlers."""
        with self._lock:
            for pattern, _, registered, options in self._functions:
                if registered is function and matches(pattern, name):
                    return HandlerOptions(
                        _first_set(options.retries, DEFAULT_RETRIES),
                        _first_set(options.backoff, DEFAULT_BACKOFF),
                    )
        raise KeyError(f"{_qualified_name(function)} is not an external handler of {name}")

    def find_handler(self, name: str, handler: str) -> Callable[..., Any]:
        """The external handler of the event ``name`` whose
        :func:`handler_name` is ``handler``.  Raises ``KeyError`` when there
        is none: it was renamed or removed."""
        for function in self.handlers_of(name):
            if _qualified_name(function) == handler:
                return function
        raise KeyError(f"the event {name} has no external handler named {handler} here")

    def _register(
        self, pattern: str, function: Callable[..., Any], options: HandlerOptions
    ) -> None:
        with self._lock:
            _add_function(self._functions, pattern, function, options)

    def _snapshot(self) -> tuple[Any, ...]:
        with self._lock:
            return (list(self._functions),)

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        with self._lock:
            (functions,) = snapshot
            self._functions = list(functions)

    def _after_fork(self) -> None:
        self._lock = threading.RLock()


EXTERNAL_HANDLER_REGISTRY = ExternalHandlerRegistry()
_state.declarations(EXTERNAL_HANDLER_REGISTRY)


def external_handler(
    pattern: str, /, *, retries: int | None = None, backoff: float | None = None
) -> Callable[[F], F]:
    """Register a function to run, in a listener (``eventlib listen``), on
    every broadcast event whose name matches ``pattern`` (``'shop.Refund'``,
    ``'shop.*'`` or ``'*'``, as for :func:`handler`)::

        @external_handler('shop.Refund', retries=3)
        def mirror_refund(event):
            event.name, event.id, event.created_at, event.data

    The function gets a :class:`~eventlib.broadcast.ExternalEvent`: the
    process needs none of the event classes.  ``retries`` and ``backoff``
    work as for :func:`handler` (by default 0 and 2.0; there is no event
    class to take them from).  The function is returned unchanged.

    Raises :class:`~eventlib.InvalidEventName` for a malformed pattern;
    ``TypeError`` when what it decorates is not callable or an option is not
    a number; ``ValueError`` when an option is negative.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"@external_handler takes an event name or pattern, not {pattern!r}")
    options = HandlerOptions(retries, backoff)
    parsed = _parse_target(pattern)

    def register(function: F) -> F:
        if not callable(function):
            raise TypeError(
                f"@external_handler({pattern!r}) decorates a callable, not {function!r}"
            )
        EXTERNAL_HANDLER_REGISTRY._register(parsed, function, options)
        return function

    return register
