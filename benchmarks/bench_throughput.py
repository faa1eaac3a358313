"""Benchmark 2: events per second processed by one worker, end to end, and
the worker's memory over many events.

For each side, a queue is filled first by a caller process
(:mod:`benchmarks.caller`), then one worker is started on it
(``--concurrency=1``, prefork, the same options for every side):

- ``background``: events logged with ``log()`` in background dispatch,
  which batches under load (the queue holds fewer messages than events),
  processed by ``eventlib worker``;
- ``direct``: events logged with ``log()`` in direct dispatch, one message
  per event, processed by ``eventlib worker``;
- ``bare``: a no-op task sent with ``delay()``, processed by
  ``celery -A benchmarks.benchapp.bare worker`` (eventlib's Celery app and
  configuration).

Every event's handler, and the bare task's body, does the same one thing:
count itself (:mod:`benchmarks.benchapp.counter`).  The workers time
themselves: the counter records when the first and the N-th event finished,
and the rate is (N - 1) / (last - first).  Worker start-up and publishing
are not in it, and the publisher is idle while the worker runs (the machine
may have few CPUs).  The sides rotate in rounds; ratios are the medians of
the rounds' own ratios.

:func:`memory` runs one worker through many events logged while it runs and
reads its resident memory (RSS) at the start and at the end.
"""

from __future__ import annotations

import pickle
import time
import timeit
from dataclasses import dataclass, field
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
from .caller import CallerProcess
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
    queue_size,
    rotated,
    unique_queue,
    wait_for,
    worker_env,
)

#: Each side: the caller variant that fills its queue.
SIDES = {"background": "log:background", "direct": "log:direct", "bare": "delay"}


@dataclass
class Side:
    """One side's rounds."""

    events: int
    unavailable: str | None = None
    #: Events per second of each round.
    rates: list[float] = field(default_factory=list)
    #: CPU µs per event of the worker and its pool, each round.
    cpu: list[float] = field(default_factory=list)
    #: Broker messages in the queue once filled, each round.
    messages: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return median(self.rates) if self.rates else float("nan")

    @property
    def cpu_per_event(self) -> float:
        return median(self.cpu) if self.cpu else float("nan")

    @property
    def events_per_message(self) -> float:
        return self.events / median(self.messages) if self.messages else float("nan")


@dataclass
class ThroughputResult:
    broker: Broker
    counter: str
    sides: dict[str, Side]
    error: str | None = None

    def round_ratios(self, side: str, baseline: str = "bare") -> list[float]:
        """``side``'s rate over ``baseline``'s in the same round."""
        pairs = zip(self.sides[side].rates, self.sides[baseline].rates, strict=False)
        return [mine / theirs for mine, theirs in pairs]

    def ratio(self, side: str, baseline: str = "bare") -> float:
        """The median of the rounds' ratios (a round's runs are close in
        time, so drift between rounds cancels out)."""
        ratios = self.round_ratios(side, baseline)
        return median(ratios) if ratios else float("nan")

    def cpu_ratio(self, side: str, baseline: str = "bare") -> float:
        """``baseline``'s CPU per event over ``side``'s (median of the
        rounds): read like ``ratio``, less sensitive to other load."""
        pairs = zip(self.sides[baseline].cpu, self.sides[side].cpu, strict=False)
        ratios = [theirs / mine for theirs, mine in pairs]
        return median(ratios) if ratios else float("nan")


def run(
    broker: Broker,
    counter: Counter,
    events: dict[str, int],
    rounds: int,
    workdir: Path,
    deadline: float,
) -> ThroughputResult:
    """``events[side]`` events per round and side."""
    result = ThroughputResult(broker, counter.kind, {side: Side(events[side]) for side in SIDES})
    try:
        for number in range(rounds):
            for side in rotated(list(SIDES), number):
                figures = result.sides[side]
                if figures.unavailable is not None:
                    continue
                print(f"    round {number + 1}/{rounds}, {side}: ", end="", flush=True)
                measured = _round(broker, counter, side, figures.events, workdir, number, deadline)
                if isinstance(measured, str):
                    figures.unavailable = measured
                    print(f"not available: {measured}", flush=True)
                    continue
                rate, cpu, messages = measured
                figures.rates.append(rate)
                figures.messages.append(messages)
                shown = f"{figures.events / messages:,.1f} events per message"
                if cpu is not None:
                    figures.cpu.append(cpu)
                    shown += f", {cpu:,.0f} CPU µs per event"
                print(f"{rate:,.0f} events/s, {shown}", flush=True)
    except BenchError as error:
        print(f"failed: {error}", flush=True)
        result.error = str(error).splitlines()[0]
    return result


def _worker_argv(side: str, queue: str) -> list[str]:
    if side == "bare":
        argv = ["-m", "celery", "-A", f"{APP}.bare", "worker", f"--queues={queue}"]
    else:
        argv = ["-m", "eventlib", "worker"]
    return [*argv, *WORKER_OPTIONS, f"--hostname={queue}@%h"]


