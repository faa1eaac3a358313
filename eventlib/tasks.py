"""eventlib's Celery tasks: ``eventlib.process``, ``eventlib.process_batch``
and ``eventlib.retry_handler``.

They are shared tasks: every Celery app in the process registers them, the
user's own app as well as the one eventlib creates when there is none, so
``celery -A yourproject worker -Q eventlib`` runs them like any other task.

Each worker process logs eventlib's counters (:mod:`eventlib.metrics`) at
INFO level every :data:`COUNTERS_LOG_EVERY` events and when it exits.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
)
from celery.utils.imports import cwd_in_path

from . import metrics, processing
from .conf import get_settings
from .discovery import autodiscover
from .sending import BATCH_TASK, PROCESS_TASK, RETRY_TASK, flush

__all__ = [
    "COUNTERS_LOG_EVERY",
    "RETRY_TASK_NAME",
    "TASK_NAME",
    "log_counters",
    "process_batch",
    "process_event",
    "retry_handler",
]

logger = logging.getLogger("eventlib")

TASK_NAME = PROCESS_TASK
RETRY_TASK_NAME = RETRY_TASK

#: A worker process logs its counters after every this many events.
COUNTERS_LOG_EVERY = 1000

_events_seen = itertools.count(1)

# Every task: JSON only; acknowledged once the handlers ran, so that a worker
# killed mid-event does not lose it: another worker runs it again (handlers
# must be idempotent).
_OPTIONS: dict[str, Any] = {
    "bind": True,
    "ignore_result": True,
    "serializer": "json",
    "acks_late": True,
    "reject_on_worker_lost": True,
}


@shared_task(name=TASK_NAME, **_OPTIONS)
def process_event(self: Task, name: str, payload: str) -> None:
    """Process one event in the worker.

    Returns ``None``: the outcome is in the logs, the counters and the dead
    letters (results are ignored, and Celery would still ``saferepr`` a
    return value).  :func:`eventlib.process`, which it runs with its app,
    returns the :class:`~eventlib.processing.ProcessResult` for callers that
    want it.
    """
    try:
        processing.process(name, payload, app=self.app)
    finally:
        _count_event()


@shared_task(name=BATCH_TASK, **_OPTIONS)
def process_batch(self: Task, events: list[list[str]]) -> None:
    """Process the events of one message, in order, each exactly as
    ``eventlib.process`` does: an event that cannot be processed (recorded
    as a dead letter) does not stop the ones after it.

    The message is acknowledged once every event of it was processed: a
    worker lost in the middle of a batch makes the broker deliver it again,
    and the events that were already processed run again (at least once;
    ``event.id`` lets handlers drop duplicates).
    """
    for name, payload in events:
        try:
            processing.process(name, payload, app=self.app)
        except Exception:
            pass  # logged and recorded as a dead letter by process()
        finally:
            _count_event()


def _count_event() -> None:
    if next(_events_seen) % COUNTERS_LOG_EVERY == 0:
        log_counters()


@shared_task(name=RETRY_TASK_NAME, **_OPTIONS)
def retry_handler(
    self: Task,
    name: str,
    payload: str,
    handler: str | None,
    attempt: int,
    dead_letter: int | None = None,
) -> None:
    """Run one handler of an event again (every handler when ``handler`` is
    ``None``); ``attempt`` counts its runs, this one included.  With
    ``dead_letter``, the run retries that dead letter.

    Returns ``None``: the outcome is in the logs, the counters and the dead
    letters.  :func:`eventlib.processing.retry_handler`, which it runs with
    its app, returns the :class:`~eventlib.processing.ProcessResult` for
    callers that want it.
    """
    processing.retry_handler(name, payload, handler, attempt, dead_letter=dead_letter, app=self.app)


def log_counters() -> None:
    """Log this process's counters on the ``eventlib`` logger at INFO level,
    as ``eventlib counters: logged=... processed=...``, with the values in
    the record's ``eventlib_counters`` attribute."""
    counts = metrics.snapshot()
    logger.info(
        "eventlib counters: %s",
        " ".join(f"{name}={value}" for name, value in counts.items()),
        extra={"eventlib_counters": counts},
    )


#: The workers of this process started with ``-Q``, by host name.
_chose_queues: set[str] = set()


@celeryd_init.connect
def _note_chosen_queues(sender: str, options: dict[str, Any] | None = None, **_: Any) -> None:
    if options and options.get("queues"):
        _chose_queues.add(sender)


@celeryd_after_setup.connect
def _consume_eventlib_queue(sender: str, instance: Any, **_: Any) -> None:
    """A worker in which eventlib's tasks are registered consumes eventlib's
    queue too, unless ``-Q`` chose its queues (then it only warns that
    eventlib's is not among them) or the ``worker_consumes_queue`` setting
    is off; it says so on the ``eventlib`` logger, before Celery's banner
    lists the queues."""
    settings = get_settings()
    queues = instance.app.amqp.queues
    consumed = sorted(queues.consume_from)
    if settings.queue in consumed:
        return
    if sender in _chose_queues:
        logger.warning(
            "This worker consumes %s but not eventlib's queue %r: events sent there "
            "wait for another worker (add it: -Q %s)",
            ", ".join(consumed),
            settings.queue,
            ",".join([*consumed, settings.queue]),
        )
    elif settings.worker_consumes_queue:
        queues.select_add(settings.queue)
        logger.warning(
            "This worker consumes eventlib's queue %r too, where events are sent "
            "(EVENTLIB_WORKER_CONSUMES_QUEUE=0 leaves it to other workers)",
            settings.queue,
        )
    else:
        logger.warning(
            "This worker does not consume eventlib's queue %r (worker_consumes_queue "
            "is off): events sent there wait for another worker",
            settings.queue,
        )


@worker_init.connect
def _discover_at_worker_start(**_: Any) -> None:
    """Import every configured app's events module before the worker takes
    its first event, so that function handlers are registered and an events
    module that fails to import stops the worker at start.

    Celery logs and swallows an ``Exception`` raised by a signal receiver,
    which would let the worker start without those handlers: the error is
    logged here at CRITICAL level on the ``eventlib`` logger, with its
    traceback, and raised again as :class:`SystemExit`, naming it.
    """
    try:
        # From the folder the worker started in, as Celery imports the
        # modules its app includes: `celery -A proj worker` run from the
        # project's folder finds the project's apps.
        with cwd_in_path():
            autodiscover()
    except Exception as error:
        logger.critical(
            "The worker cannot start: importing the events modules of its apps failed",
            exc_info=True,
        )
        raise SystemExit(f"eventlib: the worker cannot start: {error!r}") from error


@worker_process_shutdown.connect
def _end_pool_process(**_: Any) -> None:
    """A pool process ends (the worker stops, or it reached
    ``max_tasks_per_child``): publish what its handlers logged, since it
    ends without the interpreter's exit functions, then log its counters."""
    flush(3 * get_settings().broker_timeout)
    log_counters()


@worker_shutdown.connect
def _end_worker(**_: Any) -> None:
    """The same for a worker whose pool runs in its own process
    (``--pool=solo`` or ``threads``); prefork's main process has counted
    nothing."""
    flush(3 * get_settings().broker_timeout)
    if any(metrics.snapshot().values()):
        log_counters()
