"""eventlib: log events in one cheap call, process them in Celery workers.

The public API is what this module exports; everything else is importable but
internal.  See the README for the list and spec.md for the behaviour.
"""

from .conf import configure
from .discovery import autodiscover
from .dispatch import alog, log
from .event import BaseEvent
from .exceptions import (
    ConfigurationError,
    DeserializationError,
    DispatchError,
    EventlibError,
    EventNotFound,
    InvalidEventName,
    ProcessingFailed,
    SerializationError,
    SpoolError,
    ValidationError,
)
from .processing import ProcessResult, process
from .registry import HANDLER_REGISTRY, external_handler, handler
from .sending import flush
from .serialization import register_type

__all__ = [
    "HANDLER_REGISTRY",
    "BaseEvent",
    "ConfigurationError",
    "DeserializationError",
    "DispatchError",
    "EventNotFound",
    "EventlibError",
    "InvalidEventName",
    "ProcessResult",
    "ProcessingFailed",
    "SerializationError",
    "SpoolError",
    "ValidationError",
    "alog",
    "autodiscover",
    "configure",
    "external_handler",
    "flush",
    "handler",
    "log",
    "process",
    "register_type",
]
