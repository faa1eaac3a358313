"""Benchmark 2: events per second processed by one worker, end to end.

For each side, a queue is filled with N messages first, then one worker is
started on it (``--concurrency=2``, prefork, same options for both):

- eventlib: ``eventlib worker`` processing ``Order`` events logged with
  ``eventlib.log()``; its one handler counts the event;
- bare: ``celery -A benchmarks.benchapp.bare worker`` (eventlib's Celery app
  and configuration) processing a task sent with ``delay()`` whose body
  counts the message the same way.

The workers time themselves: the counter records when the first and the
N-th message finished, and the rate is (N - 1) / (last - first).  Worker
start-up and publishing are not in it, and the publisher is idle while the
worker runs (the machine may have few CPUs).  The sides alternate in rounds
whose order alternates too (eventlib, bare, bare, eventlib, ...); the ratio is
the median of the rounds' ratios.
"""

from __future__ import annotations

import pickle
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.app.trace import build_tracer
from celery.utils.saferepr import saferepr
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import loads as kombu_loads

import eventlib
from eventlib.discovery import find_event
from eventlib.sending import celery_app
from eventlib.serialization import serialize_event
from eventlib.tasks import TASK_NAME

from .benchapp.counter import count_nothing
from .benchapp.tasks import register_bare
from .common import (
    APP,
    BARE_DATA,
    DATA,
    ORDER,
    WORKER_OPTIONS,
    BenchError,
    Broker,
    Counter,
    Worker,
    delete_queues,
    median,
    rotated,
    unique_queue,
    wait_for,
    worker_env,
)

SIDES = ("eventlib", "bare")


