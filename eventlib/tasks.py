"""eventlib's Celery tasks: ``eventlib.process``, ``eventlib.process_batch``
and ``eventlib.retry_handler``, which workers run, and ``eventlib.external``,
which listeners run (:mod:`eventlib.broadcast`).

They are shared tasks: every Celery app in the process registers them, the
user's own app as well as the one eventlib creates when there is none, so
``celery -A yourproject worker -Q eventlib`` runs them like any other task.

Each worker process logs eventlib's counters (:mod:`eventlib.metrics`) at
INFO level every :data:`COUNTERS_LOG_EVERY` events and when it exits.

What Celery and Flower show of a task is what happened to its events
(docs/deployment.md, "Flower and Celery's events"): once every handler ran,
a task whose failures all run again later ends with Celery's ``Retry``
(state ``RETRY``), and a task with a failure that became a dead letter
raises :class:`~eventlib.ProcessingFailed` (state ``FAILURE``); either way
its message is acknowledged as usual, and the failure is already logged and
recorded, so nothing runs twice.  The task name Celery shows is the event's
(the ``shadow`` name the sending side gives each message).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, NamedTuple

from celery import Task, shared_task
from celery.exceptions import Retry
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
)
from celery.utils.imports import cwd_in_path

from . import broadcast, metrics, processing
from .conf import get_settings
from .discovery import autodiscover
from .exceptions import ProcessingFailed
from .processing import ProcessResult
from .sending import BATCH_TASK, PROCESS_TASK, RETRY_TASK, flush

__all__ = [
    "COUNTERS_LOG_EVERY",
    "RETRY_TASK_NAME",
    "TASK_NAME",
    "external",
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

#: At most this many events' failures are named in the message of a batch's
#: :class:`~eventlib.ProcessingFailed`; it counts the others.
FAILURES_NAMED = 3

# Every task: JSON only; acknowledged once the handlers ran, so that a worker
# killed mid-event does not lose it: another worker runs it again (handlers
# must be idempotent).  ProcessingFailed is expected: Celery logs it in one
# line, eventlib has logged the tracebacks.
_OPTIONS: dict[str, Any] = {
    "bind": True,
    "ignore_result": True,
    "serializer": "json",
    "acks_late": True,
    "reject_on_worker_lost": True,
    "throws": (ProcessingFailed,),
}


@shared_task(name=TASK_NAME, **_OPTIONS)
def process_event(self: Task, name: str, payload: str) -> None:
    """Process one event in the worker.

    Returns ``None`` when every handler succeeded: the outcome is in the
    logs, the counters and the dead letters (results are ignored, and Celery
    would still ``saferepr`` a return value).  :func:`eventlib.process`,
    which it runs with its app, returns the
    :class:`~eventlib.processing.ProcessResult` for callers that want it.

    In a worker, a failure ends the task as :func:`_end` says (``Retry`` or
    :class:`~eventlib.ProcessingFailed`); run eagerly (``apply()``), it
    returns, and an event that cannot be loaded raises what
    :func:`eventlib.process` raised.
    """
    try:
        outcome: _Outcome = processing.process(name, payload, app=self.app)
    except Exception as error:  # logged and recorded as a dead letter by process()
        if self.request.is_eager:
            raise
        outcome = _Unloadable(name, error)
    finally:
        _count_event()
    _end(self, [outcome])


@shared_task(name=BATCH_TASK, **_OPTIONS)
def process_batch(self: Task, events: list[list[str]]) -> None:
    """Process the events of one message, in order, each exactly as
    ``eventlib.process`` does: an event that cannot be processed (recorded
    as a dead letter) does not stop the ones after it.

    The message is acknowledged once every event of it was processed: a
    worker lost in the middle of a batch makes the broker deliver it again,
    and the events that were already processed run again (at least once;
    ``event.id`` lets handlers drop duplicates).  Once every event was
    processed, the task ends as :func:`_end` says for all of them: a failure
    of any event fails the whole task in Celery's view.
    """
    outcomes: list[_Outcome] = []
    for name, payload in events:
        try:
            outcomes.append(processing.process(name, payload, app=self.app))
        except Exception as error:  # logged and recorded as a dead letter by process()
            outcomes.append(_Unloadable(name, error))
        finally:
            _count_event()
    _end(self, outcomes)


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

    Returns ``None`` when the handler succeeded: the outcome is in the logs,
    the counters and the dead letters.
    :func:`eventlib.processing.retry_handler`, which it runs with its app,
    returns the :class:`~eventlib.processing.ProcessResult` for callers that
    want it.  A failure ends the task as for ``eventlib.process``.
    """
    try:
        outcome: _Outcome = processing.retry_handler(
            name, payload, handler, attempt, dead_letter=dead_letter, app=self.app
        )
    except Exception as error:  # logged, and recorded, by retry_handler()
        if self.request.is_eager:
            raise
        outcome = _Unloadable(name, error)
    _end(self, [outcome])


