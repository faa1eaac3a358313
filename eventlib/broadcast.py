"""Broadcast: events that leave the worker, for listeners in other processes.

Once the worker ran an event's handlers, an event that broadcasts
(:func:`broadcasts`) is published again, as the task ``eventlib.external``,
to every *group* of listeners.  A group is a durable queue,
``eventlib.broadcast.<group>``, bound to the direct exchange
``eventlib.broadcast``; ``eventlib listen --group NAME`` runs a Celery
worker on it, whose task calls the functions declared with
:func:`~eventlib.external_handler` (:func:`eventlib.processing.process_external`).
So every group gets every broadcast event once, the listeners of one group
share its events, and a group whose listeners are all down keeps what it
misses in its queue until one comes back.

How a copy reaches each group depends on the broker:

- RabbitMQ routes one message to every bound queue itself: each group's
  queue is bound with the routing key :data:`EVERY_GROUP`, and one message
  is published with it.  AMQP cannot list queues, so the groups are also
  recorded, one message each, in the durable queue :data:`GROUPS_QUEUE`,
  which ``eventlib groups`` reads without consuming.
- On Redis, kombu keeps each exchange's bindings in Redis, and a message
  given back by a lost consumer returns to every queue its routing key
  matches: one message is published per group, with the group's name as
  routing key, so that what comes back goes to its own group only.  The
  groups are read from those bindings.
- The embedded broker keeps the bindings of :data:`EXCHANGE` in its file
  (:mod:`eventlib.embedded.transport`), and kombu's in-memory broker
  (``memory://``, one process) keeps every binding in memory: both are
  served as Redis is.
- Other kombu transports keep bindings in the memory of the process that
  declared them, so that a worker would not see the groups of its
  listeners: publishing raises :class:`~eventlib.ConfigurationError`.

In eager mode (the ``always_eager`` setting) nothing is published: the
external handlers of this process run at once, here, as the event's
handlers do.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from .conf import get_settings
from .exceptions import ConfigurationError, DispatchError, EventlibError
from .registry import HandlerOptions
from .serialization import serialize_event

if TYPE_CHECKING:
    from celery import Celery
    from kombu.transport.virtual import Channel

    from .event import BaseEvent

__all__ = [
    "BROADCAST_OPTIONS",
    "EVERY_GROUP",
    "EXCHANGE",
    "EXTERNAL_TASK",
    "GROUPS_QUEUE",
    "QUEUE_PREFIX",
    "ExternalEvent",
    "Group",
    "NoSuchGroup",
    "broadcasts",
    "check_group",
    "check_group_name",
    "delete_group",
    "external_handler_key",
    "group_of_key",
    "group_queue",
    "groups",
    "listening_group",
    "register_group",
    "send",
    "set_listening_group",
]

#: The task a listener runs for each broadcast event.
EXTERNAL_TASK = "eventlib.external"
#: The direct exchange every group's queue is bound to.
EXCHANGE = Exchange("eventlib.broadcast", type="direct", durable=True)
#: The routing key every group's queue is bound with (RabbitMQ's one message).
EVERY_GROUP = "eventlib.broadcast.every-group"
#: A group's queue is this prefix followed by the group's name.
QUEUE_PREFIX = "eventlib.broadcast."
#: Where the groups are recorded on RabbitMQ, one message each.
GROUPS_QUEUE = "eventlib.broadcast-groups"
#: How the broadcast of an event is retried when the broker cannot take it:
#: as a handler with these options, then a dead letter.
BROADCAST_OPTIONS = HandlerOptions(retries=5, backoff=2.0)

_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_EXTERNAL_KEY = "external:"


class NoSuchGroup(EventlibError):
    """There is no group of that name on the broker."""


@dataclass(frozen=True)
class ExternalEvent:
    """What an external handler gets: a broadcast event, without its class.

    ``data`` is what the event's :meth:`~eventlib.BaseEvent.broadcast`
    returned, deserialized with the types registered in this process
    (:func:`~eventlib.register_type`).
    """

    name: str
    id: str
    created_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


class Group(NamedTuple):
    """A group of listeners as the broker knows it."""

    name: str
    #: The queue its listeners consume.
    queue: str
    #: Broadcast events waiting in it.
    backlog: int
    #: Listeners consuming it now; ``None`` where the broker cannot tell (Redis).
    listeners: int | None


# ------------------------------------------------------- the worker's side ---


def broadcasts(event_class: type[BaseEvent]) -> bool:
    """Whether events of ``event_class`` are broadcast: its ``broadcast``
    attribute when it is ``True`` or ``False``; ``True`` when the class (or
    a base below :class:`~eventlib.BaseEvent`) overrides the ``broadcast``
    method; otherwise the ``broadcast`` setting."""
    from .event import BaseEvent

    declared = event_class.broadcast  # type: ignore[attr-defined,unused-ignore]
    if isinstance(declared, bool):
        return declared
    if declared is not BaseEvent.broadcast:
        return True
    return get_settings().broadcast


def _shaper(event_class: type[BaseEvent]) -> Any:
    """The ``broadcast(self, data)`` method of ``event_class``:
    :class:`~eventlib.BaseEvent`'s where the class says ``broadcast = True``."""
    from .event import BaseEvent

    declared = event_class.broadcast  # type: ignore[attr-defined,unused-ignore]
    return BaseEvent.broadcast if isinstance(declared, bool) else declared


