"""Benchmark 1: what ``log()`` costs its caller, per call, in each dispatch
mode, side by side with Segment's analytics-python ``track()`` and Celery's
``delay()``.

Every variant of :data:`benchmarks.caller.VARIANTS` runs in a caller process
of its own (:mod:`benchmarks.caller`), each eventlib or Celery one with a
queue of its own on the same broker, Segment's posting to the local HTTP
sink (:mod:`benchmarks.sink`):

- ``log:<mode>``: ``eventlib.log('benchmarks.benchapp.Order', DATA)``, five
  keys with a Decimal and a datetime, with ``dispatch=<mode>``;
- ``track``: ``client.track(user_id, 'Order', DATA)``, analytics-python's
  client with its defaults but for ``host``;
- ``delay``: ``bare.delay(BARE_DATA)``, the same data as plain JSON values, a
  no-op task registered on eventlib's own Celery app;
- ``apply_async``: eventlib's exact Celery call with a payload serialized
  once beforehand (direct ``log`` minus eventlib's own work).

Blocks of calls are timed call by call, interleaved in rounds whose order
rotates (A B C, B C A, C A B, ...) so that drift touches them all alike.
After each block its caller publishes what the block left behind (eventlib's
``flush()``, Segment's ``flush()``) before the next block starts.

:func:`first_calls` times the first call of fresh processes;
:func:`breakdown` times eventlib's own steps in ``log()`` without a broker.
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass, field
from pathlib import Path

from celery.utils.saferepr import saferepr
from kombu.serialization import dumps as kombu_dumps

import eventlib
from eventlib.discovery import find_event
from eventlib.sending import celery_app
from eventlib.serialization import serialize_event

from .caller import VARIANTS, CallerProcess
from .common import (
    APP,
    BARE_DATA,
    DATA,
    ORDER,
    BenchError,
    Broker,
    Summary,
    delete_queues,
    median,
    queue_size,
    rotated,
    unique_queue,
)
from .sink import Sink

#: The variants profiled on one broker (the calling thread only).
PROFILED = ("log:direct", "log:background", "log:spool", "track", "delay")
#: The variants whose first call in a fresh process is timed.
FIRST_CALLS = ("log:direct", "log:background", "log:spool", "track", "delay")


@dataclass
class Figures:
    """One variant's run: per-call samples (ns) and what they led to."""

    unavailable: str | None = None
    samples_ns: list[int] = field(default_factory=list)
    #: The median of each round, in µs.
    round_medians: list[float] = field(default_factory=list)
    #: What publishing a block's backlog took after the block, ns per block.
    settle_ns: list[int] = field(default_factory=list)
    #: Every call made: the first, the warm-up, the timed and profiled ones.
    calls: int = 0
    #: Broker messages in the variant's queue at the end (several events per
    #: message when batched), or events the sink received for ``track``.
    delivered: int | None = None
    #: What the library reported lost (Segment's ``on_error``).
    errors: int = 0
    #: Own time per call by area (µs, under cProfile), and eventlib's
    #: functions with the most cumulative time.
    profile: dict[str, float] = field(default_factory=dict)
    profile_top: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def summary(self) -> Summary | None:
        return Summary.of(self.samples_ns) if self.samples_ns else None


@dataclass
class LatencyResult:
    broker: Broker
    rounds: int
    block: int
    figures: dict[str, Figures]
    profile_calls: int = 0

    def available(self, *variants: str) -> bool:
        return all(self.figures[v].summary is not None for v in variants)

    def ratio(self, variant: str, baseline: str, stat: str = "median") -> float:
        """``stat`` of ``variant`` over that of ``baseline`` (NaN when one of
        them was not measured)."""
        if not self.available(variant, baseline):
            return float("nan")
        mine, theirs = self.figures[variant].summary, self.figures[baseline].summary
        return float(getattr(mine, stat) / getattr(theirs, stat))

    def round_ratios(self, variant: str, baseline: str) -> list[float]:
        pairs = zip(
            self.figures[variant].round_medians, self.figures[baseline].round_medians, strict=False
        )
        return [mine / theirs for mine, theirs in pairs]


