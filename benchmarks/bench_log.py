"""Benchmark 1: the cost of ``eventlib.log()`` in the caller against a bare
Celery ``delay()`` of the same data, on the same app and broker.

Three calls are timed one by one, interleaved in rounds whose order rotates
(A B C, B C A, C A B, ...) so that drift touches them all alike:

- ``log``: ``eventlib.log('benchmarks.benchapp.Order', DATA)``, five keys with
  a Decimal and a datetime: event lookup, ``clean()``, eventlib's
  serialization, then ``apply_async`` of ``eventlib.process``;
- ``delay``: ``bare.delay(BARE_DATA)``, the same data as plain JSON values, a
  no-op task registered on the same Celery app (eventlib's own), sent to a
  queue of its own on the same broker;
- ``apply_async``: eventlib's exact Celery call with a payload serialized once
  beforehand (``log`` minus eventlib's own work), to split the difference.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import time
import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.utils.saferepr import saferepr
from kombu.serialization import dumps as kombu_dumps

import eventlib
from eventlib.discovery import find_event
from eventlib.sending import celery_app
from eventlib.serialization import serialize_event
from eventlib.tasks import TASK_NAME

from .benchapp.tasks import register_bare
from .common import (
    APP,
    BARE_DATA,
    DATA,
    ORDER,
    Broker,
    Summary,
    delete_queues,
    median,
    rotated,
    unique_queue,
)

VARIANTS = ("log", "delay", "apply_async")


@dataclass
class LogResult:
    broker: Broker
    rounds: int
    block: int
    summaries: dict[str, Summary]
    #: median(log) / median(delay) of each round.
    round_ratios: list[float]
    #: The ``delay()`` and ``log()`` profiles, by area (µs per call).
    profile: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The eventlib functions that took the most time in ``log()``.
    profile_top: list[tuple[str, float, float]] = field(default_factory=list)
    profile_calls: int = 0

    def ratio(self, stat: str) -> float:
        return getattr(self.summaries["log"], stat) / getattr(self.summaries["delay"], stat)


class Setup:
    """eventlib configured for one broker, with the three calls to time."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.queues = [unique_queue("log"), unique_queue("bare")]
        eventlib.configure(broker_url=broker.url, queue=self.queues[0], apps=[APP])
        app = celery_app()
        bare = register_bare(app, queue=self.queues[1])
        process_task = app.tasks[TASK_NAME]
        payload = serialize_event(find_event(ORDER)(DATA))
        queue = self.queues[0]

        def log() -> Any:
            return eventlib.log(ORDER, DATA)

        def delay() -> Any:
            return bare.delay(BARE_DATA)

        def apply_async() -> Any:
            return process_task.apply_async(
                args=(ORDER, payload), task_id=str(uuid.uuid4()), queue=queue
            )

        self.calls: dict[str, Callable[[], Any]] = {
            "log": log,
            "delay": delay,
            "apply_async": apply_async,
        }

    def close(self) -> None:
        delete_queues(self.broker, self.queues)
        eventlib.configure(broker_url=None)  # closes the app and its connections


def _time_block(call: Callable[[], Any], count: int) -> list[int]:
    perf = time.perf_counter_ns
    samples = []
    append = samples.append
    for _ in range(count):
        start = perf()
        call()
        append(perf() - start)
    return samples


def run(broker: Broker, rounds: int, block: int, warmup: int, profile_calls: int) -> LogResult:
    setup = Setup(broker)
    try:
        for name in VARIANTS:
            _time_block(setup.calls[name], warmup)
        samples: dict[str, list[int]] = {name: [] for name in VARIANTS}
        round_ratios = []
        for number in range(rounds):
            this_round: dict[str, list[int]] = {}
            for name in rotated(VARIANTS, number):
                gc.collect()
                this_round[name] = _time_block(setup.calls[name], block)
                samples[name].extend(this_round[name])
            round_ratios.append(median(this_round["log"]) / median(this_round["delay"]))
        result = LogResult(
            broker,
            rounds,
            block,
            {name: Summary.of(values) for name, values in samples.items()},
            round_ratios,
        )
        if profile_calls:
            result.profile_calls = profile_calls
            for name in ("delay", "log"):
                areas, top = _profile(setup.calls[name], profile_calls)
                result.profile[name] = areas
                if name == "log":
                    result.profile_top = top
        return result
    finally:
        setup.close()


# ------------------------------------------------------------ profiling ---

