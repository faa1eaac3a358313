"""The embedded broker's two candidates under concurrent load: kombu's
filesystem transport against eventlib's SQLite transport (``eventlib+sqlite``).

    .venv/bin/python docs/design/embedded_transports.py    # about 3 minutes

It settled a one-time choice (docs/design/embedded-broker.md has the
findings) and is kept to check it again, for instance after a kombu upgrade;
``make bench`` does not run it.  It prints its tables in Markdown.

Several producer processes publish numbered messages of a few KiB (each with
the SHA-256 of its padding) while several consumer processes take them, all
through kombu itself (``Connection.SimpleQueue``: no Celery worker).  When the
producers are done, the consumers drain the queue until it has stayed empty
for a grace period.  Then the run is counted: messages delivered, lost (a
publish that returned but no consumer got the message), delivered twice,
unreadable (an exception decoding a message in a consumer), corrupt (decoded,
but the checksum does not match), errors raised in producers and consumers,
and the rates.  Two scenarios: producers publishing flat out, and producers
paced so that the consumers keep up (``--paces``).  The runs of the two
transports alternate, each in a new temporary directory.

Then a real Celery worker is started on the filesystem transport with an empty
message file in its queue, to show what a consumer that reads a half-written
file does to a worker.  Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import multiprocessing
import os
import platform
import queue as queue_module
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from kombu import Connection
from kombu.exceptions import DecodeError

from eventlib import conf
from eventlib.brokers import transport_options
from eventlib.embedded import url_for

QUEUE = "bench_embedded"
COMMAND = ".venv/bin/python docs/design/embedded_transports.py"
TRANSPORTS = ("filesystem", "sqlite")
LABELS = {
    "filesystem": "kombu `filesystem://`",
    "sqlite": "eventlib `eventlib+sqlite://`",
}


# ------------------------------------------------------------ transports ---


def connection_spec(transport: str, workdir: Path) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options of one run, in ``workdir``."""
    if transport == "filesystem":
        folder = workdir / "queue"
        folder.mkdir()
        return "filesystem://", {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(workdir / "control"),
            # The SQLite transport polls every 50 ms too; kombu's default is 1 s.
            "polling_interval": 0.05,
        }
    url = url_for(workdir / "broker.sqlite")
    # What eventlib's own Celery app passes (the SQLite busy timeout).
    return url, transport_options(url, conf.Settings().broker_timeout)


def left_in_queue(transport: str, workdir: Path) -> int:
    """Messages still waiting when the consumers have stopped."""
    if transport == "filesystem":
        suffix = f".{QUEUE}.msg"
        return sum(name.endswith(suffix) for name in os.listdir(workdir / "queue"))
    database = sqlite3.connect(workdir / "broker.sqlite")
    try:
        (count,) = database.execute(
            "SELECT count(*) FROM kombu_message WHERE visible = 1"
        ).fetchone()
        return count
    finally:
        database.close()


# ------------------------------------------------------------- processes ---


