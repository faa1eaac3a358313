"""Run every benchmark in one run and rewrite ``docs/benchmarks.md``.

    .venv/bin/python -m benchmarks.run            # what ``make bench`` runs
    .venv/bin/python -m benchmarks.run --quick    # a smoke run, smaller counts

Each broker (Redis, RabbitMQ, the embedded SQLite broker) is checked first; one
that cannot be reached is skipped and the report says why.  Nothing here
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

from . import bench_log, bench_process, bench_throughput
from .common import ROOT, BenchError, Counter, find_brokers
from .report import Report, load_average, machine_facts, render


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does; ``make bench`` uses ``FULL``."""

    log_rounds: int
    log_block: dict[str, int]
    log_warmup: int
    profile_calls: int
    messages: dict[str, int]
    throughput_rounds: int
    process_repeats: int
    process_seconds: float


FULL = Sizes(
    log_rounds=10,
    log_block={"redis": 200, "amqp": 200, "embedded": 100},
    log_warmup=200,
    profile_calls=2000,
    messages={"redis": 1500, "amqp": 1500, "embedded": 400},
    throughput_rounds=4,
    process_repeats=15,
    process_seconds=0.1,
)
QUICK = Sizes(
    log_rounds=4,
    log_block={"redis": 50, "amqp": 50, "embedded": 20},
    log_warmup=50,
    profile_calls=200,
    messages={"redis": 200, "amqp": 200, "embedded": 100},
    throughput_rounds=1,
    process_repeats=5,
    process_seconds=0.02,
)


BROKER_KINDS = ("redis", "amqp", "embedded")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report to write"
    )
    parser.add_argument(
        "--brokers",
        default="redis,amqp,embedded",
        help="comma-separated brokers to measure (default: redis,amqp,embedded)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument(
        "--worker-deadline",
        type=float,
        default=180.0,
        help="seconds a worker may take to process its messages (default: 180)",
    )
    options = parser.parse_args(argv)
    sizes = QUICK if options.quick else FULL
    kinds = [kind.strip() for kind in options.brokers.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(BROKER_KINDS))
    if unknown:
        parser.error(f"unknown broker(s) {', '.join(unknown)}: use {', '.join(BROKER_KINDS)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eventlib-bench-") as tmp:
        workdir = Path(tmp)
        report = Report(
            command=".venv/bin/python -m benchmarks.run --quick" if options.quick else "make bench",
            quick=options.quick,
            facts=machine_facts(),
        )
        _run(report, sizes, kinds, workdir, options.worker_deadline)
    report.load_at_end = load_average()
    report.seconds = time.monotonic() - started
    options.output.write_text(render(report))
    print(f"wrote {options.output} ({report.seconds:.0f} s)")


def _run(report: Report, sizes: Sizes, kinds: list[str], workdir: Path, deadline: float) -> None:
    print("checking brokers", flush=True)
    report.brokers = find_brokers(kinds, workdir)
    for broker in report.brokers:
        state = f"skipped: {broker.skipped}" if broker.skipped else f"ok, {broker.version}"
        print(f"  {broker.label}: {state}", flush=True)
    usable = [broker for broker in report.brokers if broker.skipped is None]
    redis = next((b for b in usable if b.kind == "redis"), None)
    try:
        print("3. process() against a plain loop and blinker", flush=True)
        report.process = bench_process.run(sizes.process_repeats, sizes.process_seconds)
        print("1. log() against delay(): eventlib's own work, without a broker", flush=True)
        report.breakdown = bench_log.breakdown()
        print("2. worker throughput: a pool process's work, without a broker", flush=True)
        report.worker_breakdown = bench_throughput.worker_breakdown()
        profiled = next((b for b in usable if b.kind != "embedded"), None) or (
            usable[0] if usable else None
        )
        for broker in usable:
            block = sizes.log_block[broker.kind]
            print(
                f"1. log() against delay() on {broker.label}: "
                f"{sizes.log_rounds} rounds of {block} calls each",
                flush=True,
            )
            report.log.append(
                bench_log.run(
                    broker,
                    sizes.log_rounds,
                    block,
                    sizes.log_warmup,
                    sizes.profile_calls if broker is profiled else 0,
                )
            )
        for broker in usable:
            messages = sizes.messages[broker.kind]
            print(f"2. worker throughput on {broker.label}: {messages} messages", flush=True)
            counter = Counter.for_broker(broker, redis.url if redis else None, workdir)
            try:
                report.throughput.append(
                    bench_throughput.run(
                        broker, counter, messages, sizes.throughput_rounds, workdir, deadline
                    )
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


if __name__ == "__main__":
    main()
