"""``log()``: validate, serialize and hand an event to Celery.

This is the only code that runs in the caller (a web view, a script).  It
finds the event class, runs ``clean()``, serializes the data to JSON and sends
``eventlib.process(name, payload)`` to the configured queue, or, in eager mode,
runs it in place through the same serialization round trip.  When the broker
cannot take an event, it goes to the spool (:mod:`eventlib.spool`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection
from kombu.pools import ProducerPool
from kombu.utils.url import maybe_sanitize_url

from . import metrics
from .conf import Settings, get_settings, on_change
from .discovery import find_event
from .embedded import DEFAULT_PATH, SCHEME, url_for
from .exceptions import ConfigurationError, DispatchError, ValidationError
from .serialization import serialize_event
from .spool import Circuit, Flusher, Spool, SpooledEvent, SpoolStatus
from .tasks import TASK_NAME

logger = logging.getLogger("eventlib")

#: Called as ``interceptor(name, payload)`` instead of sending; the last one
#: pushed wins (see :mod:`eventlib.testing`).
Interceptor = Callable[[str, str], None]
_interceptors: list[Interceptor] = []

_own_app: Celery | None = None
_app_lock = threading.Lock()

#: One retry at once, for a pooled connection the broker closed meanwhile;
#: a broker that is down is the spool's business.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0,
    "interval_max": 0,
}

#: Producer pools by (process id, id of the app); see :func:`_producers`.
_producer_pools: dict[tuple[int, int], ProducerPool] = {}

_circuit = Circuit()
_flusher = Flusher()
_spools: dict[Path, Spool] = {}


#: ``hook(callback)`` runs ``callback`` once the current database
#: transaction commits (at once when there is none); installed by framework
#: integrations such as :mod:`eventlib.contrib.django`.
TransactionHook = Callable[[Callable[[], None]], None]
_transaction_hook: TransactionHook | None = None


def set_transaction_hook(hook: TransactionHook | None) -> None:
    """Install the function ``log(..., on_commit=True)`` defers sending with."""
    global _transaction_hook
    _transaction_hook = hook


def log(
    name: str, data: Mapping[str, Any] | None = None, *, on_commit: bool | None = None
) -> str | None:
    """Log the event ``name`` with ``data`` and return the new event's id.

    ``data`` must be a mapping (``None`` means ``{}``); anything else raises
    ``TypeError``.  The event class is looked up (raising
    :class:`~eventlib.InvalidEventName` or :class:`~eventlib.EventNotFound`),
    its ``clean()`` runs, the data is serialized to JSON (a value with no JSON
    form raises :class:`~eventlib.SerializationError`, a ``TypeError`` naming
    the key path) and the event is sent to the Celery queue.

    When the broker cannot take it within ``broker_timeout`` seconds
    (connection refused, no answer), the event is kept in the local spool
    and re-published once the broker is back; until then, later calls spool
    at once, without trying the network (see :mod:`eventlib.spool`).  The id
    is returned either way.  :class:`~eventlib.DispatchError`, naming the
    broker and the spool, is raised only when the spool cannot be written
    either.

    When ``clean()`` raises :class:`~eventlib.ValidationError`, nothing is
    sent: with ``raise_errors`` on (the default in eager mode) the error
    propagates; otherwise it is logged at ERROR level on the ``eventlib``
    logger, with the event name, the message and the data's keys, and ``log()``
    returns ``None``.

    With ``on_commit=True`` (default: the ``on_commit`` setting) the event is
    validated and serialized at once but sent only when the current database
    transaction commits, and never if it rolls back, so that a worker never
    looks for a row that is not there yet.  That needs a transaction hook
    (``eventlib.contrib.django`` installs Django's); without one it raises
    :class:`~eventlib.ConfigurationError`.
    """
    return log_event(name, data, on_commit=on_commit)


def log_event(
    name: str,
    data: Mapping[str, Any] | None,
    *,
    on_commit: bool | None = None,
    raise_errors: bool | None = None,
    source: str = "python",
    client_address: str | None = None,
) -> str | None:
    """:func:`log` for transports such as the HTTP endpoint: the same, with
    ``raise_errors`` overriding the setting, and the event's ``source`` and
    ``client_address``."""
    if data is None:
        data = {}
    elif not isinstance(data, Mapping):
        raise TypeError(
            f"eventlib.log({name!r}, data): data must be a mapping, not {type(data).__name__}"
        )
    settings = get_settings()
    event = find_event(name)(data, source=source, client_address=client_address)
    try:
        event.validate()
    except ValidationError as error:
        if settings.should_raise if raise_errors is None else raise_errors:
            error.add_note(f"raised by the clean() of the event {name}; nothing was sent")
            raise
        logger.error(
            "Event %s was not logged, its data is invalid: %s (data keys: %s)",
            name,
            error,
            ", ".join(map(str, data)) or "none",
            extra={
                "eventlib_event": name,
                "eventlib_event_id": event.id,
                "eventlib_handler": None,
            },
        )
        return None
    payload = serialize_event(event)
    if settings.on_commit if on_commit is None else on_commit:
        if _transaction_hook is None:
            raise ConfigurationError(
                f"eventlib.log({name!r}, on_commit=True) needs a transaction hook: add "
                "'eventlib.contrib.django' to INSTALLED_APPS (or call set_transaction_hook)"
            )

        def send_after_commit() -> None:
            _send(name, event.id, payload, get_settings())

        _transaction_hook(send_after_commit)
    else:
        _send(name, event.id, payload, settings)
    return event.id


def _send(name: str, event_id: str, payload: str, settings: Settings) -> None:
    """Hand the event to a test recorder, run it eagerly, publish it, or,
    when the broker cannot take it, keep it in the spool."""
    metrics.increment("logged")
    if _interceptors:
        _interceptors[-1](name, payload)
        return
    app = celery_app()
    if settings.always_eager:
        task = app.tasks[TASK_NAME]
        task.apply(args=(name, payload), task_id=event_id, throw=settings.should_raise)
        return
    if _circuit.is_open:
        _spool(app, settings, name, event_id, payload, None)
        return
    try:
        published = _publish(app, settings.queue, name, event_id, payload, unless_circuit_open=True)
    except Exception as error:
        _circuit.trip()
        logger.warning(
            "The broker %s cannot take events (%r): spooling them in %s until it can",
            broker_name(app),
            error,
            _spool_file(settings).path,
            extra={
                "eventlib_event": name,
                "eventlib_event_id": event_id,
                "eventlib_handler": None,
            },
        )
        _spool(app, settings, name, event_id, payload, error)
        return
    if not published:
        _spool(app, settings, name, event_id, payload, None)


def _publish(
    app: Celery,
    queue: str,
    name: str,
    event_id: str,
    payload: str,
    *,
    unless_circuit_open: bool = False,
) -> bool:
    """Publish the event; return whether it was published.

    A connection is waited for at most ``broker_timeout`` seconds (kombu's
    ``LimitExceeded`` when every connection of the pool stays busy).  With
    ``unless_circuit_open``, an event whose connection came only after
    another thread found the broker down is not published (``False``): when
    many threads log at once, only the first ones try the network.
    """
    timeout = get_settings().broker_timeout
    with _producers(app).acquire(block=True, timeout=timeout) as producer:
        if unless_circuit_open and _circuit.is_open:
            return False
        app.tasks[TASK_NAME].apply_async(
            args=(name, payload),
            task_id=event_id,
            queue=queue,
            producer=producer,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    return True


def _producers(app: Celery) -> ProducerPool:
    """The producers events are published with: a pool of eventlib's own
    for ``app`` and this process, with eventlib's timeouts and publisher
    confirms (:func:`publish_transport_options`), so that ``log()`` cannot
    hang on a user's app's settings either; the app's other tasks are left
    to its own pool.

    A forked child gets pools of its own: kombu shares one producer pool per
    broker URL across apps, which a forked child would inherit along with
    its parent's sockets.
    """
    key = (os.getpid(), id(app))
    pool = _producer_pools.get(key)
    if pool is None:
        with _app_lock:
            pool = _producer_pools.get(key)
            if pool is None:
                settings = get_settings()
                connection = app.connection_for_write(
                    connect_timeout=settings.broker_timeout,
                    transport_options=publish_transport_options(app, settings),
                )
                limit = app.conf.broker_pool_limit
                pool = _producer_pools[key] = ProducerPool(connection.Pool(limit), limit=limit)
    return pool


def publish_transport_options(app: Celery, settings: Settings) -> dict[str, Any]:
    """The transport options eventlib publishes with on ``app`` (its own or
    a user's): the app's own, then eventlib's timeouts and confirms for its
    broker, then eventlib's ``broker_transport_options`` setting."""
    url = app.conf.broker_write_url or app.conf.broker_url or "amqp://"
    return {
        **app.conf.broker_transport_options,
        **transport_options(url, settings.broker_timeout),
        **settings.broker_transport_options,
    }


def _spool(
    app: Celery,
    settings: Settings,
    name: str,
    event_id: str,
    payload: str,
    cause: Exception | None,
) -> None:
    spool = _spool_file(settings)
    try:
        spool.put(name, event_id, payload)
    except sqlite3.Error as error:
        raise DispatchError(
            f"could not send the event {name} (id {event_id}) to the broker "
            f"{broker_name(app)}, nor keep it in the spool {spool.path}: {error}"
        ) from cause or error
    metrics.increment("spooled")
    _flusher.ensure_running(
        spool,
        partial(_publish_spooled, app, settings.queue),
        _circuit,
        settings.spool_probe_interval,
    )


def _publish_spooled(app: Celery, queue: str, event: SpooledEvent) -> None:
    _publish(app, queue, event.name, event.event_id, event.payload)
    metrics.increment("published_from_spool")


def _spool_file(settings: Settings) -> Spool:
    """The spool of ``spool_path``; one object per path and process."""
    path = Path(settings.spool_path).resolve()
    spool = _spools.get(path)
    if spool is None:
        spool = _spools.setdefault(path, Spool(path, timeout=settings.broker_timeout))
    return spool


def flush_spool() -> int:
    """Publish the spooled events now, in order, with the configured broker
    and spool; return how many were published.  Raises
    :class:`~eventlib.DispatchError` naming the broker when it still cannot
    take them (those events stay spooled)."""
    settings = get_settings()
    app = celery_app()
    try:
        return _spool_file(settings).flush(partial(_publish_spooled, app, settings.queue))
    except Exception as error:
        raise DispatchError(
            f"the broker {broker_name(app)} cannot take the spooled events: {error!r}"
        ) from error


def spool_status() -> SpoolStatus:
    """How many events the configured spool holds, and the oldest's age."""
    return _spool_file(get_settings()).status()


def broker_name(app: Celery) -> str:
    """The broker URL of ``app``, with its password masked."""
    return maybe_sanitize_url(app.conf.broker_url or "amqp://localhost//")  # type: ignore[no-any-return]


def check_broker(app: Celery | None = None) -> None:
    """Connect to the broker once, within ``broker_timeout``.

    Raises :class:`~eventlib.ConfigurationError` for a URL whose scheme no
    kombu transport knows, and :class:`~eventlib.DispatchError` naming the
    broker when it cannot be reached.
    """
    app = app or celery_app()
    timeout = get_settings().broker_timeout
    try:
        connection = app.connection_for_write()
    except KeyError as error:
        raise ConfigurationError(
            f"unknown broker URL scheme in {broker_name(app)}: {error.args[0]}"
        ) from None
    with connection:
        try:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as error:
            raise DispatchError(f"cannot reach the broker {broker_name(app)}: {error}") from error


def celery_app() -> Celery:
    """The Celery app events are sent with: the ``celery_app`` setting when
    one is given, otherwise one eventlib creates from its settings (JSON only,
    ``broker_url``, results ignored)."""
    settings = get_settings()
    if settings.celery_app is not None:
        return settings.celery_app  # type: ignore[no-any-return]
    global _own_app
    if _own_app is None:
        with _app_lock:
            if _own_app is None:
                _own_app = _create_app(settings)
    return _own_app


def resolved_broker_url(settings: Settings) -> str:
    """The ``broker_url`` setting, or the embedded broker in the file
    ``eventlib-broker.sqlite`` of the working directory when it is unset."""
    return settings.broker_url or url_for(DEFAULT_PATH)


def _create_app(settings: Settings) -> Celery:
    """eventlib's own Celery app; docs/deployment.md explains each setting.

    Raises :class:`~eventlib.ConfigurationError` when no kombu transport
    knows the broker URL's scheme.
    """
    timeout = settings.broker_timeout
    broker_url = resolved_broker_url(settings)
    try:
        Connection(broker_url)  # resolves the transport, without connecting
    except KeyError as error:
        raise ConfigurationError(
            f"unknown broker URL scheme in {maybe_sanitize_url(broker_url)}: {error.args[0]}"
        ) from None
    app = Celery("eventlib", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=settings.queue,
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            **transport_options(broker_url, timeout),
            **settings.broker_transport_options,
        },
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
    )
    return app


def transport_options(broker_url: str, timeout: float) -> dict[str, Any]:
    """Timeouts for the broker's transport, so that a broker that accepts
    connections but never answers (or a locked SQLite file) cannot block
    ``log()``."""
    scheme = broker_url.partition(":")[0]
    if scheme in ("redis", "rediss", "sentinel"):
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if scheme in ("amqp", "pyamqp", "amqps"):
        # confirm_publish: a publish returns once RabbitMQ has the message.
        return {"read_timeout": timeout, "write_timeout": timeout, "confirm_publish": True}
    if scheme == SCHEME:
        return {"connect_args": {"timeout": timeout}}
    return {}


def _drop_own_app(_: Settings) -> None:
    """Settings changed: the next send builds a new app from them, and
    tries the (maybe new) broker again."""
    global _own_app
    with _app_lock:
        old, _own_app = _own_app, None
        # Only this process's pools: a parent's, inherited by a fork, stay
        # referenced, since collecting them could shut its sockets.
        mine = [key for key in _producer_pools if key[0] == os.getpid()]
        pools = [_producer_pools.pop(key) for key in mine]
    for pool in pools:
        pool.connections.force_close_all()
        pool.force_close_all()
    _flusher.stop()
    _circuit.close()
    _spools.clear()
    if old is not None:
        old.close()


on_change(_drop_own_app)


def _forget_connections_in_child() -> None:
    """A forked child builds its own producer pools (they are by process),
    and must not wait for a lock another thread of its parent held at the
    moment of the fork."""
    global _app_lock
    _app_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_connections_in_child)