def send(event: BaseEvent) -> None:
    """Broadcast ``event`` (the worker runs it after the event's handlers,
    as the last of them, named ``eventlib.broadcast.send``): publish what
    its :meth:`~eventlib.BaseEvent.broadcast` returns to every group, or, in
    eager mode and while a recorder of :mod:`eventlib.testing` is installed,
    run this process's external handlers at once.  Nothing is sent when it
    returns ``None``.

    It publishes as handlers' retries are published, with eventlib's pools,
    timeouts and (on RabbitMQ) publisher confirms.  Raises
    :class:`~eventlib.DispatchError` when the broker cannot take it,
    :class:`~eventlib.ConfigurationError` for a broker that cannot
    broadcast, :class:`~eventlib.SerializationError` for data that does not
    serialize, and ``TypeError`` when ``broadcast()`` returns neither a
    mapping nor ``None``: the worker then retries the broadcast, alone, as
    it retries a handler (:data:`BROADCAST_OPTIONS`), and records a dead
    letter when it gives up.
    """
    from . import processing
    from .sending import sender

    shaped = _shaper(type(event))(event, dict(event.data))
    if shaped is None:
        return
    if not isinstance(shaped, Mapping):
        raise TypeError(
            f"{type(event).__qualname__}.broadcast() must return a mapping or None, "
            f"not {type(shaped).__name__}"
        )
    outgoing = copy.copy(event)
    outgoing.data = dict(shaped)
    payload = serialize_event(outgoing)
    app = sender.app()
    if sender.is_eager(app) or sender.recording:
        processing.process_external(event.name, payload, group=None)
        return
    with sender.producer(app) as producer:
        routing_keys = _routing_keys(producer.connection)
    for routing_key in routing_keys:
        sender.send_task(
            EXTERNAL_TASK,
            (event.name, payload),
            app=app,
            shadow=f"{event.name} broadcast",
            exchange=EXCHANGE.name,
            routing_key=routing_key,
            declare=[EXCHANGE],
        )


def _routing_keys(connection: Connection) -> list[str]:
    """The routing keys to publish a broadcast event with on
    ``connection``'s broker: :data:`EVERY_GROUP` once on RabbitMQ, each
    group's name on Redis and the embedded broker."""
    driver = connection.transport.driver_type
    if driver == "amqp":
        return [EVERY_GROUP]
    if driver in ("redis", "memory") or getattr(connection.transport, "shares_bindings", False):
        return sorted(_bound_groups(connection.default_channel))
    raise ConfigurationError(
        f"cannot broadcast through the broker {connection.as_uri()}: broadcast needs "
        f"RabbitMQ, Redis or eventlib's embedded broker (the {driver} transport keeps "
        "its exchanges' bindings in the memory of one process)"
    )


# --------------------------------------------------------------- groups ---


def check_group_name(group: str) -> str:
    """Return ``group`` when it is a valid group name (letters, digits and
    ``_.-``, 100 at most, starting with a letter or digit); raise
    :class:`~eventlib.ConfigurationError` otherwise."""
    if not isinstance(group, str) or not _GROUP_NAME.fullmatch(group):
        raise ConfigurationError(
            f"invalid group name {group!r}: use letters, digits and _.- "
            "(starting with a letter or digit, 100 characters at most)"
        )
    return group


