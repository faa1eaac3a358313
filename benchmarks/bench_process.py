"""Benchmark 3: ``eventlib.process()`` with three no-op handlers against a
plain loop over three functions in try/except and blinker's ``Signal.send()``
with three receivers, ``timeit``-style in this process.

``process()`` does more than call handlers: it parses the JSON payload,
decodes tagged values, builds the event, runs ``clean()`` again and returns
a ``ProcessResult``.  To isolate the handler loop without touching the
library, it is also timed with an empty-data payload for an event with the
three handlers and for one with none: the difference is the loop.
"""

from __future__ import annotations

import logging
import timeit
from dataclasses import dataclass
from typing import Any

import blinker

import eventlib
from eventlib.discovery import find_event
from eventlib.serialization import serialize_event

from .common import APP, DATA, median, rotated

logger = logging.getLogger("benchmarks")

THREE = f"{APP}.ThreeHandlers"
NONE = f"{APP}.NoHandlers"


def first(event: Any) -> None:
    pass


def second(event: Any) -> None:
    pass


def third(event: Any) -> None:
    pass


FUNCTIONS = (first, second, third)


def plain_loop(event: Any) -> None:
    """What a hand-written dispatcher does: call each function, log failures."""
    for function in FUNCTIONS:
        try:
            function(event)
        except Exception:
            logger.exception("handler %s failed", function.__name__)


#: (key, label, statement)
VARIANTS = (
    ("process_full", "process(), 3 handlers, 5-key payload", "process(THREE, full)"),
    ("process_empty", "process(), 3 handlers, empty data", "process(THREE, empty)"),
    ("process_none", "process(), no handlers, empty data", "process(NONE, empty_none)"),
    ("plain", "plain loop, 3 functions in try/except", "plain_loop(event)"),
    ("blinker", "blinker Signal.send(), 3 receivers", "signal.send(event)"),
)


@dataclass
class ProcessResult:
    repeats: int
    #: Calls per repeat, per variant.
    numbers: dict[str, int]
    #: Per-call µs of each repeat, per variant.
    times: dict[str, list[float]]
    blinker_version: str

    def median(self, key: str) -> float:
        return median(self.times[key])

    def best(self, key: str) -> float:
        return min(self.times[key])

    @property
    def loop(self) -> float:
        """The handler loop of ``process()``: 3 handlers minus none, both with
        empty data."""
        return self.median("process_empty") - self.median("process_none")


def run(repeats: int, seconds_per_repeat: float) -> ProcessResult:
    eventlib.configure(apps=[APP])
    three_class = find_event(THREE)
    signal = blinker.Signal()
    for function in FUNCTIONS:
        signal.connect(function)
    event = three_class(DATA)
    namespace = {
        "process": eventlib.process,
        "THREE": THREE,
        "NONE": NONE,
        "full": serialize_event(event),
        "empty": serialize_event(three_class({})),
        "empty_none": serialize_event(find_event(NONE)({})),
        "plain_loop": plain_loop,
        "signal": signal,
        "event": event,
    }
    result = eventlib.process(THREE, namespace["full"])
    if len(result.succeeded) != 3:
        raise RuntimeError(f"expected three handlers to run, got {result}")
    timers = {key: timeit.Timer(stmt, globals=namespace) for key, _, stmt in VARIANTS}
    numbers = {}
    for key, timer in timers.items():
        number, took = timer.autorange()
        numbers[key] = max(1, int(number * seconds_per_repeat / took))
    times: dict[str, list[float]] = {key: [] for key in timers}
    for repeat in range(repeats):
        for key in rotated(list(timers), repeat):
            times[key].append(timers[key].timeit(numbers[key]) / numbers[key] * 1e6)
    return ProcessResult(repeats, numbers, times, _version(blinker))


def _version(module: Any) -> str:
    from importlib.metadata import version

    try:
        return version(module.__name__)
    except Exception:
        return "?"
