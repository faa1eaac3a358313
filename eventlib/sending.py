"""The sending side of a process: how the events ``log()`` accepted reach a broker.

One object, :data:`sender`, owns everything that carries events out of this
process: the Celery app they are published with, eventlib's producer pools,
the circuit (the broker is known to be down), the spool, the in-memory buffer
and the publisher thread.  :meth:`Sender.send` is the one place that decides
how an event goes:

- to the recorder of :mod:`eventlib.testing`, when one is installed;
- in eager mode (``always_eager``, or a ``celery_app`` whose
  ``task_always_eager`` is on), through the task, run at once, here;
- otherwise as the ``dispatch`` setting says:

  - ``background`` (the default): into a bounded in-memory buffer, and
    ``log()`` returns; the publisher thread publishes it;
  - ``spool``: into the spool file (:mod:`eventlib.spool`), and ``log()``
    returns; the publisher thread publishes it from there;
  - ``direct``: published in the caller.

The publisher thread, one per process, is started by the first event that
needs it (again in a forked child).  It publishes whatever waits, oldest
first, in batches: up to ``batch_size`` events and ``batch_bytes`` bytes of
payload go in one message of the task ``eventlib.process_batch``; a lone
event goes alone, at once, as the task ``eventlib.process``, so a batch never
waits to fill up.  When the broker cannot take events, they go to the spool,
the circuit opens, and the publisher probes the broker every
``spool_probe_interval`` seconds; once it answers, the spooled events are
published first, then the circuit closes.

What the buffer holds is published, or spooled, on :func:`flush`, at
interpreter exit, when a ``multiprocessing`` child ends and on ``SIGTERM``;
what it holds when the process is killed (``kill -9``) is lost.
"""

from __future__ import annotations

import atexit

# Imported before anything can be published: it registers an exit hook when
# first imported, which Python refuses once the interpreter exits, and a
# transport imported by a first publish at exit imports it (redis-py
# imports asyncio, which imports it).
import concurrent.futures.thread  # noqa: F401
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from celery import Celery
from celery.utils import uuid
from kombu.pools import ProducerPool
from kombu.utils.url import maybe_sanitize_url

from . import _state, brokers, messages, metrics
from .brokers import (
    PUBLISH_RETRY_POLICY,
    broker_name,
    create_app,
    publish_transport_options,
    resolved_broker_url,
    warn_of_a_project_broker,
)
from .conf import Settings, get_settings
from .exceptions import DispatchError, SpoolError
from .spool import Circuit, Destination, Spool, SpooledEvent, SpoolStatus

__all__ = [
    "BATCH_TASK",
    "PROCESS_TASK",
    "RETRY_TASK",
    "Outgoing",
    "Recorder",
    "Sender",
    "celery_app",
    "flush",
    "flush_spool",
    "sender",
    "spool_status",
]

logger = logging.getLogger("eventlib")

PROCESS_TASK = "eventlib.process"
BATCH_TASK = "eventlib.process_batch"
RETRY_TASK = "eventlib.retry_handler"
_EVENT_TASKS = (PROCESS_TASK, BATCH_TASK)


#: Called as ``recorder(name, payload)`` instead of sending (see
#: :mod:`eventlib.testing`).
Recorder = Callable[[str, str], None]

#: An event on its way: ``(name, event_id, payload)``.
Outgoing = tuple[str, str, str]


