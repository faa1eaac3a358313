"""Run every benchmark in one run and rewrite the generated parts of
``docs/benchmarks.md`` and its chart, ``docs/benchmarks-latency.png``; then
:mod:`benchmarks.spooling` rewrites its own part.

    .venv/bin/python -m benchmarks.run            # what ``make bench`` runs
    .venv/bin/python -m benchmarks.run --quick    # a smoke run, smaller counts

Each broker (Redis, RabbitMQ, the embedded SQLite broker) is checked first; one
that cannot be reached is skipped and the report says why.  A variant that
the installed libraries refuse (a dispatch mode this eventlib does not have,
analytics-python not installed) is reported as not available.  Nothing here
asserts a figure: the targets are read, not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import eventlib
from eventlib import conf

from . import bench_log, bench_process, bench_throughput, chart, spooling
from .common import BenchError, Broker, Counter, find_brokers
from .report import CHART, PAGE, Report, load_average, machine_facts, render, write_blocks
from .sink import Sink


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does; ``make bench`` uses ``FULL``."""

    log_rounds: int
    log_block: dict[str, int]
    log_warmup: int
    profile_calls: int
    first_call_processes: int
    #: Events per round, per broker and side of the throughput benchmark.
    events: dict[str, dict[str, int]]
    throughput_rounds: int
    memory_events: int
    process_repeats: int
    process_seconds: float


FULL = Sizes(
    log_rounds=10,
    log_block={"redis": 200, "amqp": 200, "embedded": 100},
    log_warmup=200,
    profile_calls=2000,
    first_call_processes=5,
    events={
        "redis": {"background": 6000, "direct": 1500, "bare": 1500},
        "amqp": {"background": 6000, "direct": 1500, "bare": 1500},
        "embedded": {"background": 2000, "direct": 400, "bare": 400},
    },
    throughput_rounds=3,
    memory_events=100_000,
    process_repeats=15,
    process_seconds=0.1,
)
QUICK = Sizes(
    log_rounds=4,
    log_block={"redis": 50, "amqp": 50, "embedded": 20},
    log_warmup=50,
    profile_calls=200,
    first_call_processes=1,
    events={
        "redis": {"background": 600, "direct": 200, "bare": 200},
        "amqp": {"background": 600, "direct": 200, "bare": 200},
        "embedded": {"background": 200, "direct": 100, "bare": 100},
    },
    throughput_rounds=1,
    memory_events=3000,
    process_repeats=5,
    process_seconds=0.02,
)


BROKER_KINDS = ("redis", "amqp", "embedded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--output", type=Path, default=PAGE, help="page to write")
    parser.add_argument("--chart", type=Path, default=CHART, help="chart to write")
    parser.add_argument(
        "--brokers",
        default="redis,amqp,embedded",
        help="comma-separated brokers to measure (default: redis,amqp,embedded)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument(
        "--worker-deadline",
        type=float,
        default=300.0,
        help="seconds a worker may take to process its events (default: 300)",
    )
    options = parser.parse_args(argv)
    sizes = QUICK if options.quick else FULL
    kinds = [kind.strip() for kind in options.brokers.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(BROKER_KINDS))
    if unknown:
        parser.error(f"unknown broker(s) {', '.join(unknown)}: use {', '.join(BROKER_KINDS)}")
    started = time.monotonic()
    report = Report(
        command=".venv/bin/python -m benchmarks.run --quick" if options.quick else "make bench",
        quick=options.quick,
        facts=machine_facts(),
    )
    with tempfile.TemporaryDirectory(prefix="eventlib-bench-") as tmp:
        _run(report, sizes, kinds, Path(tmp), options.worker_deadline)
    title = "Per call, in the caller" + (" (a --quick run)" if options.quick else "")
    report.chart_missing = chart.draw(report.latency, options.chart, title)
    report.load_at_end = load_average()
    report.seconds = time.monotonic() - started
    write_blocks(options.output, render(report))
    print(f"wrote {options.output} ({report.seconds:.0f} s)")
    print("the first call and the spool during a broker outage", flush=True)
    spooling.main(["--output", str(options.output), *(["--quick"] if options.quick else [])])


def _run(report: Report, sizes: Sizes, kinds: list[str], workdir: Path, deadline: float) -> None:
    print("checking brokers", flush=True)
    report.brokers = find_brokers(kinds, workdir)
    for broker in report.brokers:
        state = f"skipped: {broker.skipped}" if broker.skipped else f"ok, {broker.version}"
        print(f"  {broker.label}: {state}", flush=True)
    usable = [broker for broker in report.brokers if broker.skipped is None]
    redis = next((b for b in usable if b.kind == "redis"), None)
    try:
        print("process() against a plain loop and blinker", flush=True)
        report.process = bench_process.run(sizes.process_repeats, sizes.process_seconds)
        print("log()'s own steps, without a broker", flush=True)
        report.breakdown = bench_log.breakdown()
        print("a worker's steps per message, without a broker", flush=True)
        report.worker_breakdown = bench_throughput.worker_breakdown()
        with Sink() as sink:
            _latency(report, sizes, usable, sink, workdir)
        for broker in usable:
            _throughput(report, sizes, broker, redis, workdir, deadline)
        if redis is not None:
            print(f"worker memory on {redis.label}: {sizes.memory_events:,} events", flush=True)
            counter = Counter.for_broker(redis, redis.url, workdir)
            try:
                # At least 250 events/s, whatever --worker-deadline says.
                patience = max(deadline, sizes.memory_events / 250)
                report.memory = bench_throughput.memory(
                    redis, counter, sizes.memory_events, workdir, patience
                )
            finally:
                counter.close()
    except BenchError as error:
        report.aborted = str(error)
        print(f"aborted: {error}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            eventlib.configure(broker_url=None)
        conf.reset()


def _latency(report: Report, sizes: Sizes, usable: list[Broker], sink: Sink, workdir: Path) -> None:
    profiled = next((b for b in usable if b.kind != "embedded"), None) or (
        usable[0] if usable else None
    )
    for broker in usable:
        block = sizes.log_block[broker.kind]
        print(
            f"per call on {broker.label}: {sizes.log_rounds} rounds of {block} calls",
            flush=True,
        )
        report.latency.append(
            bench_log.run(
                broker,
                sink,
                sizes.log_rounds,
                block,
                sizes.log_warmup,
                sizes.profile_calls if broker is profiled else 0,
                workdir,
            )
        )
        print(
            f"first call on {broker.label}: {sizes.first_call_processes} processes each",
            flush=True,
        )
        report.first_calls[broker.kind] = bench_log.first_calls(
            broker, sink, sizes.first_call_processes, workdir
        )


def _throughput(
    report: Report,
    sizes: Sizes,
    broker: Broker,
    redis: Broker | None,
    workdir: Path,
    deadline: float,
) -> None:
    events = sizes.events[broker.kind]
    print(f"worker throughput on {broker.label}", flush=True)
    counter = Counter.for_broker(broker, redis.url if redis else None, workdir)
    try:
        report.throughput.append(
            bench_throughput.run(
                broker, counter, events, sizes.throughput_rounds, workdir, deadline
            )
        )
    finally:
        counter.close()


if __name__ == "__main__":
    main()