@dataclass
class ThroughputResult:
    broker: Broker
    messages: int
    counter: str
    #: Messages per second of each round, per side.
    rates: dict[str, list[float]]
    #: CPU µs per message of the worker and its pool, each round, per side.
    cpu: dict[str, list[float]]
    error: str | None = None

    def rate(self, side: str) -> float:
        return median(self.rates[side]) if self.rates[side] else float("nan")

    def cpu_per_message(self, side: str) -> float:
        return median(self.cpu[side]) if self.cpu[side] else float("nan")

    @property
    def complete(self) -> bool:
        return bool(self.rates["eventlib"] and self.rates["bare"])

    @property
    def round_ratios(self) -> list[float]:
        """eventlib's rate over the bare rate of the same round."""
        return [e / b for e, b in zip(self.rates["eventlib"], self.rates["bare"], strict=False)]

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios (a round's two runs are next to
        each other in time, so drift between rounds cancels out)."""
        return median(self.round_ratios) if self.round_ratios else float("nan")

    @property
    def cpu_ratio(self) -> float:
        """The bare worker's CPU per message over eventlib's (median of the
        rounds): comparable with ``ratio``, less sensitive to other load."""
        pairs = zip(self.cpu["bare"], self.cpu["eventlib"], strict=False)
        ratios = [b / e for b, e in pairs]
        return median(ratios) if ratios else float("nan")


def run(
    broker: Broker,
    counter: Counter,
    messages: int,
    rounds: int,
    workdir: Path,
    deadline: float,
) -> ThroughputResult:
    result = ThroughputResult(
        broker, messages, counter.kind, {side: [] for side in SIDES}, {side: [] for side in SIDES}
    )
    try:
        for number in range(rounds):
            for side in rotated(SIDES, number):
                print(f"    round {number + 1}/{rounds}, {side}: ", end="", flush=True)
                rate, cpu = _round(
                    broker, counter, side, messages, workdir, f"{side}-{number}", deadline
                )
                result.rates[side].append(rate)
                shown = ""
                if cpu is not None:
                    result.cpu[side].append(cpu)
                    shown = f", {cpu:,.0f} CPU µs per message"
                print(f"{rate:,.0f} messages/s{shown}", flush=True)
    except BenchError as error:
        print(f"failed: {error}", flush=True)
        result.error = str(error).splitlines()[0]
    return result


def _round(
    broker: Broker,
    counter: Counter,
    side: str,
    messages: int,
    workdir: Path,
    name: str,
    deadline: float,
) -> tuple[float, float | None]:
    """Fill a new queue, drain it with a new worker, delete it; returns the
    worker's rate and CPU µs per message.  A queue per round: a message redelivered after a worker's
    shutdown cannot reach the next round."""
    queue = unique_queue(name)
    eventlib.configure(broker_url=broker.url, queue=queue, apps=[APP])
    try:
        where = counter.reset()
        if side == "eventlib":
            for _ in range(messages):
                eventlib.log(ORDER, DATA)
            argv = ["-m", "eventlib", "worker", *WORKER_OPTIONS]
        else:
            bare = register_bare(celery_app(), queue=queue)
            for _ in range(messages):
                bare.delay(BARE_DATA)
            argv = ["-m", "celery", "-A", f"{APP}.bare", "worker", f"--queues={queue}"]
            argv += WORKER_OPTIONS
        argv.append(f"--hostname={queue}@%h")
        env = worker_env(broker, queue, where, messages)
        worker = Worker(argv, env, workdir / f"worker-{broker.kind}-{name}.log")
        return _drain(worker, counter, messages, deadline)
    finally:
        eventlib.configure(broker_url=None)  # closes the app and its connections
        delete_queues(broker, [queue])


def _drain(
    worker: Worker, counter: Counter, messages: int, deadline: float
) -> tuple[float, float | None]:
    """Wait (until ``deadline`` seconds) for the worker to process every
    message; returns its rate in messages per second and the CPU time its
    processes used per message (from the first message processed on, so
    without start-up)."""
    try:

        def started() -> tuple[int, float | None] | None:
            worker.check_alive()
            count = counter.count()
            return (count, worker.cpu_seconds()) if count else None

        def done() -> tuple[float, float] | None:
            worker.check_alive()
            return counter.span() if counter.count() >= messages else None

        count, cpu_start = wait_for(started, deadline, "a first message", interval=0.002)
        first, last = wait_for(done, deadline, f"{messages} messages to be processed")
        cpu_end = worker.cpu_seconds()
    except BenchError as error:
        worker.stop()
        raise BenchError(f"{error}; the worker's log ends with:\n{worker.log_tail}") from None
    finally:
        worker.stop()
    cpu = None
    if cpu_start is not None and cpu_end is not None and count < messages:
        cpu = (cpu_end - cpu_start) * 1e6 / (messages - count)
    return (messages - 1) / (last - first), cpu


# ------------------------------------------------ per message, in-process ---


WORKER_STEPS = {
    "eventlib": "eventlib task: decode the body, tracer, pickle the result for the parent",
    "bare": "bare task: the same",
    "process": "in the eventlib task: `eventlib.process()` (payload, event, `clean()`, handler)",
    "as_dict": "in the eventlib task: `ProcessResult.as_dict()`, the task's return value",
    "saferepr": (
        "in Celery's tracer: `saferepr()` of that dict, for the success log line"
        " (computed whatever the log level)"
    ),
    "pickle_eventlib": "pickling the tracer's result, eventlib (the dict and its repr)",
    "pickle_bare": "pickling the tracer's result, bare (`None`)",
}


@dataclass
class WorkerBreakdown:
    """What a pool process does per message, timed in this process without a
    broker (µs per call, median of repeats, by key of ``WORKER_STEPS``);
    counting is a no-op here."""

    steps: dict[str, float]
    #: Whether eventlib's task returns something (then Celery's tracer
    #: computes its repr and pickles it for the parent).
    returns_value: bool = True


def worker_breakdown(repeats: int = 9) -> WorkerBreakdown:
    """Time what a prefork pool process runs per message for each task: decode
    the JSON body, run Celery's tracer around the task, pickle the tracer's
    result for the parent, and the parts of eventlib's share."""
    count_nothing()
    eventlib.configure(apps=[APP], broker_url="memory://")
    try:
        app = celery_app()
        bare = register_bare(app)
        task = app.tasks[TASK_NAME]
        payload = serialize_event(find_event(ORDER)(DATA))
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        bodies = {
            "eventlib": kombu_dumps(((ORDER, payload), {}, embed), "json")[2],
            "bare": kombu_dumps(((BARE_DATA,), {}, embed), "json")[2],
        }
        tracers = {
            "eventlib": build_tracer(task.name, task, app=app, eager=False, hostname="bench"),
            "bare": build_tracer(bare.name, bare, app=app, eager=False, hostname="bench"),
        }
        returned = task.run(ORDER, payload)
        processed = eventlib.process(ORDER, payload)
        traced = tracers["eventlib"]("id", (ORDER, payload), {}, {"id": "id"})
        traced_bare = tracers["bare"]("id", (BARE_DATA,), {}, {"id": "id"})
        namespace = {
            "run": _run_in_pool,
            "tracers": tracers,
            "bodies": bodies,
            "process": eventlib.process,
            "ORDER": ORDER,
            "payload": payload,
            "processed": processed,
            "saferepr": saferepr,
            "returned": returned,
            "maxsize": task.resultrepr_maxsize,
            "dumps": pickle.dumps,
            "traced": traced,
            "traced_bare": traced_bare,
        }
        statements = {
            "eventlib": "run(tracers['eventlib'], bodies['eventlib'])",
            "bare": "run(tracers['bare'], bodies['bare'])",
            "process": "process(ORDER, payload)",
            "as_dict": "processed.as_dict()",
            "saferepr": "saferepr(returned, maxsize)",
            "pickle_eventlib": "dumps(traced)",
            "pickle_bare": "dumps(traced_bare)",
        }
        timers = {
            label: timeit.Timer(stmt, globals=namespace) for label, stmt in statements.items()
        }
        numbers = {label: max(200, timer.autorange()[0]) for label, timer in timers.items()}
        times: dict[str, list[float]] = {label: [] for label in timers}
        for number in range(repeats):
            for label in rotated(list(timers), number):
                times[label].append(timers[label].timeit(numbers[label]) / numbers[label] * 1e6)
        return WorkerBreakdown(
            {label: median(values) for label, values in times.items()},
            returns_value=returned is not None,
        )
    finally:
        eventlib.configure(broker_url=None)


def _run_in_pool(tracer: Any, body: bytes) -> bytes:
    """What a pool process does with one message (task protocol 2: the body
    is decoded in the pool process)."""
    args, kwargs, _embed = kombu_loads(body, "application/json", "utf-8")
    request = {"id": "bench", "delivery_info": {}}
    return pickle.dumps(tracer("bench", args, kwargs, request))