def _round(
    broker: Broker,
    counter: Counter,
    side: str,
    events: int,
    workdir: Path,
    number: int,
    deadline: float,
) -> tuple[float, float | None, int] | str:
    """Fill a new queue with ``events`` events, drain it with a new worker,
    delete it; returns the worker's rate, CPU µs per event and the number of
    broker messages, or why the side is not available.  A queue per round:
    a message redelivered after a worker's shutdown cannot reach the next
    round."""
    queue = unique_queue(f"{side}-{number}")
    try:
        where = counter.reset()
        caller = CallerProcess(SIDES[side], broker.url, queue, workdir)
        if caller.unavailable is not None:
            return caller.unavailable
        try:
            caller.ask(f"run {events - 1}")  # its first call was one
            caller.finish()
        finally:
            caller.kill()
        messages = queue_size(broker, queue)
        env = worker_env(broker, queue, where, events)
        log = workdir / f"worker-{broker.kind}-{side}-{number}.log"
        worker = Worker(_worker_argv(side, queue), env, log)
        rate, cpu = _drain(worker, counter, events, deadline)
        return rate, cpu, messages
    finally:
        delete_queues(broker, [queue])


def _drain(
    worker: Worker, counter: Counter, events: int, deadline: float
) -> tuple[float, float | None]:
    """Wait (until ``deadline`` seconds) for the worker to process every
    event; returns its rate in events per second and the CPU time its
    processes used per event (from the first event processed on, so
    without start-up)."""
    try:

        def started() -> tuple[int, float | None] | None:
            worker.check_alive()
            count = counter.count()
            return (count, worker.cpu_seconds()) if count else None

        def done() -> tuple[float, float] | None:
            worker.check_alive()
            return counter.span() if counter.count() >= events else None

        count, cpu_start = wait_for(started, deadline, "a first event", interval=0.002)
        first, last = wait_for(done, deadline, f"{events} events to be processed")
        cpu_end = worker.cpu_seconds()
    except BenchError as error:
        worker.stop()
        raise BenchError(f"{error}; the worker's log ends with:\n{worker.log_tail}") from None
    finally:
        worker.stop()
    cpu = None
    if cpu_start is not None and cpu_end is not None and count < events:
        cpu = (cpu_end - cpu_start) * 1e6 / (events - count)
    return (events - 1) / (last - first), cpu


# ------------------------------------------------------------- memory ---


@dataclass
class MemoryResult:
    broker: Broker
    events: int
    #: The dispatch mode the events were logged in.
    mode: str
    #: Why background dispatch was not used, when it was not.
    fallback: str | None = None
    #: Resident memory (bytes) of the worker's main process and of its pool
    #: process, after its first event, at most during the run, at the end.
    start: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    end: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def change(self) -> float:
        """The whole worker's RSS at the end over that at the start, minus 1."""
        if not (self.start and self.end):
            return float("nan")
        return sum(self.end.values()) / sum(self.start.values()) - 1


def memory(
    broker: Broker, counter: Counter, events: int, workdir: Path, deadline: float
) -> MemoryResult:
    """Start one worker, log one event and wait for it (the worker is then
    up, its modules imported); read its RSS; log ``events`` more while it
    runs, reading its RSS every half second; read it again after the last
    one.  Events are logged in background dispatch, or direct when the
    installed eventlib has no background dispatch."""
    queue = unique_queue("memory")
    result = MemoryResult(broker, events, "background")
    where = counter.reset()
    worker = Worker(
        _worker_argv("background", queue),
        worker_env(broker, queue, where, events + 1),
        workdir / f"worker-{broker.kind}-memory.log",
    )
    caller = None
    try:
        caller = CallerProcess(SIDES["background"], broker.url, queue, workdir)
        if caller.unavailable is not None:
            result.mode, result.fallback = "direct", caller.unavailable
            caller = CallerProcess(SIDES["direct"], broker.url, queue, workdir)

        def processed(count: int) -> bool:
            worker.check_alive()
            return counter.count() >= count

        wait_for(lambda: processed(1), deadline, "the worker's first event")
        result.start = result.peak = worker.rss()
        started = time.monotonic()
        caller.send(f"run {events}")
        while not processed(events + 1):
            if caller.process.poll() is not None:
                caller.receive()  # raises BenchError with the caller's error
            if time.monotonic() - started > deadline:
                raise BenchError(f"timed out after {deadline:.0f}s waiting for {events} events")
            now = worker.rss()
            if sum(now.values()) > sum(result.peak.values()):
                result.peak = now
            time.sleep(0.5)
        result.seconds = time.monotonic() - started
        result.end = worker.rss()
        caller.receive()
        caller.finish()
    except BenchError as error:
        print(f"failed: {error}", flush=True)
        result.error = str(error).splitlines()[0]
    finally:
        if caller is not None:
            caller.kill()
        worker.stop()
        delete_queues(broker, [queue])
    return result


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
