"""One kind of call, made by a process of its own and timed call by call.

    .venv/bin/python -m benchmarks.caller VARIANT --broker-url URL --queue NAME \\
        [--spool PATH] [--sink URL]

``VARIANT`` is a key of :data:`VARIANTS`: ``eventlib.log()`` in one dispatch
mode, Celery's ``delay()`` or eventlib's own ``apply_async()`` of a payload
serialized beforehand, or Segment's analytics-python ``track()`` posting to
the HTTP sink at ``--sink`` (:mod:`benchmarks.sink`).  A process per variant
because a process has one dispatch mode, as in production, and because each
keeps its own background threads (eventlib's publisher, Segment's consumer)
to itself.

The process sets up its variant, times its first call and writes one JSON
line: ``{"first_call_ns": n}``, or ``{"unavailable": reason}`` before it
exits when the installed eventlib refuses the variant's dispatch mode (or
analytics-python is not installed).  Then it reads commands, one per line,
and answers each with one JSON line:

- ``time N``: N calls, each timed; then whatever they left to publish is
  published ("settling": ``eventlib.flush()``, Segment's ``flush()``):
  ``{"samples": [ns, ...], "settle_ns": n}``;
- ``run N``: the same without timing each call: ``{"elapsed_ns": n,
  "settle_ns": n}``;
- ``profile N``: N calls under cProfile: ``{"areas": {area: µs per call},
  "top": [[function, own µs, cumulative µs], ...]}``.

When its input ends it settles, closes and writes ``{"done": true,
"calls": n, "errors": n}``.  A failure writes ``{"error": text}`` and exits
with status 1.  :class:`CallerProcess` drives one from the benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import pstats
import select
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import APP, BARE_DATA, DATA, ORDER, ROOT, BenchError, Unavailable, configure_dispatch

#: Every variant, with the label the report gives it.
VARIANTS = {
    "log:direct": "`log()`, direct",
    "log:background": "`log()`, background",
    "log:spool": "`log()`, spool",
    "track": "Segment `track()`",
    "delay": "Celery `delay()`",
    "apply_async": "`apply_async()` alone",
}
MODES = ("direct", "background", "spool")
#: Seconds a variant may take to publish what a block left behind.
SETTLE_TIMEOUT = 120.0


@dataclass
class Calls:
    """What a variant does: ``call`` is timed; ``settle`` publishes what the
    calls left behind; ``errors`` counts what the library reported lost."""

    call: Callable[[], Any]
    settle: Callable[[], None]
    close: Callable[[], None]
    errors: Callable[[], int] = lambda: 0


def set_up(variant: str, broker_url: str, queue: str, spool: str, sink: str | None) -> Calls:
    """Configure the libraries for ``variant``; raises :class:`Unavailable`."""
    if variant == "track":
        return _track(sink)
    import eventlib

    mode = variant.partition(":")[2] or "direct"
    configure_dispatch(mode, broker_url=broker_url, queue=queue, apps=[APP], spool_path=spool)
    flush = getattr(eventlib, "flush", None)

    def settle() -> None:
        if flush is not None and not flush(timeout=SETTLE_TIMEOUT):
            raise BenchError(f"eventlib.flush() gave up after {SETTLE_TIMEOUT:.0f} s")

    def close() -> None:
        eventlib.configure(broker_url=None)  # closes the app and its connections

    if variant.startswith("log:"):
        return Calls(lambda: eventlib.log(ORDER, DATA), settle, close)
    from eventlib.discovery import find_event
    from eventlib.sending import celery_app
    from eventlib.serialization import serialize_event
    from eventlib.tasks import TASK_NAME

    from .benchapp.tasks import register_bare

    app = celery_app()
    if variant == "delay":
        bare = register_bare(app, queue=queue)
        return Calls(lambda: bare.delay(BARE_DATA), settle, close)
    if variant == "apply_async":
        process_task = app.tasks[TASK_NAME]
        payload = serialize_event(find_event(ORDER)(DATA))
        return Calls(
            lambda: process_task.apply_async(
                args=(ORDER, payload), task_id=str(uuid.uuid4()), queue=queue
            ),
            settle,
            close,
        )
    raise Unavailable(f"unknown variant {variant!r}")


def _track(sink: str | None) -> Calls:
    """Segment's client with its defaults, but for ``host``: the local sink."""
    try:
        from segment.analytics import Client
    except ImportError:
        raise Unavailable("analytics-python is not installed (pip install -e '.[bench]')") from None
    if not sink:
        raise Unavailable("no HTTP sink to post to (--sink)")
    lost: list[int] = []
    client = Client(
        write_key="eventlib-bench",
        host=sink,
        on_error=lambda error, batch: lost.append(len(batch)),
    )

    def call() -> Any:
        return client.track(user_id="customer-48213", event="Order", properties=DATA)

    return Calls(call, client.flush, client.shutdown, lambda: sum(lost))