def group_queue(group: str) -> Queue:
    """The durable queue of ``group``, bound to :data:`EXCHANGE` with the
    group's name (what a Celery worker declares when it starts consuming
    it); :func:`register_group` binds it with :data:`EVERY_GROUP` too.  The
    exchange is the queue's own, not kombu's ``bindings``: Celery gives a
    queue without one the app's default exchange, which would route the
    app's own tasks to it."""
    check_group_name(group)
    return Queue(QUEUE_PREFIX + group, exchange=EXCHANGE, routing_key=group, durable=True)


def _declare_group(channel: Any, group: str) -> Queue:
    """Declare ``group``'s queue and both its bindings on ``channel``."""
    queue = group_queue(group)(channel)
    queue.declare()
    queue.bind_to(exchange=EXCHANGE, routing_key=EVERY_GROUP)
    return queue


def register_group(group: str, app: Celery | None = None) -> Queue:
    """Create ``group`` on the broker, if it is not there yet: its queue and
    bindings, and on RabbitMQ its record in :data:`GROUPS_QUEUE`.  From then
    on, every broadcast event waits in its queue until a listener takes it.
    Returns the queue.  Raises :class:`~eventlib.ConfigurationError` for an
    invalid name or a broker that cannot broadcast."""
    queue = group_queue(group)
    with _connection(app) as connection:
        _routing_keys(connection)  # a broker that cannot broadcast says so now
        _declare_group(connection.default_channel, group)
        if connection.transport.driver_type == "amqp" and group not in _recorded_groups(connection):
            with connection.Producer() as producer:
                producer.publish(
                    group,
                    exchange="",
                    routing_key=GROUPS_QUEUE,
                    declare=[_groups_queue()],
                    delivery_mode=2,
                    serializer="json",
                )
    return queue


def groups(app: Celery | None = None) -> list[Group]:
    """The groups on the broker, by name, with their backlogs."""
    with _connection(app) as connection:
        _routing_keys(connection)
        amqp = connection.transport.driver_type == "amqp"
        names = _recorded_groups(connection) if amqp else _bound_groups(connection.default_channel)
        found = []
        for name in sorted(names):
            size = _size(connection, name)
            if size is not None:
                found.append(Group(name, QUEUE_PREFIX + name, *size))
        return found


def delete_group(group: str, app: Celery | None = None) -> int:
    """Delete ``group``: its queue, with the events waiting in it, its
    bindings and its record.  Returns how many events were waiting.  Raises
    :class:`NoSuchGroup` when there is no such group.  A listener of the
    group that still runs declares it again."""
    check_group_name(group)
    with _connection(app) as connection:
        _routing_keys(connection)
        size = _size(connection, group)
        amqp = connection.transport.driver_type == "amqp"
        recorded = amqp and _forget_group(connection, group)
        if size is None and not recorded:
            raise NoSuchGroup(f"there is no group {group!r} on {connection.as_uri()}")
        if size is not None:
            channel = connection.default_channel
            # kombu's Redis channel removes the bindings this channel declared.
            _declare_group(channel, group).delete()
            if not amqp:  # its in-memory channel keeps them in the exchange's table
                for routing_key in (group, EVERY_GROUP):
                    channel.queue_unbind(QUEUE_PREFIX + group, EXCHANGE.name, routing_key)
        return size[0] if size else 0


def check_group(group: str, app: Celery | None = None) -> None:
    """Raise :class:`NoSuchGroup` unless ``group``'s queue is on the broker
    (a message sent to a group that is not there would be routed nowhere)."""
    check_group_name(group)
    with _connection(app) as connection:
        if _size(connection, group) is None:
            raise NoSuchGroup(
                f"there is no group {group!r} on {connection.as_uri()}: create it "
                f"(eventlib groups create {group}) or start one of its listeners"
            )