def _error(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__


def _body(producer: int, seq: int, size: int) -> dict[str, Any]:
    pad = secrets.token_hex(size // 2)
    return {
        "producer": producer,
        "seq": seq,
        "pad": pad,
        "sha256": hashlib.sha256(pad.encode()).hexdigest(),
    }


def producer_main(
    index: int,
    url: str,
    options: dict[str, Any],
    messages: int,
    size: int,
    pace: float,
    barrier: Any,
    results: Any,
) -> None:
    report: dict[str, Any] = {
        "role": "producer",
        "index": index,
        "ok": [],
        "failed": [],
        "failed_after": [],
    }
    errors: collections.Counter[str] = collections.Counter()
    try:
        with Connection(url, transport_options=options) as connection:
            queue = connection.SimpleQueue(QUEUE)
            bodies = [_body(index, seq, size) for seq in range(messages)]
            barrier.wait()
            began = time.monotonic()
            for seq, body in enumerate(bodies):
                if pace:
                    time.sleep(max(0.0, began + seq / pace - time.monotonic()))
                before = time.monotonic()
                try:
                    queue.put(body, serializer="json")
                except Exception as error:
                    errors[_error(error)] += 1
                    report["failed"].append(seq)
                    report["failed_after"].append(time.monotonic() - before)
                else:
                    report["ok"].append(seq)
            report["finished"] = time.monotonic()
            queue.close()
    except BaseException as error:
        report["crashed"] = _error(error)
    report["errors"] = dict(errors)
    results.put(report)


def consumer_main(
    index: int,
    url: str,
    options: dict[str, Any],
    grace: float,
    barrier: Any,
    producers_done: Any,
    results: Any,
) -> None:
    report: dict[str, Any] = {
        "role": "consumer",
        "index": index,
        "delivered": [],
        "corrupt": 0,
        "failed_after": [],
    }
    unreadable: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    try:
        with Connection(url, transport_options=options) as connection:
            queue = connection.SimpleQueue(QUEUE)
            barrier.wait()
            idle_since: float | None = None
            while True:
                before = time.monotonic()
                try:
                    message = queue.get(block=True, timeout=0.1)
                except queue.Empty:
                    if producers_done.is_set():
                        now = time.monotonic()
                        idle_since = idle_since or now
                        if now - idle_since >= grace:
                            break
                    continue
                except (ValueError, DecodeError) as error:
                    # The transport could not read the message it took
                    # (JSONDecodeError is a ValueError).
                    unreadable[_error(error)] += 1
                    idle_since = None
                    continue
                except Exception as error:
                    errors[_error(error)] += 1
                    report["failed_after"].append(time.monotonic() - before)
                    idle_since = None
                    continue
                idle_since = None
                received = time.monotonic()
                try:
                    body = message.decode()
                    key = (int(body["producer"]), int(body["seq"]))
                    intact = hashlib.sha256(body["pad"].encode()).hexdigest() == body["sha256"]
                except Exception as error:
                    unreadable[_error(error)] += 1
                else:
                    if intact:
                        report["delivered"].append((*key, received))
                    else:
                        report["corrupt"] += 1
                message.ack()
            queue.close()
    except BaseException as error:
        report["crashed"] = _error(error)
    report["unreadable"] = dict(unreadable)
    report["errors"] = dict(errors)
    results.put(report)


# ------------------------------------------------------------------ runs ---


@dataclass
class Run:
    transport: str
    number: int
    #: Messages per second per producer; 0: as fast as it can.
    pace: float
    published: int = 0
    producer_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    delivered: int = 0
    lost: int = 0
    twice: int = 0
    unreadable: collections.Counter[str] = field(default_factory=collections.Counter)
    corrupt: int = 0
    consumer_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    delivered_despite_error: int = 0
    #: How long each publish that raised took, in seconds.
    failed_after: list[float] = field(default_factory=list)
    #: How long each consumer's ``get()`` that raised (but for unreadable
    #: messages) took, in seconds.
    get_failed_after: list[float] = field(default_factory=list)
    left: int = 0
    crashed: list[str] = field(default_factory=list)
    publish_seconds: float = float("nan")
    seconds: float = float("nan")

    @property
    def publish_rate(self) -> float:
        return self.published / self.publish_seconds if self.publish_seconds else float("nan")

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else float("nan")

    @property
    def silent_faults(self) -> int:
        """Messages lost, duplicated or garbled, and processes that died: what
        no exception in a producer tells."""
        return (
            self.lost
            + self.twice
            + sum(self.unreadable.values())
            + self.corrupt
            + len(self.crashed)
        )

    @property
    def faults(self) -> int:
        """All of the above and the exceptions raised by a publish or a
        consumer's ``get()``."""
        return (
            self.silent_faults
            + sum(self.producer_errors.values())
            + sum(self.consumer_errors.values())
        )


def run_once(transport: str, number: int, pace: float, args: argparse.Namespace) -> Run:
    """One run: ``args.producers`` producers publishing ``args.messages`` each
    (at ``pace`` messages/s each, or flat out when 0), ``args.consumers``
    consumers."""
    producers, consumers, deadline = args.producers, args.consumers, args.deadline
    context = multiprocessing.get_context("spawn")
    run = Run(transport, number, pace)
    with tempfile.TemporaryDirectory(prefix="eventlib-bench-transports-") as tmp:
        workdir = Path(tmp)
        url, options = connection_spec(transport, workdir)
        if transport == "sqlite":
            # Create the tables once, before the processes race to.
            with Connection(url, transport_options=options) as connection:
                connection.SimpleQueue(QUEUE).close()
        barrier = context.Barrier(producers + consumers + 1, timeout=deadline)
        producers_done = context.Event()
        results = context.Queue()
        processes = [
            context.Process(
                target=consumer_main,
                args=(i, url, options, args.grace, barrier, producers_done, results),
            )
            for i in range(consumers)
        ] + [
            context.Process(
                target=producer_main,
                args=(i, url, options, args.messages, args.size, pace, barrier, results),
            )
            for i in range(producers)
        ]
        for process in processes:
            process.start()
        barrier.wait()
        started = time.monotonic()
        reports: list[dict[str, Any]] = []
        until = started + deadline
        while len(reports) < len(processes) and time.monotonic() < until:
            with contextlib.suppress(queue_module.Empty):
                reports.append(results.get(timeout=0.5))
            if sum(r["role"] == "producer" for r in reports) == producers:
                producers_done.set()
        for process in processes:
            process.join(timeout=max(0.1, until - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join()
                run.crashed.append(f"{process.name}: still running after {deadline:.0f} s")
            elif process.exitcode:
                run.crashed.append(f"{process.name}: exit code {process.exitcode}")
        run.left = left_in_queue(transport, workdir)
    _count(run, reports, started, producers)
    return run


def _count(run: Run, reports: list[dict[str, Any]], started: float, producers: int) -> None:
    sent: set[tuple[int, int]] = set()
    failed: set[tuple[int, int]] = set()
    finished = []
    seen: collections.Counter[tuple[int, int]] = collections.Counter()
    last = started
    for report in reports:
        if "crashed" in report:
            run.crashed.append(f"{report['role']} {report['index']}: {report['crashed']}")
        if report["role"] == "producer":
            sent.update((report["index"], seq) for seq in report["ok"])
            failed.update((report["index"], seq) for seq in report["failed"])
            run.producer_errors.update(report["errors"])
            run.failed_after += report["failed_after"]
            if "finished" in report:
                finished.append(report["finished"])
        else:
            for producer, seq, received in report["delivered"]:
                seen[(producer, seq)] += 1
                last = max(last, received)
            run.unreadable.update(report["unreadable"])
            run.consumer_errors.update(report["errors"])
            run.get_failed_after += report["failed_after"]
            run.corrupt += report["corrupt"]
    run.published = len(sent)
    run.delivered = len(seen)
    run.twice = sum(count > 1 for count in seen.values())
    run.lost = len(sent - set(seen))
    run.delivered_despite_error = len(failed & set(seen))
    if len(finished) == producers:
        run.publish_seconds = max(finished) - started
    if seen:
        run.seconds = last - started


# ---------------------------------------------------------------- report ---


def _facts() -> dict[str, str]:
    def _version(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "not installed"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPUs": f"{os.cpu_count()} logical",
        "load average (1, 5, 15 min) at start": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "kombu / SQLAlchemy / SQLite": (
            f"{_version('kombu')} / {_version('sqlalchemy')} / {sqlite3.sqlite_version}"
        ),
        "temporary directory": f"{tempfile.gettempdir()} ({_filesystem(tempfile.gettempdir())})",
    }


def _filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown filesystem"
    best = ("", "unknown filesystem")
    real = os.path.realpath(path)
    for mount in mounts:
        point, kind = mount[1], mount[2]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best[0]):
            best = (point, kind)
    return best[1]


def _n(value: int) -> str:
    return f"{value:,}"


def _rate(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"


def _errors(counter: collections.Counter[str]) -> str:
    return _n(sum(counter.values()))


def render(
    runs: list[Run],
    check: WorkerCheck | None,
    facts: dict[str, str],
    command: str,
    args: argparse.Namespace,
    seconds: float,
) -> str:
    total = args.producers * args.messages
    paces = sorted({run.pace for run in runs})
    out = ["```sh", command, "```", "", f"It took {seconds:.0f} seconds.", ""]
    out += ["|  |  |", "| --- | --- |"]
    out += [f"| {key} | {value} |" for key, value in facts.items()]
    out += [
        "",
        f"{args.producers} producers x {args.messages:,} messages ({total:,} a run),"
        f" {args.consumers} consumers, {args.size:,} bytes of padding, a grace of"
        f" {args.grace:g} s; scenarios: {', '.join(_pace(pace) for pace in paces)};"
        f" {args.runs} run{'s' if args.runs != 1 else ''} of each.",
        "",
    ]
    header = [
        "producers",
        "transport",
        "run",
        "published",
        "producer errors",
        "delivered",
        "lost",
        "twice",
        "unreadable",
        "corrupt",
        "consumer errors",
        "left",
        "published/s",
        "delivered/s",
    ]
    out += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in runs:
        row = [
            _pace(run.pace),
            LABELS[run.transport],
            str(run.number),
            _n(run.published),
            _errors(run.producer_errors),
            _n(run.delivered),
            f"**{_n(run.lost)}**" if run.lost else "0",
            _n(run.twice),
            _errors(run.unreadable),
            _n(run.corrupt),
            _errors(run.consumer_errors),
            _n(run.left),
            _rate(run.publish_rate),
            _rate(run.rate),
        ]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out += _totals(runs)
    seen_errors = False
    for transport in TRANSPORTS:
        kinds: collections.Counter[tuple[str, str, str]] = collections.Counter()
        own = [run for run in runs if run.transport == transport]
        for run in own:
            where = _pace(run.pace)
            for role, counter in (
                ("producer", run.producer_errors),
                ("consumer, unreadable", run.unreadable),
                ("consumer", run.consumer_errors),
            ):
                kinds.update({(where, role, k): v for k, v in counter.items()})
            kinds.update({(where, "process", c): 1 for c in run.crashed})
        despite = sum(run.delivered_despite_error for run in own)
        timings = {
            "publishes": sorted(t for run in own for t in run.failed_after),
            "consumers' `get()` calls": sorted(t for run in own for t in run.get_failed_after),
        }
        if kinds or despite:
            if not seen_errors:
                out += ["The exceptions, all runs together:", ""]
                seen_errors = True
            out.append(f"- {LABELS[transport]}:")
            for (where, role, text), count in sorted(kinds.items()):
                out.append(f"  - {where}, {role}: {count:,} x `{text}`")
            for what, seconds in timings.items():
                if seconds:
                    shown = ", ".join(f"{t:.2f}" for t in seconds[:10])
                    more = ", ..." if len(seconds) > 10 else ""
                    out.append(f"  - the {what} that raised took {shown}{more} s")
            if despite:
                out.append(
                    f"  - {despite:,} messages whose publish raised were delivered all the same"
                )
    if seen_errors:
        out.append("")
    if check is not None:
        out += _check_section(check)
    return "\n".join(out).rstrip() + "\n"


def _check_section(check: WorkerCheck) -> list[str]:
    out = [
        f"A Celery worker (`celery -A <app> worker {' '.join(WORKER_OPTIONS)}`) on the",
        "filesystem transport, an empty message file then a valid task message in",
        "its queue folder:",
        "",
    ]
    if check.stopped:
        out += [f"- it exited with code {check.exit_code} after {check.seconds:.1f} s, logging"]
    else:
        out += [f"- it was still running after {check.seconds:.0f} s (stopped then), logging"]
    out += ["", "  ```text", f"  {check.line}", "  ```", ""]
    out += [f"- {check.left} message(s) were left in the queue folder.", ""]
    return out


def _total(runs: list[Run], transport: str, pace: float | None, attribute: str) -> int:
    return sum(
        getattr(run, attribute)
        for run in runs
        if run.transport == transport and (pace is None or run.pace == pace)
    )


def _median_rate(runs: list[Run], transport: str, pace: float) -> float:
    rates = sorted(run.rate for run in runs if run.transport == transport and run.pace == pace)
    return rates[len(rates) // 2] if rates else float("nan")


def _totals(runs: list[Run]) -> list[str]:
    lines = [
        "All runs together:",
        "",
        "| producers | transport | published | lost | twice | unreadable | corrupt"
        " | errors | delivered/s, median |",
        "|" + " --- |" * 9,
    ]
    for pace in sorted({run.pace for run in runs}):
        for transport in TRANSPORTS:
            own = [run for run in runs if run.transport == transport and run.pace == pace]
            if not own:
                continue
            published = _total(runs, transport, pace, "published")
            lost = _total(runs, transport, pace, "lost")
            share = f" ({lost / published:.2%})" if published and lost else ""
            errors = sum(
                sum(run.producer_errors.values()) + sum(run.consumer_errors.values()) for run in own
            )
            row = [
                _pace(pace),
                LABELS[transport],
                _n(published),
                f"**{lost:,}{share}**" if lost else "0",
                _n(_total(runs, transport, pace, "twice")),
                _n(sum(sum(run.unreadable.values()) for run in own)),
                _n(_total(runs, transport, pace, "corrupt")),
                _n(errors),
                _rate(_median_rate(runs, transport, pace)),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


# ----------------------------------------------------- a Celery worker ---

#: The Celery app of the check, written to ``check_app.py`` in a temporary directory.
WORKER_APP = """
import os
from celery import Celery

app = Celery("check_app", broker="filesystem://")
app.conf.broker_transport_options = {
    "data_folder_in": os.environ["CHECK_QUEUE_FOLDER"],
    "data_folder_out": os.environ["CHECK_QUEUE_FOLDER"],
    "control_folder": os.environ["CHECK_CONTROL_FOLDER"],
    "polling_interval": 0.05,
}
"""
WORKER_OPTIONS = ["--pool=solo", "--loglevel=INFO", "--without-mingle", "--without-gossip"]
WORKER_OPTIONS += ["--without-heartbeat"]


@dataclass
class WorkerCheck:
    stopped: bool
    exit_code: int | None
    line: str
    left: int
    seconds: float


def worker_check(timeout: float = 30.0) -> WorkerCheck:
    """Start a Celery worker on the filesystem transport with an empty message
    file, then a valid task message, in its queue; see what it does."""
    with tempfile.TemporaryDirectory(prefix="eventlib-bench-worker-") as tmp:
        folder = Path(tmp, "queue")
        folder.mkdir()
        Path(tmp, "check_app.py").write_text(WORKER_APP)
        env = {
            **os.environ,
            "CHECK_QUEUE_FOLDER": str(folder),
            "CHECK_CONTROL_FOLDER": str(Path(tmp, "control")),
            "PYTHONPATH": tmp,
        }
        send = "import check_app; check_app.app.send_task('check.noop')"
        subprocess.run([sys.executable, "-c", send], cwd=tmp, env=env, check=True, timeout=timeout)
        # Sorted first: kombu's own names start with a millisecond clock.
        (folder / "0_unreadable.celery.msg").touch()
        started = time.monotonic()
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "check_app", "worker", *WORKER_OPTIONS],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = worker.communicate(timeout=timeout)
            stopped = True
        except subprocess.TimeoutExpired:
            worker.terminate()
            output, _ = worker.communicate()
            stopped = False
        seconds = time.monotonic() - started
        left = sum(name.endswith(".celery.msg") for name in os.listdir(folder))
    lines = [line for line in output.splitlines() if line.strip()]
    critical = [line for line in lines if "CRITICAL" in line or "Unrecoverable" in line]
    line = (critical or lines[-1:] or [""])[0]
    # Without the timestamp: "[2024-...: CRITICAL/MainProcess] ..."
    line = "[" + line.partition(": ")[2] if line.startswith("[") else line
    return WorkerCheck(stopped, worker.returncode if stopped else None, line, left, seconds)


def _pace(pace: float) -> str:
    return f"{pace:g} msg/s per producer" if pace else "flat out"


def _summary(run: Run) -> str:
    return (
        f"{run.published} published, {run.delivered} delivered, {run.lost} lost,"
        f" {run.twice} twice, {sum(run.unreadable.values())} unreadable,"
        f" {run.corrupt} corrupt, {sum(run.producer_errors.values())} producer errors,"
        f" {sum(run.consumer_errors.values())} consumer errors, {run.left} left,"
        f" {_rate(run.publish_rate)} published/s, {_rate(run.rate)} delivered/s"
        + (f"; {run.crashed}" if run.crashed else "")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python docs/design/embedded_transports.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per transport (default: 3)")
    parser.add_argument("--producers", type=int, default=4, help="producer processes (4)")
    parser.add_argument("--messages", type=int, default=500, help="messages per producer (500)")
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes (2)")
    parser.add_argument("--size", type=int, default=4096, help="bytes of padding (4096)")
    parser.add_argument(
        "--grace", type=float, default=2.0, help="seconds the drained queue stays empty (2)"
    )
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="seconds a run may take (120)"
    )
    parser.add_argument(
        "--paces",
        default="0,25",
        help="messages per second per producer, one scenario each; 0: flat out (default: 0,25)",
    )
    parser.add_argument(
        "--transports", default=",".join(TRANSPORTS), help="filesystem,sqlite (the default)"
    )
    parser.add_argument(
        "--no-worker-check",
        action="store_true",
        help="skip starting a Celery worker on an unreadable message file",
    )
    args = parser.parse_args(argv)
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    paces = [float(p) for p in args.paces.split(",") if p.strip()]
    if set(transports) - set(TRANSPORTS):
        parser.error(f"unknown transport: use {', '.join(TRANSPORTS)}")
    command = COMMAND + "".join(
        f" --{name} {getattr(args, name)}"
        for name in ("runs", "producers", "messages", "consumers", "size", "grace", "paces")
        if getattr(args, name) != parser.get_default(name)
    )
    facts = _facts()
    began = time.monotonic()
    runs: list[Run] = []
    for number in range(1, args.runs + 1):
        for pace in paces:
            # Alternate, and alternate which goes first.
            for transport in transports if number % 2 else transports[::-1]:
                print(f"{transport}, {_pace(pace)}, run {number}", end="", flush=True)
                run = run_once(transport, number, pace, args)
                runs.append(run)
                print(f": {_summary(run)}", flush=True)
    runs.sort(key=lambda run: (paces.index(run.pace), TRANSPORTS.index(run.transport), run.number))
    facts["load average (1, 5, 15 min) at the end"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    check = None
    if "filesystem" in transports and not args.no_worker_check:
        print("a Celery worker on the filesystem transport, given an unreadable file", end="")
        check = worker_check()
        print(f": {'stopped' if check.stopped else 'kept running'}, {check.line}", flush=True)
    print()
    print(render(runs, check, facts, command, args, time.monotonic() - began))


if __name__ == "__main__":
    main()