def run(
    broker: Broker,
    sink: Sink,
    rounds: int,
    block: int,
    warmup: int,
    profile_calls: int,
    workdir: Path,
) -> LatencyResult:
    """Interleave blocks of every variant on ``broker``; profile
    ``profile_calls`` calls of each of :data:`PROFILED` when not zero."""
    queues = {variant: unique_queue(variant.replace(":", "-")) for variant in VARIANTS}
    callers: dict[str, CallerProcess] = {}
    result = LatencyResult(broker, rounds, block, {}, profile_calls)
    try:
        sink_before = sink.counts()["events"]
        for variant in VARIANTS:
            callers[variant] = caller = CallerProcess(
                variant, broker.url, queues[variant], workdir, sink=sink.url
            )
            result.figures[variant] = Figures(unavailable=caller.unavailable)
        live = [v for v in VARIANTS if callers[v].unavailable is None]
        for variant in live:
            callers[variant].ask(f"time {warmup}")
        for number in range(rounds):
            for variant in rotated(live, number):
                answer = callers[variant].ask(f"time {block}")
                figures = result.figures[variant]
                figures.samples_ns += answer["samples"]
                figures.round_medians.append(median(answer["samples"]) / 1000)
                figures.settle_ns.append(answer["settle_ns"])
        if profile_calls:
            for variant in PROFILED:
                if variant in live:
                    answer = callers[variant].ask(f"profile {profile_calls}")
                    result.figures[variant].profile = answer["areas"]
                    result.figures[variant].profile_top = [tuple(t) for t in answer["top"]]
        for variant in live:
            done = callers.pop(variant).finish()
            figures = result.figures[variant]
            figures.calls, figures.errors = done["calls"], done["errors"]
            if variant == "track":
                figures.delivered = sink.counts()["events"] - sink_before
            else:
                figures.delivered = queue_size(broker, queues[variant])
        return result
    finally:
        for caller in callers.values():
            caller.kill()
        delete_queues(broker, list(queues.values()))


# ------------------------------------------------------ the first call ---


@dataclass
class FirstCall:
    """The first call of fresh processes, one variant."""

    unavailable: str | None = None
    #: The first call of each process, in the caller, ns.
    first_ns: list[int] = field(default_factory=list)
    #: Seconds from starting each process to its first answer.
    startup_s: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return median(self.first_ns) / 1e6 if self.first_ns else float("nan")


def first_calls(broker: Broker, sink: Sink, processes: int, workdir: Path) -> dict[str, FirstCall]:
    """Start ``processes`` fresh caller processes per variant of
    :data:`FIRST_CALLS` (their order rotating), each timing its first call
    after ``configure()``, then publishing it and exiting."""
    queue = unique_queue("first-call")
    found = {variant: FirstCall() for variant in FIRST_CALLS}
    try:
        for number in range(processes):
            for variant in rotated(FIRST_CALLS, number):
                if found[variant].unavailable is not None:
                    continue
                caller = CallerProcess(variant, broker.url, queue, workdir, sink=sink.url)
                try:
                    if caller.unavailable is not None:
                        found[variant].unavailable = caller.unavailable
                        continue
                    caller.finish()
                finally:
                    caller.kill()
                found[variant].first_ns.append(caller.first_call_ns)
                found[variant].startup_s.append(caller.startup_s)
    except BenchError as error:
        for figures in found.values():
            if not figures.first_ns and figures.unavailable is None:
                figures.unavailable = f"failed: {error}"
    finally:
        delete_queues(broker, [queue])
    return found


# --------------------------------------------------- eventlib's own work ---


#: eventlib's own steps in ``log()``, then two things Celery does for every
#: message, for eventlib's arguments (name, payload text) and the bare one's
#: (the data dict).
LOG_STEPS = {
    "find_event": "eventlib: `find_event(name)` (cached)",
    "construct": "eventlib: `Order(data)`: a copy of the data, a random UUID, `datetime.now()`",
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