@shared_task(name=broadcast.EXTERNAL_TASK, **_OPTIONS)
def external(
    self: Task,
    name: str,
    payload: str,
    handler: str | None = None,
    attempt: int = 1,
    dead_letter: int | None = None,
) -> None:
    """Run, in a listener, the external handlers of a broadcast event (one
    of them when ``handler`` names it: a retry), as
    :func:`eventlib.processing.process_external` does for the listener's
    group.  A failure ends the task as for ``eventlib.process``."""
    group = broadcast.listening_group(self.app)
    try:
        outcome: _Outcome = processing.process_external(
            name,
            payload,
            group=group,
            handler=handler,
            attempt=attempt,
            dead_letter=dead_letter,
            app=self.app,
        )
    except Exception as error:  # logged, and recorded, by process_external()
        if self.request.is_eager:
            raise
        outcome = _Unloadable(name, error)
    _end(self, [outcome])


# ------------------------------------------------------ how a task ends ---


class _Unloadable(NamedTuple):
    """An event that could not be loaded: ``process()`` raised ``error``."""

    name: str
    error: Exception


_Outcome = ProcessResult | _Unloadable


def _end(task: Task, outcomes: list[_Outcome]) -> None:
    """End a task that ran in a worker as its events' ``outcomes`` say, so
    that Celery and Flower show what happened: return (``SUCCESS``) when
    nothing failed; raise Celery's ``Retry`` (``RETRY``) when every failed
    handler runs again later (eventlib has sent its retry, a task of its
    own); raise :class:`~eventlib.ProcessingFailed` (``FAILURE``) when a
    failure became a dead letter, chained to the error of an event that
    could not be loaded.  The message of either is one line, from
    :func:`_failure`.  Run eagerly, the task returns whatever happened."""
    failures = [(line, final) for line, final in map(_failure, outcomes) if line]
    if not failures or task.request.is_eager:
        return
    lines = [line for line, _ in failures]
    if len(outcomes) == 1:
        message = lines[0]
    else:
        named = "; ".join(lines[:FAILURES_NAMED])
        more = len(lines) - FAILURES_NAMED
        message = f"{len(lines)} of {len(outcomes)} events failed: {named}"
        message += f"; and {more} more" if more > 0 else ""
    if any(final for _, final in failures):
        # The traceback Flower shows then ends with that of an event that
        # could not be loaded, if one could not.
        unloadable = [outcome.error for outcome in outcomes if isinstance(outcome, _Unloadable)]
        raise ProcessingFailed(message) from next(iter(unloadable), None)
    raise Retry(message, exc=ProcessingFailed(message))


def _failure(outcome: _Outcome) -> tuple[str | None, bool]:
    """What failed in ``outcome``, in one line (``None`` when nothing did),
    and whether a failure became a dead letter rather than a retry."""
    if isinstance(outcome, _Unloadable):
        reason = f"{type(outcome.error).__name__}: {outcome.error}"
        return f"{outcome.name}: cannot be processed (dead letter): {_one_line(reason)}", True
    about = f"{outcome.name} (id {outcome.event_id})"
    if outcome.invalid is not None:
        return f"{about}: invalid data (dead letter): {_one_line(outcome.invalid)}", True
    if not outcome.failed:
        return None, False
    ran = len(outcome.succeeded) + len(outcome.failed)
    handlers = "; ".join(
        f"{failure.handler} ({'retried' if failure.handler in outcome.retrying else 'dead letter'})"
        f": {_one_line(failure.error)}"
        for failure in outcome.failed
    )
    final = any(failure.handler not in outcome.retrying for failure in outcome.failed)
    return f"{about}: {len(outcome.failed)} of {ran} handlers failed: {handlers}", final


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut after ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


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
    if settings.queue in consumed or broadcast.listening_group(instance.app):
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