class _FlushMark:
    """Put in the buffer by :meth:`Sender.flush`: set by the publisher once
    every event before it was published or spooled."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        #: Whether an event before it went to the spool instead of the broker.
        self.unpublished = False


class _Stopped(Exception):
    """The publisher is asked to stop: the spool keeps what it holds."""


class Sender:
    """The sending side of this process (see the module documentation).

    Thread-safe; a forked child starts with a fresh one (no thread, an empty
    buffer, its own pools and spool connections, a closed circuit), and a
    change of settings (:func:`eventlib.configure`) publishes what the buffer
    holds and drops the app, the pools and the thread, which are built again
    from the new settings when next needed.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._own_app: Celery | None = None
        self._pools: dict[int, ProducerPool] = {}
        self._routes: dict[tuple[int, str, str], messages.Route | None] = {}
        self._spools: dict[tuple[str, str, str | None, int], Spool] = {}
        self.circuit = Circuit()
        self._next_probe = 0.0
        self._buffer: deque[Outgoing | _FlushMark] = deque()
        self._wake = threading.Event()
        #: Whether the publisher waits for work (then it is woken), and
        #: whether work came since its round began.
        self._idle = False
        self._work = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: Whether the spool may hold events of this process's destination.
        self._spool_waiting = True
        #: Whether events this process spooled may still wait there.
        self._spooled_here = False
        #: Whether the broker took the last publish: until it has, the
        #: publisher checks it before it claims spooled events, so that a
        #: process killed during an outage leaves no claim behind.
        self._broker_answered = False
        #: The last error of the spool file reported, while it lasts.
        self._spool_error: str | None = None
        self._recorders: list[Recorder] = []
        #: Held during the publisher's first round; a fork waits.
        self._warming_up = threading.Lock()
        self._fork_waited = False
        #: What a forked child must not touch, kept referenced rather than
        #: closed on its parent's behalf.
        self._inherited: list[object] = []

    # ------------------------------------------------------------ sending ---

    def send(self, name: str, event_id: str, payload: str) -> None:
        """Send an event ``log()`` accepted, as the module documentation
        says.  Raises :class:`~eventlib.DispatchError` when the event can be
        neither published nor kept in the spool."""
        metrics.increment("logged")
        if self._recorders:
            self._recorders[-1](name, payload)
            return
        settings = get_settings()
        if settings.always_eager or (
            settings.celery_app is not None and settings.celery_app.conf.task_always_eager
        ):
            self.app().tasks[PROCESS_TASK].apply(
                args=(name, payload), task_id=event_id, throw=settings.should_raise
            )
            return
        mode = settings.dispatch
        if mode == "background":
            if len(self._buffer) < settings.buffer_size:
                self._buffer.append((name, event_id, payload))
                self._start_publisher()
                self._work_for_publisher()
            else:
                self._spool_in_caller(settings, [(name, event_id, payload)], None)
        elif mode == "spool":
            self._spool_in_caller(settings, [(name, event_id, payload)], None)
        else:
            self._send_direct(settings, (name, event_id, payload))

    def _send_direct(self, settings: Settings, event: Outgoing) -> None:
        if self.circuit.is_open:
            self._spool_in_caller(settings, [event], None)
            return
        app = self.app()
        try:
            published = self._publish(app, [event], unless_circuit_open=True)
        except Exception as error:
            self._trip(app, settings, error, event)
            self._spool_in_caller(settings, [event], error)
            return
        if not published:
            self._spool_in_caller(settings, [event], None)

    def _spool_in_caller(
        self, settings: Settings, events: list[Outgoing], cause: Exception | None
    ) -> None:
        spool = self.spool(settings)
        try:
            if len(events) == 1:
                spool.put(*events[0])
            else:
                spool.put_many(events)
        except SpoolError as error:
            name, event_id, _ = events[0]
            # The publisher still probes the broker, so that log() recovers
            # once it is back even though nothing could be spooled.
            self._start_publisher()
            raise DispatchError(
                f"could not send the event {name} (id {event_id}) to the broker "
                f"{spool.destination.broker}, nor keep it in the spool {spool.path}: "
                f"{error.__cause__}"
            ) from cause or error
        metrics.increment("spooled", len(events))
        self._spool_waiting = self._spooled_here = True
        self._start_publisher()
        self._work_for_publisher()

    def _work_for_publisher(self) -> None:
        """Tell the publisher there is work; wake it only if it waits (a
        thread at work looks for more before it waits again)."""
        self._work = True
        if self._idle:
            self._wake.set()

    def send_task(
        self,
        task_name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        app: Celery | None = None,
        shadow: str | None = None,
        **routing: Any,
    ) -> None:
        """Run eventlib's task ``task_name`` at once, here, in eager mode (the
        ``always_eager`` setting, or an ``app`` whose ``task_always_eager``
        is on); otherwise publish it now to eventlib's queue (or as
        ``routing``'s ``exchange`` and ``routing_key`` say), with eventlib's
        pools and timeouts.  What retries of handlers and dead letters go
        through; ``shadow`` is what Flower and the worker's log call it.
        Raises :class:`~eventlib.DispatchError` naming the broker when it
        cannot take the task."""
        app = app or self.app()
        if self.is_eager(app):
            app.tasks[task_name].apply(args=args, kwargs=kwargs)
            return
        try:
            self._send_message(
                app, task_name, args, kwargs=kwargs, countdown=countdown, shadow=shadow, **routing
            )
        except Exception as error:
            raise DispatchError(
                f"could not send the task {task_name} to the broker {broker_name(app)}: {error!r}"
            ) from error

    def is_eager(self, app: Celery | None = None) -> bool:
        """Whether tasks run in place: ``always_eager``, or an ``app`` whose
        ``task_always_eager`` is on."""
        return get_settings().always_eager or bool(app and app.conf.task_always_eager)

    def add_recorder(self, recorder: Recorder) -> None:
        """Hand every event to ``recorder`` instead of sending it, until it
        is removed; the last one added records (:mod:`eventlib.testing`)."""
        self._recorders.append(recorder)

    def remove_recorder(self, recorder: Recorder) -> None:
        self._recorders.remove(recorder)

    @property
    def recording(self) -> bool:
        """Whether a recorder takes the events instead of the broker."""
        return bool(self._recorders)

    # ---------------------------------------------------------- publishing ---

    def _publish(
        self, app: Celery, events: Sequence[Outgoing], *, unless_circuit_open: bool = False
    ) -> bool:
        """Publish ``events`` in one message: a lone event as the task
        ``eventlib.process`` (its id is the task's), several as
        ``eventlib.process_batch``.  Return whether they were published.

        The message's ``shadow`` name, the task name Celery's logs and Flower
        show, says what it carries: the event's name (``shop.Purchase``), or
        for a batch the names with their counts, three at most
        (``eventlib batch: shop.Purchase x60, shop.Refund x40``).

        A connection is waited for at most ``broker_timeout`` seconds
        (kombu's ``LimitExceeded`` when every connection of the pool stays
        busy).  With ``unless_circuit_open``, events whose connection came
        only after another thread found the broker down are not published
        (``False``): when many threads log at once in the ``direct`` mode,
        only the first ones try the network.
        """
        args: tuple[Any, ...]
        if len(events) == 1:
            name, event_id, payload = events[0]
            task, args, task_id = PROCESS_TASK, (name, payload), event_id
            shown = None  # Celery's repr of the arguments
            shadow = name  # what Flower and the worker's log call the task
        else:
            task = BATCH_TASK
            args = ([[name, payload] for name, _, payload in events],)
            task_id = None
            counted = _counted(events)
            # Not Celery's repr of a hundred payloads, which costs more than
            # the rest of the publish and says less.
            shown = f"[{len(events)} events: {', '.join(counted)}]"
            shadow = f"eventlib batch: {', '.join(counted[:3])}"
            if len(counted) > 3:
                shadow += f" (+{len(counted) - 3} more names)"
        sent = self._send_message(
            app,
            task,
            args,
            task_id=task_id,
            argsrepr=shown,
            shadow=shadow,
            unless=(lambda: self.circuit.is_open) if unless_circuit_open else None,
        )
        if sent:
            metrics.increment("published", len(events))
        return sent

    def _send_message(
        self,
        app: Celery,
        task: str,
        args: Sequence[Any],
        *,
        unless: Callable[[], bool] | None = None,
        **options: Any,
    ) -> bool:
        """Publish one message of eventlib's task ``task`` to eventlib's
        queue, with eventlib's pools, timeouts and retry policy; return
        whether it was published: not when ``unless()`` is true once a
        connection was had.

        The event tasks' messages are built by :mod:`eventlib.messages`,
        when the app lets it; the others by Celery's ``send_task()``."""
        settings = get_settings()
        route = self._route(app, task, settings.queue) if task in _EVENT_TASKS else None
        with self._producers(app).acquire(block=True, timeout=settings.broker_timeout) as producer:
            if unless is not None and unless():
                return False
            if route is not None:
                messages.publish(
                    producer,
                    app,
                    route,
                    tuple(args),
                    task_id=options.get("task_id") or uuid(),
                    shadow=options["shadow"],
                    argsrepr=options.get("argsrepr"),
                    retry_policy=_retry_policy(settings.broker_timeout),
                )
            else:
                app.send_task(
                    task,
                    args=args,
                    queue=settings.queue,
                    producer=producer,
                    serializer="json",
                    retry=True,
                    retry_policy=_retry_policy(settings.broker_timeout),
                    add_to_parent=False,
                    **options,
                )
        self._broker_answered = True
        return True

    def _publish_in_batches(self, app: Celery, events: Sequence[Outgoing]) -> None:
        for batch in _batches(events, get_settings()):
            self._publish(app, batch)

    def _publish_spooled(self, app: Celery, events: list[SpooledEvent]) -> None:
        self._publish_in_batches(app, [(e.name, e.event_id, e.payload) for e in events])
        metrics.increment("published_from_spool", len(events))

    def _trip(
        self, app: Celery, settings: Settings, error: Exception, event: Outgoing | None
    ) -> None:
        if not self.circuit.is_open:
            logger.warning(
                "The broker %s cannot take events (%r): spooling them in %s until it can",
                broker_name(app),
                error,
                self.spool(settings).path,
                extra={
                    "eventlib_event": event[0] if event else None,
                    "eventlib_event_id": event[1] if event else None,
                    "eventlib_handler": None,
                },
            )
        self.circuit.trip()
        self._broker_answered = False
        self._next_probe = time.monotonic() + settings.spool_probe_interval

    # ------------------------------------------------------ the publisher ---

    def _start_publisher(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                return
            self._stopping = False
            # Here, in the thread that logs, whose current app is the project's.
            warn_of_a_project_broker(get_settings())
            thread = threading.Thread(target=self._run, name="eventlib-publisher", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutdown: no new threads
                return
            self._thread = thread
            _install_exit_hooks(self)

    def _run(self) -> None:
        # The first round imports what publishing needs (the broker's
        # transport, Celery's messaging, on the first publish): a fork waits
        # for it, since a process forked in the middle of an import keeps the
        # module half imported and could never publish (see _before_fork()).
        with self._warming_up:
            self._round(get_settings())
        while not self._stopping:
            waiting = self.circuit.is_open or self._spool_waiting
            settings = get_settings()
            # _work_for_publisher() sets _work, then reads _idle: either
            # this sees its work, or it sees this waiting and wakes it.
            self._idle = True
            if not self._work:
                self._wake.wait(settings.spool_probe_interval if waiting else None)
            self._idle = self._work = False
            self._wake.clear()
            self._round(settings)

    def _round(self, settings: Settings) -> None:
        """One round of the publisher; it reports its own failure and goes on."""
        try:
            self._publish_round(settings)
        except Exception as error:
            if threading.main_thread().is_alive():
                logger.exception("eventlib's publisher failed; it carries on")
            else:  # the interpreter is exiting: the exit flush spools
                logger.info("eventlib's publisher stopped by the exit: %r", error)
            self._release_flush_marks()
            time.sleep(min(1.0, settings.spool_probe_interval))

    def _publish_round(self, settings: Settings) -> None:
        """Publish what waits: the spooled events first, then the buffer;
        while the broker cannot take events, move the buffer to the spool."""
        app = self.app()
        if self.circuit.is_open and not self._probe(app, settings):
            self._buffer_to_spool(settings)
            return
        if self._spool_waiting and not self._flush_spool(app, settings):
            self._buffer_to_spool(settings)
            return
        while self._buffer:
            taken, events = self._peek_batch(settings)
            try:
                if events:
                    self._publish(app, events)
            except Exception as error:
                self._trip(app, settings, error, events[0])
                self._buffer_to_spool(settings)
                return
            for _ in range(taken):
                item = self._buffer.popleft()
                if isinstance(item, _FlushMark):
                    item.reached.set()

    def _peek_batch(self, settings: Settings) -> tuple[int, list[Outgoing]]:
        """The next batch at the head of the buffer, left there until it is
        published (so that an exit flush sees it): how many items it spans,
        flush marks included, and its events."""
        events: list[Outgoing] = []
        size = taken = 0
        buffer = self._buffer
        while taken < len(buffer) and len(events) < settings.batch_size:
            item = buffer[taken]
            if not isinstance(item, _FlushMark):
                if events and size + len(item[2]) > settings.batch_bytes:
                    break
                events.append(item)
                size += len(item[2])
            taken += 1
        return taken, events

    def _probe(self, app: Celery, settings: Settings) -> bool:
        """Whether the broker answers again, once per ``spool_probe_interval``;
        when it does, publish what was spooled and close the circuit."""
        if time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + settings.spool_probe_interval
        try:
            brokers.check_broker(app)
        except Exception as error:
            logger.info("The broker is still unreachable (%s); events stay spooled", error)
            return False
        if not self._flush_spool(app, settings):
            return False
        self.circuit.close()
        return True

    def _flush_spool(self, app: Celery, settings: Settings) -> bool:
        """Publish the spool's events of this destination; return whether
        the broker took them all (some may remain, held by another process's
        publisher, which publishes them)."""
        spool = self.spool(settings)

        def publish(events: list[SpooledEvent]) -> None:
            if self._stopping:
                raise _Stopped
            self._publish_spooled(app, events)

        # Cleared before the flush, so that an event spooled meanwhile, by
        # a caller that sets them again, is not forgotten.
        spooled_here = self._spooled_here
        self._spool_waiting = self._spooled_here = False

        def still_waiting() -> None:
            self._spool_waiting = True
            self._spooled_here = self._spooled_here or spooled_here

        try:
            if not self._broker_answered and spool.status().count:
                brokers.check_broker(app)
            flushed = spool.flush(publish)
            status = spool.status()
        except _Stopped:
            still_waiting()
            return True
        except SpoolError as error:
            # Once, not on every round, while it stays the same.
            if str(error) != self._spool_error:
                self._spool_error = str(error)
                logger.error("%s; the events in it wait until it can be read", error)
            still_waiting()
            return True
        except Exception as error:
            still_waiting()
            self._trip(app, settings, error, None)
            return False
        if flushed:
            # In the spool mode, every event passes through the spool.
            logger.log(
                logging.DEBUG if settings.dispatch == "spool" else logging.WARNING,
                "Published %d spooled events",
                flushed,
                extra={
                    "eventlib_event": None,
                    "eventlib_event_id": None,
                    "eventlib_handler": None,
                    "eventlib_spool": str(spool.path),
                    "eventlib_published": flushed,
                },
            )
        self._spool_error = None
        if status.count:
            still_waiting()
        return True

    def _release_flush_marks(self) -> None:
        """Let every :meth:`flush` waiting return ``False`` at once."""
        for item in list(self._buffer):
            if isinstance(item, _FlushMark):
                item.unpublished = True
                item.reached.set()

    def _buffer_to_spool(self, settings: Settings) -> None:
        """Move the buffer's events to the spool; they stay in the buffer
        when the spool cannot be written."""
        items = list(self._buffer)
        events = [item for item in items if not isinstance(item, _FlushMark)]
        try:
            self.spool(settings).put_many(events)
        except SpoolError as error:
            logger.error("%s; %d events wait in memory", error, len(events))
            return
        for _ in items:
            self._buffer.popleft()
        if events:
            metrics.increment("spooled", len(events))
            self._spool_waiting = self._spooled_here = True
        for item in items:
            if isinstance(item, _FlushMark):
                item.unpublished = True
                item.reached.set()

    # ----------------------------------------------------------- flushing ---

    def flush(self, timeout: float | None = None) -> bool:
        """Publish, now, the events this process logged so far; return
        ``True`` once the broker has them all.

        Waits for the buffer's events and then the spool's (of this
        process's destination) to be published, at most ``timeout`` seconds
        (``None``: no limit).  A broker found down before is asked again at
        once, not at the next ``spool_probe_interval``.  Returns ``False``
        when the timeout passed first, or when the broker cannot take them:
        they are then in the spool, and the publisher keeps trying.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if get_settings().always_eager or self._recorders:
            return True
        if self._thread is None and not self._buffer and not self._spooled_here:
            return True  # nothing logged here yet
        self._next_probe = 0.0
        mark = _FlushMark()
        self._buffer.append(mark)
        self._start_publisher()
        self._wake.set()
        if not mark.reached.wait(_remaining(deadline)):
            return False
        if mark.unpublished or self.circuit.is_open:
            return False
        while self._spooled_here:
            if self.circuit.is_open or _remaining(deadline) == 0:
                return False
            self._wake.set()
            time.sleep(0.01)
        return True

    def _flush_at_exit(self) -> None:
        """Publish or spool what the buffer holds, within about three
        ``broker_timeout``s; what the publisher cannot take by then is
        spooled here."""
        try:
            if self._buffer and not self.flush(3 * get_settings().broker_timeout):
                self._buffer_to_spool(get_settings())
        except Exception:
            logger.exception("The events in memory could not be published or spooled")
        finally:
            # Not killed in the middle of a publish by the interpreter's end,
            # so that it leaves no spooled events claimed.
            self._stop_thread(get_settings().broker_timeout)
        lost = [item for item in self._buffer if not isinstance(item, _FlushMark)]
        for name, event_id, payload in lost:
            logger.error(
                "Event %s (id %s) is lost: neither the broker nor the spool took it before "
                "the process ended; its payload: %s",
                name,
                event_id,
                payload,
                extra={"eventlib_event": name, "eventlib_event_id": event_id},
            )

    # --------------------------------------------------- app, pools, spool ---

    def app(self) -> Celery:
        """The Celery app events are sent with: the ``celery_app`` setting
        when one is given, otherwise one eventlib creates from its settings
        (JSON only, ``broker_url``, results ignored)."""
        settings = get_settings()
        if settings.celery_app is not None:
            return settings.celery_app
        app = self._own_app
        if app is None:
            with self._lock:
                app = self._own_app
                if app is None:
                    warn_of_a_project_broker(settings)
                    app = self._own_app = create_app(settings)
        return app

    def producer(self, app: Celery) -> Any:
        """A producer of eventlib's pool for ``app`` (:meth:`_producers`),
        as a context manager, waited for at most ``broker_timeout``
        seconds: its connection has eventlib's timeouts."""
        return self._producers(app).acquire(block=True, timeout=get_settings().broker_timeout)

    def _producers(self, app: Celery) -> ProducerPool:
        """The producers events are published with: a pool of eventlib's
        own for ``app`` in this process, with eventlib's timeouts and
        publisher confirms (:func:`publish_transport_options`), so that
        publishing cannot hang on a user's app's settings either; the app's
        other tasks are left to its own pool."""
        pool = self._pools.get(id(app))
        if pool is None:
            with self._lock:
                pool = self._pools.get(id(app))
                if pool is None:
                    settings = get_settings()
                    connection = app.connection_for_write(
                        connect_timeout=settings.broker_timeout,
                        transport_options=publish_transport_options(app, settings),
                    )
                    limit = app.conf.broker_pool_limit
                    pool = ProducerPool(connection.Pool(limit), limit=limit)
                    self._pools[id(app)] = pool
        return pool

    def _route(self, app: Celery, task: str, queue: str) -> messages.Route | None:
        """How ``task`` is published to ``queue`` on ``app``
        (:func:`eventlib.messages.route`), worked out once."""
        key = (id(app), task, queue)
        try:
            return self._routes[key]
        except KeyError:
            found = self._routes[key] = messages.route(app, task, queue)
            return found

    def spool(self, settings: Settings | None = None) -> Spool:
        """The spool of ``spool_path``, for this process's destination.
        Builds no Celery app, and imports no transport: it serves at
        interpreter exit, when imports may fail."""
        settings = settings or get_settings()
        key = (settings.spool_path, settings.queue, settings.broker_url, id(settings.celery_app))
        spool = self._spools.get(key)
        if spool is None:
            if settings.celery_app is not None:
                broker = broker_name(settings.celery_app)
            else:
                broker = maybe_sanitize_url(resolved_broker_url(settings))
            destination = Destination(broker, settings.queue)
            with self._lock:
                spool = self._spools.setdefault(
                    key, Spool(settings.spool_path, destination, timeout=settings.broker_timeout)
                )
        return spool

    # ------------------------------------------------------ process state ---

    def reset(self) -> None:
        """Settings changed: publish (or spool) what the buffer holds, stop
        the thread, drop the app and the pools; all is built again from the
        new settings when next needed."""
        self._stop_publisher()
        with self._lock:
            app, self._own_app = self._own_app, None
            pools, self._pools = list(self._pools.values()), {}
            self._routes = {}
            self._spools.clear()
            self.circuit.close()
            self._spool_waiting = True
            self._spooled_here = False
        for pool in pools:
            pool.connections.force_close_all()
            pool.force_close_all()
        if app is not None:
            app.close()

    def _stop_publisher(self) -> None:
        thread = self._thread
        if thread is None:
            return
        if self._buffer and thread.is_alive():
            self.flush(3 * get_settings().broker_timeout)
        self._stop_thread(3 * get_settings().broker_timeout)

    def _stop_thread(self, timeout: float) -> None:
        """Stop the publisher thread between two publishes, waiting at most
        ``timeout`` seconds for it."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        if thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _before_fork(self) -> None:
        """Wait (a few seconds at most) until the publisher's first round,
        which imports what publishing needs, is over, so that the child has
        no half-imported module."""
        self._fork_waited = self._warming_up.acquire(timeout=5.0)

    def _after_fork_in_parent(self) -> None:
        if self._fork_waited:
            self._warming_up.release()

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread, buffer, pools and
        connections are the parent's; start afresh."""
        self._lock = threading.RLock()
        self._warming_up = threading.Lock()
        self._inherited.append(self._pools)
        self._pools = {}
        for spool in self._spools.values():
            spool.after_fork()
        self._buffer = deque()
        self._wake = threading.Event()
        self._idle = self._work = False
        self._thread = None
        self._stopping = False
        self._broker_answered = False
        self.circuit = Circuit()


def _counted(events: Sequence[Outgoing]) -> list[str]:
    """The names of ``events`` with how many of each: ``shop.Refund x3``."""
    counts: dict[str, int] = {}
    for name, _, _ in events:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name} x{count}" for name, count in counts.items()]


def _retry_policy(timeout: float) -> dict[str, Any]:
    """:data:`PUBLISH_RETRY_POLICY` for one publish: its one retry is for a
    connection that failed at once (one the broker closed meanwhile), not
    for a broker that stopped answering, where it would wait out
    ``timeout`` again on a new connection.  So a publish waits at most
    about twice ``timeout``: one wait, or a quick failure and then a
    reconnection and a publish, each bounded."""
    started = time.monotonic()

    def give_up_after_a_wait(error: Exception, interval: float) -> None:
        if time.monotonic() - started > timeout / 2:
            raise error

    return {**PUBLISH_RETRY_POLICY, "errback": give_up_after_a_wait}


def _batches(events: Sequence[Outgoing], settings: Settings) -> list[list[Outgoing]]:
    """``events`` cut into batches of at most ``batch_size`` events and
    ``batch_bytes`` bytes of payload (a larger event goes alone)."""
    batches: list[list[Outgoing]] = []
    size = 0
    for event in events:
        if (
            not batches
            or len(batches[-1]) >= settings.batch_size
            or size + len(event[2]) > settings.batch_bytes
        ):
            batches.append([])
            size = 0
        batches[-1].append(event)
        size += len(event[2])
    return batches


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


_exit_hooks_installed = False


def _install_exit_hooks(owner: Sender) -> None:
    """Flush at interpreter exit, and when a ``multiprocessing`` child ends
    (it skips ``atexit``); see also :func:`_flush_on_sigterm`."""
    global _exit_hooks_installed
    if not _exit_hooks_installed:
        _exit_hooks_installed = True
        # Before the interpreter's own exit functions, as concurrent.futures
        # does: imports (a broker's transport, on a first publish) still work.
        register = getattr(threading, "_register_atexit", atexit.register)
        try:
            register(owner._flush_at_exit)
        except RuntimeError:  # the interpreter is already shutting down
            atexit.register(owner._flush_at_exit)
    import multiprocessing.util

    if multiprocessing.parent_process() is not None:
        multiprocessing.util.Finalize(owner, owner._flush_at_exit, exitpriority=100)


def _flush_on_sigterm() -> None:
    """Flush on ``SIGTERM``, which ends a process without its exit functions:
    installed when eventlib is imported in the main thread and nothing
    handles ``SIGTERM`` yet.  A server that handles it later (uvicorn,
    gunicorn, Celery) keeps this handler as the one it restores and raises
    again once it shut down gracefully, so the flush still runs then."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _flush_then_terminate)


def _flush_then_terminate(signum: int, frame: FrameType | None) -> None:
    """The ``SIGTERM`` handler: flush what the process holds (nothing to do
    when it logged nothing), then terminate as ``SIGTERM`` does."""
    sender._flush_at_exit()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


#: The sending side of this process.
sender = Sender()
_state.process_state(sender, built_from_settings=True)
_flush_on_sigterm()


def celery_app() -> Celery:
    """The Celery app events are sent with (see :meth:`Sender.app`)."""
    return sender.app()


def flush(timeout: float | None = None) -> bool:
    """Publish, now, the events this process logged so far; return ``True``
    once the broker has them all, ``False`` when ``timeout`` seconds passed
    first or the broker cannot take them (they then wait in the spool, and
    are published once it can).  ``None`` waits as long as it takes.

    Called at interpreter exit, when a ``multiprocessing`` child ends and on
    ``SIGTERM``, so a program needs it only where it must know its events
    reached the broker, or before ``os._exit()``.
    """
    return sender.flush(timeout)


def flush_spool() -> int:
    """Publish the spooled events of the configured destination now, oldest
    first; return how many were published.  Raises
    :class:`~eventlib.SpoolError` naming the file when the spool cannot be
    read, and :class:`~eventlib.DispatchError` naming the broker when it
    still cannot take them (those events stay spooled)."""
    app = sender.app()
    spool = sender.spool()
    try:
        return spool.flush(lambda events: sender._publish_spooled(app, events))
    except SpoolError:
        raise
    except Exception as error:
        raise DispatchError(
            f"the broker {broker_name(app)} cannot take the spooled events: {error!r}"
        ) from error


def spool_status() -> SpoolStatus:
    """What the configured spool holds for the configured destination, and
    for others."""
    return sender.spool().status()
