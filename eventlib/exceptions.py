"""The errors eventlib raises.

Every error derives from :class:`EventlibError`, so ``except EventlibError``
catches anything eventlib itself decided to refuse.  Each one also derives from
the built-in exception a Python programmer would expect for the same mistake
(``ValueError`` for a bad value, ``LookupError`` for a missing event,
``TypeError`` for data that cannot be serialized), so code that predates
eventlib keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DeserializationError",
    "DispatchError",
    "EventNotFound",
    "EventlibError",
    "InvalidEventName",
    "SerializationError",
    "SpoolError",
    "ValidationError",
]


class EventlibError(Exception):
    """Base class of every error raised by eventlib."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Shown in tracebacks as eventlib.EventNotFound, where users import it.
        cls.__module__ = "eventlib"


EventlibError.__module__ = "eventlib"


class ConfigurationError(EventlibError, ValueError):
    """A setting has a value eventlib cannot use (unknown name, bad type,
    an environment variable that does not parse)."""


class InvalidEventName(EventlibError, ValueError):
    """An event name is not of the form ``'app.EventName'``.

    The app part may be dotted (``'shop.orders.Refund'``); every part must be a
    Python identifier.
    """


class EventNotFound(EventlibError, LookupError):
    """The name is well formed but no event class answers to it.

    The message is always ``There is no event named <Class> in the <app> app``,
    followed by ``: <app> is not among the configured apps`` when the ``apps``
    setting names apps and not this one (nothing was imported then); when the
    app has no ``events`` module at all, the import error is chained as the
    ``__cause__``.
    """


class ValidationError(EventlibError, ValueError):
    """An event's data was refused by its ``clean()`` method."""


class SerializationError(EventlibError, TypeError):
    """A value in an event's data has no JSON form, or the data nests too
    deeply.

    The message names the key path and the type, for example
    ``data['user']['joined']: cannot serialize object of type Foo``, or what
    else is wrong there: a string with a lone surrogate, a non-string key, a
    float JSON does not have, data nested more than
    :data:`~eventlib.serialization.MAX_DEPTH` levels deep.  Raised while
    serializing an event, it has a note naming the event.
    """


class DeserializationError(EventlibError, ValueError):
    """A payload could not be turned back into event data: it is not JSON
    text, not valid JSON, not an eventlib payload, nested more than
    :data:`~eventlib.serialization.MAX_DEPTH` levels deep, or it holds a
    tagged value whose type is not registered in this process."""


class DispatchError(EventlibError):
    """``log()`` could not hand the event to the broker (refused, timed out,
    unknown transport).  The message names the broker, without its password."""


class SpoolError(DispatchError):
    """The spool file cannot be used (unwritable, full, not a database).
    The message names the file and SQLite's error."""


class ProcessingFailed(EventlibError):
    """A worker could not process an event completely: a handler failed with
    no retry left, the event's data was refused, or the event could not be
    loaded; for a batch, one of its events.

    Raised only by eventlib's Celery tasks in a worker, once eventlib has
    logged the failure with its traceback and recorded it as a dead letter,
    so that Celery and Flower show the task as failed.  Its message is one
    line: the event, its id, each handler that failed and its exception's
    ``repr``.  eventlib's tasks declare it in their ``throws``, so Celery
    logs it in one INFO line, without a traceback.
    """