AREAS = (
    ("eventlib", "/eventlib/"),
    ("celery", "/celery/"),
    ("kombu", "/kombu/"),
    ("redis-py", "/redis/"),
    ("py-amqp", "/amqp/"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("json", "/json/"),
    ("uuid", "/uuid.py"),
)


def _area(filename: str, function: str) -> str:
    if filename == "~":
        if "socket" in function or "sendall" in function or "recv" in function:
            return "socket I/O"
        if "sqlite3" in function:
            return "SQLite"
        return "other built-ins"
    for area, marker in AREAS:
        if marker in filename:
            return area
    return "other stdlib"


def _profile(
    call: Callable[[], Any], count: int
) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
    """Own time per call by area, and the eventlib functions with the most
    cumulative time per call (µs, under cProfile, so inflated)."""
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    for _ in range(count):
        call()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    top = []
    for (filename, _line, function), (_cc, _nc, own, cumulative, _callers) in stats.items():
        area = _area(filename, function)
        areas[area] = areas.get(area, 0.0) + own * 1e6 / count
        if area == "eventlib":
            module = filename.rpartition("/eventlib/")[2].removesuffix(".py").replace("/", ".")
            top.append((f"{module}.{function}", own * 1e6 / count, cumulative * 1e6 / count))
    top.sort(key=lambda item: item[2], reverse=True)
    return areas, top[:8]


# --------------------------------------------------- eventlib's own work ---


#: eventlib's own steps in ``log()``, then two things Celery does for every
#: message, for eventlib's arguments (name, payload text) and the bare one's
#: (the data dict).
LOG_STEPS = {
    "find_event": "eventlib: `find_event(name)` (cached)",
    "construct": "eventlib: `Order(data)`: a copy of the data, `uuid4()`, `datetime.now()`",
    "validate": "eventlib: `event.validate()`, the `clean()` of `Order`",
    "serialize": "eventlib: `serialize_event(event)`",
    "argsrepr_eventlib": "Celery: `saferepr()` of the args for the `argsrepr` header, eventlib",
    "argsrepr_bare": "Celery: the same, bare",
    "body_eventlib": "Celery: the JSON message body, eventlib",
    "body_bare": "Celery: the same, bare",
}
OWN_STEPS = ("find_event", "construct", "validate", "serialize")


@dataclass
class Breakdown:
    """What ``log()`` and ``delay()`` do besides talking to the broker, timed
    without one (µs per call, median of repeats, by key of ``LOG_STEPS``)."""

    steps: dict[str, float]
    body_bytes: dict[str, int]
    #: Length of the ``argsrepr`` header.
    argsrepr_chars: dict[str, int]

    @property
    def own(self) -> float:
        """eventlib's own steps together."""
        return sum(self.steps[key] for key in OWN_STEPS)


def breakdown(repeats: int = 9) -> Breakdown:
    eventlib.configure(apps=[APP])
    event_class = find_event(ORDER)
    event = event_class(DATA)
    payload = serialize_event(event)
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    maxlevels = celery_app().conf.task_repr_maxlevels
    namespace = {
        "find_event": find_event,
        "ORDER": ORDER,
        "DATA": DATA,
        "event_class": event_class,
        "event": event,
        "serialize_event": serialize_event,
        "dumps": kombu_dumps,
        "saferepr": saferepr,
        "maxlevels": maxlevels,
        "eventlib_args": (ORDER, payload),
        "bare_args": (BARE_DATA,),
        "eventlib_body": ((ORDER, payload), {}, embed),
        "bare_body": ((BARE_DATA,), {}, embed),
    }
    statements = {
        "find_event": "find_event(ORDER)",
        "construct": "event_class(DATA)",
        "validate": "event.validate()",
        "serialize": "serialize_event(event)",
        "argsrepr_eventlib": "saferepr(eventlib_args, 1024, maxlevels=maxlevels)",
        "argsrepr_bare": "saferepr(bare_args, 1024, maxlevels=maxlevels)",
        "body_eventlib": "dumps(eventlib_body, 'json')",
        "body_bare": "dumps(bare_body, 'json')",
    }
    timers = {key: timeit.Timer(stmt, globals=namespace) for key, stmt in statements.items()}
    numbers = {key: max(1000, timer.autorange()[0]) for key, timer in timers.items()}
    times: dict[str, list[float]] = {key: [] for key in timers}
    for number in range(repeats):
        for key in rotated(list(timers), number):
            times[key].append(timers[key].timeit(numbers[key]) / numbers[key] * 1e6)
    return Breakdown(
        {key: median(values) for key, values in times.items()},
        {
            "eventlib": len(kombu_dumps(namespace["eventlib_body"], "json")[2]),
            "bare": len(kombu_dumps(namespace["bare_body"], "json")[2]),
        },
        {
            "eventlib": len(saferepr(namespace["eventlib_args"], 1024, maxlevels=maxlevels)),
            "bare": len(saferepr(namespace["bare_args"], 1024, maxlevels=maxlevels)),
        },
    )