# ----------------------------------------------------- in the process ---


def _timed(call: Callable[[], Any], count: int) -> list[int]:
    perf = time.perf_counter_ns
    samples = []
    append = samples.append
    gc.collect()
    for _ in range(count):
        start = perf()
        call()
        append(perf() - start)
    return samples


def _settled(calls: Calls) -> int:
    start = time.perf_counter_ns()
    calls.settle()
    return time.perf_counter_ns() - start


def _answer(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.caller", description=__doc__)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--spool", default="eventlib-bench-spool.sqlite")
    parser.add_argument("--sink")
    options = parser.parse_args(argv)
    made = 0
    try:
        try:
            calls = set_up(
                options.variant, options.broker_url, options.queue, options.spool, options.sink
            )
        except Unavailable as reason:
            _answer({"unavailable": str(reason)})
            return
        made += 1
        _answer({"first_call_ns": _timed(calls.call, 1)[0]})
        for line in sys.stdin:
            command, _, number = line.partition(" ")
            count = int(number)
            made += count
            if command == "time":
                samples = _timed(calls.call, count)
                _answer({"samples": samples, "settle_ns": _settled(calls)})
            elif command == "run":
                start = time.perf_counter_ns()
                for _ in range(count):
                    calls.call()
                elapsed = time.perf_counter_ns() - start
                _answer({"elapsed_ns": elapsed, "settle_ns": _settled(calls)})
            elif command == "profile":
                areas, top = profile(calls.call, count)
                calls.settle()
                _answer({"areas": areas, "top": top})
            else:
                raise BenchError(f"unknown command {line!r}")
        calls.settle()
        errors = calls.errors()
        calls.close()
        _answer({"done": True, "calls": made, "errors": errors})
    except Exception as error:
        _answer({"error": "".join(traceback.format_exception_only(error)).strip()})
        sys.exit(1)


# ------------------------------------------------------------ profiling ---

AREAS = (
    ("eventlib", "/eventlib/"),
    ("celery", "/celery/"),
    ("kombu", "/kombu/"),
    ("redis-py", "/redis/"),
    ("py-amqp", "/amqp/"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("analytics-python", "/segment/"),
    ("json", "/json/"),
    ("uuid", "/uuid.py"),
    ("threading, queue", "/threading.py"),
    ("threading, queue", "/queue.py"),
)


def _area(filename: str, function: str) -> str:
    if filename == "~":
        if "socket" in function or "sendall" in function or "recv" in function:
            return "socket I/O"
        if "sqlite3" in function:
            return "SQLite"
        if "lock" in function:
            return "threading, queue"
        return "other built-ins"
    for area, marker in AREAS:
        if marker in filename:
            return area
    return "other stdlib"


def profile(
    call: Callable[[], Any], count: int
) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
    """Own time per call by area, and the eventlib functions with the most
    cumulative time per call (µs, under cProfile, so inflated).  Only the
    calling thread is profiled: a background thread's work is not in it."""
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


# ------------------------------------------------------ from the parent ---


class CallerProcess:
    """A caller process started from the benchmarks.  After the constructor,
    either ``unavailable`` says why the variant cannot run, or
    ``first_call_ns`` is its first call and ``startup_s`` the seconds from
    starting the process to its first answer (interpreter, imports,
    ``configure()``, first call)."""

    def __init__(
        self,
        variant: str,
        broker_url: str,
        queue: str,
        workdir: Path,
        sink: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.variant, self.timeout = variant, timeout
        spool = workdir / f"spool-{uuid.uuid4().hex[:10]}.sqlite"
        argv = [sys.executable, "-m", "benchmarks.caller", variant]
        argv += ["--broker-url", broker_url, "--queue", queue, "--spool", str(spool)]
        if sink:
            argv += ["--sink", sink]
        started = time.perf_counter()
        self.process = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        first = self._read(timeout)
        self.startup_s = time.perf_counter() - started
        self.unavailable: str | None = first.get("unavailable")
        self.first_call_ns: int = first.get("first_call_ns", 0)
        if self.unavailable is not None:
            self.process.wait(timeout=timeout)
            self.kill()  # closes the pipes

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command, return its answer."""
        self.send(command)
        return self.receive()

    def send(self, command: str) -> None:
        """Send one command; :meth:`receive` reads its answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        return self._read(self.timeout)

    def finish(self) -> dict[str, Any]:
        """End the input, return the ``done`` answer once the process exited."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        done = self._read(self.timeout)
        self.process.wait(timeout=self.timeout)
        self.kill()  # closes the pipes
        return done

    def kill(self) -> None:
        """Kill the process if it still runs; close the pipes."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.kill()
            what = "did not answer in time" if not ready else "exited"
            raise BenchError(f"the {self.variant} caller {what}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            self.kill()
            raise BenchError(f"the {self.variant} caller failed: {answer['error']}")
        return answer


if __name__ == "__main__":
    main()
