"""Event data to JSON and back, extensible for types JSON does not have.

JSON's own values (``str``, ``int``, ``float``, ``bool``, ``None``, lists and
dicts with string keys) pass through unchanged; a tuple becomes a list.  Any
other value is written as a *tagged value*, ``{"__eventlib__": tag, "value":
...}``, and read back by the decoder registered for its tag.  ``datetime``,
``date``, ``time``, ``Decimal`` and ``UUID`` are registered here; users register
their own types with :func:`register_type`.

Decoding never imports a module or calls anything but a registered decoder:
an unknown tag is a :class:`~eventlib.DeserializationError`.  Both ways,
data may nest at most :data:`MAX_DEPTH` levels deep, and its strings (keys
included) must have a UTF-8 form, so that what ``log()`` accepts, the spool
can keep and the worker can read.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload
from uuid import UUID

from . import _state
from .exceptions import DeserializationError, SerializationError

if TYPE_CHECKING:
    from .event import BaseEvent

__all__ = [
    "MAX_DEPTH",
    "TAG",
    "VALUE",
    "Codec",
    "Envelope",
    "deserialize_event",
    "dumps",
    "encode",
    "loads",
    "refuse_constant",
    "register_type",
    "serialize_event",
]

T = TypeVar("T")

TAG = "__eventlib__"
VALUE = "value"

#: How deeply event data may nest, counted in the JSON written: the data
#: mapping is level 1, and every dict, list or tuple and every value of a
#: registered type (a tagged value, itself a JSON object) adds one level (a
#: dict holding the key ``__eventlib__``, written as a list of pairs, three).
#: Serialization refuses deeper data with
#: :class:`~eventlib.SerializationError`, deserialization with
#: :class:`~eventlib.DeserializationError`, so that the worker reads
#: whatever ``log()`` accepts.
MAX_DEPTH = 100

_PLAIN = frozenset({int, bool, type(None)})
# A lone surrogate ("\ud800") is a Python string, and valid JSON, with no
# UTF-8 form: the broker's encoder escapes it, the spool cannot write it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Strings (their escapes included) and brackets of JSON text.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
# The base type's own conversion: str() of a (str, Enum) member is "Cls.NAME".
_PLAIN_CONVERSIONS: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (int, int.__index__),
    (float, float.__float__),
    (str, str.__str__),
)


@dataclass(frozen=True)
class Codec:
    """How one type is written to JSON and read back."""

    type: type
    tag: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_RESERVED_TAGS = frozenset({"datetime", "date", "time", "decimal", "uuid", "dict"})


class _Codecs:
    """The registered types: their codecs by tag and by type, the codec
    each type met so far uses (its own or a base class's), and the lock
    that guards them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_tag: dict[str, Codec] = {}
        self.by_type: dict[type, Codec] = {}
        self._of_type: dict[type, Codec | None] = {}

    def add(self, codec: Codec) -> None:
        """Register ``codec``, replacing the one of its tag."""
        with self._lock:
            previous = self.by_tag.get(codec.tag)
            if previous is not None and previous.type is not codec.type:
                self.by_type.pop(previous.type, None)
            self.by_tag[codec.tag] = codec
            self.by_type[codec.type] = codec
            self._of_type.clear()

    def of_type(self, kind: type) -> Codec | None:
        """The codec of ``kind``, or of its nearest registered base class."""
        try:
            return self._of_type[kind]
        except KeyError:
            pass
        codec = next((self.by_type[k] for k in kind.__mro__ if k in self.by_type), None)
        self._of_type[kind] = codec
        return codec

    def _snapshot(self) -> tuple[dict[str, Codec], dict[type, Codec]]:
        with self._lock:
            return dict(self.by_tag), dict(self.by_type)

    def _restore(self, snapshot: tuple[dict[str, Codec], dict[type, Codec]]) -> None:
        with self._lock:
            self.by_tag, self.by_type = dict(snapshot[0]), dict(snapshot[1])
            self._of_type = {}

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


_codecs = _Codecs()
_state.declarations(_codecs)


@overload
def register_type(cls: type[T], /) -> type[T]: ...
@overload
def register_type(
    cls: type[T],
    /,
    *,
    encode: Callable[[T], Any],
    decode: Callable[[Any], T],
    tag: str | None = None,
) -> type[T]: ...
@overload
def register_type(
    cls: None = None,
    /,
    *,
    encode: Callable[[T], Any] | None = None,
    decode: Callable[[Any], T] | None = None,
    tag: str | None = None,
) -> Callable[[type[T]], type[T]]: ...
def register_type(
    cls: type | None = None,
    /,
    *,
    encode: Callable[[Any], Any] | None = None,
    decode: Callable[[Any], Any] | None = None,
    tag: str | None = None,
) -> Any:
    """Teach eventlib to serialize instances of ``cls``.

    With a function pair::

        register_type(Money, encode=lambda m: [m.amount, m.currency],
                      decode=lambda v: Money(*v))

    or as a class decorator, the class providing ``to_json(self)`` and a
    classmethod ``from_json(cls, value)``::

        @register_type
        class Money: ...

    ``encode`` returns anything eventlib can serialize (registered types
    included); ``decode`` receives that value after its own decoding.
    Instances of subclasses of ``cls`` use the same pair and come back as
    ``cls``.  The tag written in payloads defaults to the class's module and
    qualified name; pass ``tag`` to keep payloads readable when you move the
    class.  Registering the same tag again replaces the earlier pair.  Returns
    ``cls``.  Raises ``TypeError`` when the pair is incomplete and
    ``ValueError`` for a tag eventlib reserves for its built-in types.
    """
    if cls is None:
        return lambda klass: register_type(klass, encode=encode, decode=decode, tag=tag)
    if not isinstance(cls, type):
        raise TypeError(f"register_type() takes a class, not {cls!r}")
    if encode is None and decode is None:
        encode = getattr(cls, "to_json", None)
        decode = getattr(cls, "from_json", None)
        if encode is None or decode is None:
            raise TypeError(
                f"register_type({cls.__qualname__}) needs encode= and decode=, or the class "
                "must define to_json(self) and a classmethod from_json(cls, value)"
            )
    elif encode is None or decode is None:
        raise TypeError("register_type() takes both encode= and decode=, or neither")
    tag = tag if tag is not None else f"{cls.__module__}.{cls.__qualname__}"
    if tag in _RESERVED_TAGS:
        raise ValueError(f"the tag {tag!r} is reserved for eventlib's built-in types")
    _codecs.add(Codec(cls, tag, encode, decode))
    return cls


def encode(value: Any, path: str = "data") -> Any:
    """Return ``value`` as something ``json.dumps`` writes without help.

    Raises :class:`~eventlib.SerializationError` (a ``TypeError``) naming the
    key path and the type of the first value that has no JSON form:
    ``data['user']['joined']: cannot serialize object of type Foo``.  Dict keys
    must be strings (JSON would turn ``1`` into ``'1'`` silently), floats
    must be finite (JSON has no ``NaN``), strings and keys must have a UTF-8
    form (no lone surrogate such as ``"\\ud800"``), and the value may nest
    at most :data:`MAX_DEPTH` levels deep (which a value that contains itself
    does too).
    """
    return _encode(value, path, 1)


def _encode(value: Any, path: str, depth: int) -> Any:
    """:func:`encode`, ``value`` being at nesting level ``depth`` of the JSON
    written, should it be a JSON object or array."""
    kind = type(value)
    if kind is str:
        _check_text(value, path)
        return value
    if kind in _PLAIN:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(
                f"{path}: cannot serialize the float {value!r} (JSON has none)"
            )
        return value
    if kind is dict:
        return _encode_mapping(value, path, depth)
    if kind is list or kind is tuple:
        _check_depth(path, depth)
        return [_encode(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    codec = _codecs.of_type(kind)
    if codec is not None:
        _check_depth(path, depth)
        return {TAG: codec.tag, VALUE: _encode(codec.encode(value), path, depth + 1)}
    if isinstance(value, Mapping):
        return _encode_mapping(value, path, depth)
    if isinstance(value, (list, tuple)):
        return _encode(list(value), path, depth)
    for plain, convert in _PLAIN_CONVERSIONS:  # enums and other subclasses
        if isinstance(value, plain):
            return _encode(convert(value), path, depth)
    raise SerializationError(f"{path}: cannot serialize object of type {kind.__qualname__}")


def _encode_mapping(mapping: Mapping[Any, Any], path: str, depth: int) -> Any:
    escaped = TAG in mapping  # a user's dict that happens to use our tag key
    # An escaped dict is an object holding a list of [key, value] lists.
    _check_depth(path, depth + 2 if escaped else depth)
    inner = depth + 3 if escaped else depth + 1
    encoded = {}
    for key, item in mapping.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise SerializationError(
                    f"{path}: keys must be strings, not {type(key).__qualname__} ({key!r})"
                )
            key = str.__str__(key)
        _check_text(key, path, key=True)
        encoded[key] = _encode(item, f"{path}[{key!r}]", inner)
    if escaped:
        return {TAG: "dict", VALUE: [[key, item] for key, item in encoded.items()]}
    return encoded


def _check_text(text: str, path: str, *, key: bool = False) -> None:
    """Refuse a string with a lone surrogate: it has no UTF-8 form."""
    if text.isascii():
        return
    found = _SURROGATE.search(text)
    if found is None:
        return
    what = f"the key {_shorten(repr(text))}" if key else "a string"
    raise SerializationError(
        f"{path}: cannot serialize {what} holding a lone surrogate "
        f"({found[0]!r} at index {found.start()}), which has no UTF-8 form"
    )


def _check_depth(path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise SerializationError(
            f"{_shorten(path)}: cannot serialize data nested more than {MAX_DEPTH} levels "
            "deep (eventlib.serialization.MAX_DEPTH)"
        )


def _shorten(text: str, keep: int = 40) -> str:
    """``text``, its middle cut out when it is long."""
    if len(text) <= 2 * keep + 3:
        return text
    return f"{text[:keep]}...{text[-keep:]}"


def _decode_object(obj: dict[str, Any]) -> Any:
    if TAG not in obj:
        return obj
    tag = obj[TAG]
    codec = _codecs.by_tag.get(tag) if isinstance(tag, str) else None
    if codec is None or set(obj) != {TAG, VALUE}:
        raise DeserializationError(
            f"unknown tagged value {obj!r}: register its type with eventlib.register_type() "
            "in the process that reads it"
        )
    try:
        return codec.decode(obj[VALUE])
    except Exception as error:
        raise DeserializationError(
            f"the decoder of {tag!r} failed on {obj[VALUE]!r}: {error}"
        ) from error


def dumps(value: Any) -> str:
    """Serialize ``value`` (usually event data) to JSON text.  Raises
    :class:`~eventlib.SerializationError` as :func:`encode` does."""
    return json.dumps(encode(value), ensure_ascii=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """Read JSON text written by :func:`dumps`.  Raises
    :class:`~eventlib.DeserializationError` for anything else than JSON text,
    for invalid JSON, for data nested more than :data:`MAX_DEPTH` levels
    deep and for tagged values whose type is not registered."""
    return _loads(text, MAX_DEPTH)


def _loads(text: str | bytes, limit: int) -> Any:
    """:func:`loads`, refusing JSON text that nests more than ``limit``
    levels deep before parsing it (the parser recurses as deep as the text
    does)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        except UnicodeDecodeError as error:
            raise DeserializationError(f"invalid JSON payload: {error}") from error
    elif not isinstance(text, str):
        raise DeserializationError(
            "invalid JSON payload: expected JSON text (str or bytes), not "
            f"{type(text).__name__} ({_shorten(repr(text))})"
        )
    if _nests_deeper(text, limit):
        raise DeserializationError(
            f"invalid JSON payload: data nested more than {MAX_DEPTH} levels deep "
            "(eventlib.serialization.MAX_DEPTH)"
        )
    try:
        return json.loads(text, object_hook=_decode_object, parse_constant=refuse_constant)
    except DeserializationError:
        raise
    except ValueError as error:
        raise DeserializationError(f"invalid JSON payload: {error}") from error
    except RecursionError as error:
        raise DeserializationError("invalid JSON payload: nested too deeply") from error


def _nests_deeper(text: str, limit: int) -> bool:
    """Whether the JSON text nests objects and arrays more than ``limit``
    levels deep.  Text with fewer brackets than that is not read."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token[0]
        if bracket in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif bracket in ("]", "}"):
            depth -= 1
    return False


def refuse_constant(name: str) -> Any:
    """The ``parse_constant`` of ``json.loads``: ``NaN``, ``Infinity`` and
    ``-Infinity`` are not JSON, and raise :class:`~eventlib.DeserializationError`."""
    raise DeserializationError(f"invalid JSON payload: {name} is not JSON")


class Envelope(NamedTuple):
    """What travels with an event besides its name."""

    id: str
    created_at: datetime
    data: dict[str, Any]
    source: str = "python"
    client_address: str | None = None


def serialize_event(event: BaseEvent) -> str:
    """The payload ``log()`` sends for ``event``: JSON text holding its id,
    creation time and encoded data, and where it came from when that is not
    Python code (``source``, ``client_address``).

    Raises :class:`~eventlib.SerializationError` as :func:`encode` does, with
    a note naming the event.
    """
    try:
        data = encode(event.data)
    except SerializationError as error:
        error.add_note(f"raised serializing the data of the event {event.name}; nothing was sent")
        raise
    envelope = {"id": event.id, "created_at": event.created_at.isoformat(), "data": data}
    if event.source != "python":
        envelope["source"] = event.source
    if event.client_address is not None:
        envelope["client_address"] = event.client_address
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))


def deserialize_event(payload: str | bytes) -> Envelope:
    """Read a payload written by :func:`serialize_event`.  Raises
    :class:`~eventlib.DeserializationError` when it is not one, as
    :func:`loads` does for its data."""
    envelope = _loads(payload, MAX_DEPTH + 1)  # the data is one level down
    if not (
        isinstance(envelope, dict)
        and isinstance(envelope.get("id"), str)
        and isinstance(envelope.get("created_at"), str)
        and isinstance(envelope.get("data"), dict)
        and isinstance(envelope.get("source", ""), str)
        and isinstance(envelope.get("client_address", ""), str)
    ):
        raise DeserializationError(
            "not an eventlib payload: expected a JSON object with 'id' (string), "
            f"'created_at' (ISO 8601 string) and 'data' (object), got {str(payload)[:200]!r}"
        )
    try:
        created_at = datetime.fromisoformat(envelope["created_at"])
    except ValueError as error:
        raise DeserializationError(f"invalid created_at in payload: {error}") from error
    return Envelope(
        envelope["id"],
        created_at,
        envelope["data"],
        envelope.get("source", "python"),
        envelope.get("client_address"),
    )


_codecs.add(Codec(datetime, "datetime", datetime.isoformat, datetime.fromisoformat))
_codecs.add(Codec(date, "date", date.isoformat, date.fromisoformat))
_codecs.add(Codec(time, "time", time.isoformat, time.fromisoformat))
_codecs.add(Codec(Decimal, "decimal", str, Decimal))
_codecs.add(Codec(UUID, "uuid", str, UUID))
# Decode only: a user's dict that holds the tag key travels as key/value pairs.
_codecs.by_tag["dict"] = Codec(dict, "dict", dict, dict)
