"""What a broker outage costs ``log()``: the first call against a broker that
accepts connections and never answers, then the calls that go straight to
the spool, against ``log()`` to a live broker in the same run.

    .venv/bin/python -m benchmarks.spooling            # what ``make bench`` runs
    .venv/bin/python -m benchmarks.spooling --quick    # a smoke run

The broker that never answers is a socket of this process that listens and
never reads: the kernel completes the TCP handshake, so the client connects
and then waits for a reply that never comes, as with a hung Redis.  Each
round logs ``--calls`` events to the live broker and as many to the spool
(the circuit is open), one by one, interleaved by blocks, and the report
gives the medians and their ratio.  The tables replace the ``spooling``
block of ``docs/benchmarks.md``; the text around it is written by hand.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import eventlib
from eventlib import conf
from eventlib.sending import spool_status

from .common import (
    DATA,
    ORDER,
    configure_dispatch,
    delete_queues,
    find_brokers,
    median,
    percentile,
    unique_queue,
)
from .report import PAGE, machine_facts, write_blocks

#: The block of ``docs/benchmarks.md`` this script rewrites.
BLOCK = "spooling"
TIMEOUT = 0.5  # broker_timeout, seconds


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def timed_calls(count: int) -> list[float]:
    """Seconds each of ``count`` ``log()`` calls took."""
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        eventlib.log(ORDER, DATA)
        timings.append(time.perf_counter() - started)
    return timings


@dataclass
class Figures:
    broker: str
    first_call: float
    live: list[float]
    spooled: list[float]
    spooled_count: int
    rounds: int


def measure(
    broker_url: str, broker_label: str, queue: str, calls: int, rounds: int, spool: Path
) -> Figures:
    """Alternate blocks of ``log()`` to the live broker and to the spool."""
    live: list[float] = []
    spooled: list[float] = []
    with silent_port() as port:
        silent = f"redis://127.0.0.1:{port}/0"
        common = {"apps": ["benchmarks.benchapp"], "queue": queue, "spool_path": str(spool)}
        # Direct dispatch: the caller itself meets the silent broker.
        configure_dispatch(
            "direct", broker_url=silent, broker_timeout=TIMEOUT, spool_probe_interval=3600, **common
        )
        first_call = timed_calls(1)[0]
        for _ in range(rounds):
            # A new configuration drops the app; configuring the silent
            # broker again would cost a timeout, so the circuit is tripped
            # once and the spool block runs right after it.
            configure_dispatch("direct", broker_url=broker_url, broker_timeout=TIMEOUT, **common)
            timed_calls(10)  # connect, warm up
            live += timed_calls(calls)
            configure_dispatch("direct", broker_url=silent, spool_probe_interval=3600, **common)
            timed_calls(1)  # trips the circuit: one timeout
            spooled += timed_calls(calls)
        spooled_count = spool_status().count
    conf.reset()
    return Figures(broker_label, first_call, live, spooled, spooled_count, rounds)


def render(figures: Figures, seconds: float, command: str, facts: list[tuple[str, str]]) -> str:
    """The tables of the ``spooling`` block of ``docs/benchmarks.md``."""
    live = sorted(figures.live)
    spooled = sorted(figures.spooled)
    first = f"{figures.first_call:.3f} ({figures.first_call / TIMEOUT:.2f}x `broker_timeout`)"
    live_us = f"{median(live) * 1e6:.1f} µs | {percentile(live, 0.99) * 1e6:.1f} µs"
    spooled_us = f"{median(spooled) * 1e6:.1f} µs | {percentile(spooled, 0.99) * 1e6:.1f} µs"
    rows = "\n".join(f"| {name} | {value} |" for name, value in facts)
    return f"""```sh
{command}
```

It took {seconds:.0f} seconds.

|  |  |
| --- | --- |
{rows}

`broker_timeout` = {TIMEOUT} s; {len(live)} calls of each kind, in blocks of
{len(live) // figures.rounds}, alternating; the live broker is {figures.broker}.

| | seconds |
| --- | --- |
| first call, silent broker | {first} |

| `log()` | median | 99th percentile |
| --- | --- | --- |
| to {figures.broker} | {live_us} |
| to the spool (circuit open) | {spooled_us} |
| ratio, spool / live broker | {median(spooled) / median(live):.2f} | |

Events in the spool at the end: {figures.spooled_count}, of
{1 + figures.rounds + len(spooled)} spooled (the first call, the call of each
round that tripped the circuit, and the timed ones)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spooling", description=__doc__)
    parser.add_argument("--output", type=Path, default=PAGE)
    parser.add_argument("--calls", type=int, default=500, help="calls per block")
    parser.add_argument("--rounds", type=int, default=6, help="blocks of each kind")
    parser.add_argument("--quick", action="store_true", help="50 calls, 2 rounds")
    args = parser.parse_args(argv)
    calls, rounds = (50, 2) if args.quick else (args.calls, args.rounds)
    started = time.monotonic()
    facts = list(machine_facts().items())
    with tempfile.TemporaryDirectory(prefix="eventlib-bench-") as workdir:
        [broker] = [b for b in find_brokers(["redis"], Path(workdir)) if b.skipped is None] or [
            b for b in find_brokers(["embedded"], Path(workdir))
        ]
        queue = unique_queue("spooling")
        try:
            figures = measure(
                broker.url, broker.label, queue, calls, rounds, Path(workdir) / "spool.sqlite"
            )
        finally:
            delete_queues(broker, [queue])
    command = "python -m benchmarks.spooling" + (" --quick" if args.quick else "")
    section = render(figures, time.monotonic() - started, command, facts)
    write_blocks(args.output, {BLOCK: section})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
