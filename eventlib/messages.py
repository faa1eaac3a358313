"""Celery task messages, protocol 2, for eventlib's event tasks, built and
published here rather than by Celery's ``send_task()``.

:mod:`eventlib.sending` sends events as the tasks ``eventlib.process`` and
``eventlib.process_batch``, mostly from its publisher thread.
``send_task()`` does what any task of any app may need (looking the task
up, routing it, result backends, a result object, parent tasks' trails) on
every call: on the development machine about 170 µs of Python of the
390 µs a publish to Redis took, during which a ``log()`` in another thread
may wait for the interpreter lock.  Here what does not change from one
message to the next, the :class:`Route`, is worked out once per app, task
and queue, as ``send_task()`` works it out; each message then costs its
headers and kombu's ``Producer.publish()``.

The message is the one ``send_task()`` publishes, header for header (the
protocol 2 of Celery's "Message Protocol" documentation): the body
``[args, {}, {"callbacks": null, "errbacks": null, "chain": null, "chord":
null}]``, the task's name, id, ``shadow`` name, ``argsrepr`` and ``origin``
in the headers, the id as ``correlation_id``; the signals
``before_task_publish`` and ``after_task_publish`` are sent, and a message
sent from within a worker's task names it as its parent, as Celery does.
Two things differ: no result backend is told of the message (eventlib's
tasks ignore their results), and the ``argsrepr`` option is not copied into
the message properties as well as its headers.  tests/test_messages.py
compares the two, so that a Celery release that changes the protocol is
noticed.

An app that asks for more than this builds (task messages of protocol 1,
``task_send_sent_event``, an ``expires`` option on eventlib's tasks) gets no
route (:func:`route` returns ``None``): its messages go through
``send_task()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery, signals
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu.common import Broadcast
from kombu.entity import Queue
from kombu.messaging import Producer

__all__ = ["Route", "publish", "route"]

#: The body's third part: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: Options of ``send_task()`` that are not message properties.
_NOT_PROPERTIES = frozenset(
    {
        "queue",
        "exchange",
        "routing_key",
        "exchange_type",
        "delivery_mode",
        "compression",
        "serializer",
        "declare",
        "time_limit",
        "soft_time_limit",
        "immediate",
        "mandatory",
    }
)


@dataclass(frozen=True)
class Route:
    """What ``send_task()`` works out for every message of one task of an
    app sent to one queue: where it goes and how it is published."""

    task: str
    exchange: str
    routing_key: str
    delivery_mode: int | str | None
    declare: tuple[Queue, ...]
    compression: str | None
    #: The task's time limits, for the ``timelimit`` header.
    time_limits: tuple[float | None, float | None]
    #: Further message properties from the task's options or the app's
    #: routes (``priority``).
    properties: dict[str, Any]
    #: The app's ``task_publish_retry_policy``, which a publish's own
    #: policy extends.
    retry_policy: dict[str, Any]
    repr_maxlevels: int
    argsrepr_maxsize: int


def route(app: Celery, task: str, queue: str) -> Route | None:
    """The :class:`Route` of ``task`` on ``app`` to ``queue``, as
    ``send_task(task, queue=queue)`` routes it: the task's own options, the
    app's ``task_routes`` (resolved once, not for each message's
    arguments), the queue's exchange and delivery mode.  ``None`` when the
    app needs what this module does not build (see the module
    documentation)."""
    conf = app.conf
    if conf.task_protocol != 2 or conf.task_send_sent_event:
        return None
    task_type = app._tasks.get(task)
    options: dict[str, Any] = {}
    if task_type is not None:
        options = {k: v for k, v in task_type._get_exec_options().items() if v is not None}
    if options.pop("expires", None) is not None:
        return None
    options["queue"] = queue
    routed: dict[str, Any] = app.amqp.router.route(options, task)
    destination = routed["queue"]
    if isinstance(destination, str):
        destination = app.amqp.queues[destination]
    exchange, routing_key = routed.get("exchange"), routed.get("routing_key")
    exchange_type = routed.get("exchange_type") or getattr(destination.exchange, "type", "direct")
    if (not exchange or not routing_key) and exchange_type == "direct":
        exchange, routing_key = "", destination.name
    elif exchange is None:
        exchange = destination.exchange.name or app.amqp.default_exchange
        routing_key = routing_key or destination.routing_key or conf.task_default_routing_key
    delivery_mode = routed.get("delivery_mode") or (
        getattr(destination.exchange, "delivery_mode", None) or conf.task_default_delivery_mode
    )
    return Route(
        task=task,
        exchange=getattr(exchange, "name", exchange),
        routing_key=str(routing_key),
        delivery_mode=delivery_mode,
        declare=() if isinstance(destination, Broadcast) else (destination,),
        compression=routed.get("compression") or conf.task_compression,
        time_limits=(routed.get("time_limit"), routed.get("soft_time_limit")),
        properties={k: v for k, v in routed.items() if k not in _NOT_PROPERTIES},
        retry_policy=dict(conf.task_publish_retry_policy or {}),
        repr_maxlevels=conf.task_repr_maxlevels,
        argsrepr_maxsize=app.amqp.argsrepr_maxsize,
    )


def publish(
    producer: Producer,
    app: Celery,
    route: Route,
    args: tuple[Any, ...],
    *,
    task_id: str,
    shadow: str,
    argsrepr: str | None,
    retry_policy: dict[str, Any],
) -> None:
    """Publish one message of ``route.task`` with ``producer``, retrying as
    ``retry_policy`` says, as ``app.send_task(route.task, args,
    task_id=task_id, shadow=shadow, argsrepr=argsrepr, retry=True,
    retry_policy=retry_policy)`` would; ``argsrepr`` ``None`` is Celery's
    ``saferepr()`` of ``args``.  Raises what kombu raises when the broker
    does not take it, a connection error as kombu's ``OperationalError``."""
    if argsrepr is None:
        argsrepr = saferepr(args, route.argsrepr_maxsize, maxlevels=route.repr_maxlevels)
    root_id, parent_id = task_id, None
    parent = app.current_worker_task
    if parent:
        root_id = parent.request.root_id or parent.request.id
        parent_id = parent.request.id
    headers = {
        "lang": "py",
        "task": route.task,
        "id": task_id,
        "shadow": shadow,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": list(route.time_limits),
        "root_id": root_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "origin": anon_nodename(),
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {"correlation_id": task_id, "reply_to": app.thread_oid, **route.properties}
    body: tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]] = (args, {}, dict(_EMBED))
    declare = list(route.declare)
    policy = {**route.retry_policy, **retry_policy}
    signals.before_task_publish.send(
        sender=route.task,
        body=body,
        exchange=route.exchange,
        routing_key=route.routing_key,
        declare=declare,
        headers=headers,
        properties=properties,
        retry_policy=policy,
    )
    with producer.connection._reraise_as_library_errors():
        producer.publish(
            body,
            exchange=route.exchange,
            routing_key=route.routing_key,
            serializer="json",
            compression=route.compression,
            retry=True,
            retry_policy=policy,
            delivery_mode=route.delivery_mode,
            declare=declare,
            headers=headers,
            timeout=None,
            confirm_timeout=None,
            **properties,
        )
    signals.after_task_publish.send(
        sender=route.task,
        body=body,
        headers=headers,
        exchange=route.exchange,
        routing_key=route.routing_key,
    )