def _size(connection: Connection, group: str) -> tuple[int, int | None] | None:
    """The backlog and listener count of ``group``'s queue (no count on
    Redis); ``None`` when it does not exist."""
    queue = QUEUE_PREFIX + group
    if connection.transport.driver_type != "amqp":
        # Redis has no empty lists: a group exists while it is bound.
        channel = connection.default_channel
        if group not in _bound_groups(channel):
            return None
        return channel.queue_declare(queue).message_count, None
    channel = connection.channel()
    try:
        _, backlog, listeners = channel.queue_declare(queue, passive=True)
    except connection.channel_errors:
        return None
    finally:
        try:
            channel.close()
        except connection.connection_errors + connection.channel_errors:
            pass
    return backlog, listeners


def _bound_groups(channel: Channel) -> set[str]:
    """The groups whose queues are bound to :data:`EXCHANGE` in kombu's
    bindings table (Redis; in memory, none before the exchange is declared)."""
    try:
        table = channel.get_table(EXCHANGE.name)
    except KeyError:
        return set()
    return {queue[len(QUEUE_PREFIX) :] for _, _, queue in table if queue.startswith(QUEUE_PREFIX)}


def _groups_queue() -> Queue:
    return Queue(GROUPS_QUEUE, exchange="", routing_key=GROUPS_QUEUE, durable=True)


def _recorded_groups(connection: Connection) -> set[str]:
    """The groups recorded in :data:`GROUPS_QUEUE` (RabbitMQ): each message
    is taken without being acknowledged, and every one goes back to the
    queue when the channel closes.  Two processes reading at once may each
    see part of the records: a listing may then miss a group for a moment,
    and a group may be recorded twice, which the names' set absorbs; a
    record left of a deleted group is not listed, since its queue is gone."""
    with _records(connection) as records:
        return {name for name, _ in records}


def _forget_group(connection: Connection, group: str) -> bool:
    """Remove ``group``'s records from :data:`GROUPS_QUEUE`; return whether
    there was one."""
    with _records(connection) as records:
        found = [message for name, message in records if name == group]
        for message in found:
            message.ack()
        return bool(found)


@contextmanager
def _records(connection: Connection) -> Iterator[list[tuple[str, Any]]]:
    channel = connection.channel()
    try:
        queue = _groups_queue()(channel)
        queue.declare()
        records = []
        while (message := queue.get(no_ack=False, accept=["json"])) is not None:
            name = message.payload
            records.append((name if isinstance(name, str) else repr(name), message))
        yield records
    finally:
        channel.close()  # what was not acknowledged goes back


@contextmanager
def _connection(app: Celery | None) -> Iterator[Connection]:
    from .sending import sender

    app = app or sender.app()
    timeout = get_settings().broker_timeout
    with app.connection_for_write(connect_timeout=timeout) as connection:
        try:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as error:
            raise DispatchError(
                f"cannot reach the broker {connection.as_uri()}: {error!r}"
            ) from error
        yield connection


# ------------------------------------------------------ the listener side ---

_listening: list[str] = []


def set_listening_group(group: str | None) -> None:
    """Name the group this process listens for (``eventlib listen`` does),
    or ``None`` for none."""
    _listening[:] = [] if group is None else [check_group_name(group)]


def listening_group(app: Celery | None = None) -> str | None:
    """The group this process listens for: the one :func:`set_listening_group`
    named, else the group whose queue ``app``'s worker consumes
    (``celery -A proj worker -Q eventlib.broadcast.billing``), else ``None``."""
    if _listening:
        return _listening[0]
    if app is not None:
        consumed = [q for q in app.amqp.queues.consume_from if q.startswith(QUEUE_PREFIX)]
        if len(consumed) == 1:
            return str(consumed[0][len(QUEUE_PREFIX) :])
    return None


def external_handler_key(group: str | None, handler: str) -> str:
    """How a dead letter names the external ``handler`` of ``group``:
    ``external:<group>:<handler>`` (``external::<handler>`` in eager mode)."""
    return f"{_EXTERNAL_KEY}{group or ''}:{handler}"


def group_of_key(key: str | None) -> tuple[str | None, str] | None:
    """The group and handler a dead letter's handler names, when it is an
    external handler's (:func:`external_handler_key`); ``None`` otherwise."""
    if key is None or not key.startswith(_EXTERNAL_KEY):
        return None
    group, _, handler = key[len(_EXTERNAL_KEY) :].partition(":")
    return group or None, handler
