"""The whole flow on one machine: ``eventlib.log()`` in this process, a
Celery worker in another, a broker between them.

Run it with ``make demo``.  The broker is eventlib's default, embedded one
(no server needed) unless ``EVENTLIB_BROKER_URL`` names another, for example
``redis://127.0.0.1:6379/0`` or ``amqp://guest:guest@127.0.0.1:5672//``.

The events go to a queue of the run's own, ``eventlib-demo-<random hex>``,
so that no other consumer of the broker (a worker on eventlib's default
queue, another demo) can take them and make them look lost; the demo deletes
that queue, with anything left in it, when it ends.  With ``EVENTLIB_QUEUE``
set, it uses that queue instead and leaves it in place.  The first lines it
prints name the broker and the queue.

It starts a worker, logs a few hundred events, shows progress while the
worker processes them (on a terminal, one line updated in place; otherwise
a line every few seconds), then prints a report: each handler's runs by its
short name, and, for the handler that fails on purpose, where its dead
letters are and the command that lists them.  It exits with status 1 when an
event was lost (not completely processed before the deadline).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from waiting import wait_for  # noqa: E402

import eventlib  # noqa: E402
from eventlib import deadletters  # noqa: E402
from eventlib.brokers import broker_name  # noqa: E402
from eventlib.sending import celery_app  # noqa: E402

FAILURE = re.compile(r"Handler (\S+) failed on event")
#: The handler of examples/shop/events.py that always raises, to show failures.
FAILS_ON_PURPOSE = "email_receipt"
#: Seconds between progress lines when the output is not a terminal.
PROGRESS_EVERY = 5.0


def start_worker(log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "eventlib", "worker", "--loglevel=INFO", "--concurrency=2"]
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (the worker finishes what it is doing), then kill."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def delete_queue(name: str) -> None:
    """Delete the queue ``name`` from the broker, with the messages left in
    it (on the embedded broker, which keeps a queue's name, empty it).
    Prints a warning instead of raising when the broker cannot do it."""
    app = celery_app()
    try:
        with app.connection_for_write() as connection:
            # The queue as the worker declared it; declared again first,
            # because kombu's Redis transport deletes only the queues its
            # channel knows.
            queue = app.amqp.queues[name].bind(connection.default_channel)
            queue.declare()
            queue.delete()
    except Exception as error:  # the demo's report stands without it
        print(f"demo: could not delete the queue {name}: {error}", file=sys.stderr)


def wait_until_ready(worker: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    def ready() -> bool:
        if worker.poll() is not None:
            sys.exit(f"demo: the worker exited with {worker.returncode}:\n{log_path.read_text()}")
        return "ready." in log_path.read_text()

    try:
        wait_for(ready, timeout, "the worker", interval=0.1)
    except TimeoutError:
        sys.exit(f"demo: the worker was not ready after {timeout:.0f}s; see {log_path}")


def completed(database: Path, logged: set[str]) -> int:
    """How many of the events this run logged were completely processed
    (events left in the broker by an earlier, interrupted run do not count)."""
    db = sqlite3.connect(database, timeout=60)
    try:
        audited = db.execute("select distinct event_id from runs where handler = 'audit'")
        return len(logged.intersection(event_id for (event_id,) in audited))
    finally:
        db.close()


def handler_runs(database: Path, logged: set[str]) -> Counter[str]:
    """How many times each handler ran for the events this run logged."""
    db = sqlite3.connect(database, timeout=60)
    try:
        rows = db.execute("select event_id, handler from runs").fetchall()
    finally:
        db.close()
    return Counter(handler for event_id, handler in rows if event_id in logged)


class Progress:
    """How many events were processed: on a terminal, one line rewritten in
    place; otherwise (a log, a pipe) a plain line every few seconds and at
    the end, so that no carriage returns end up in a file."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.on_terminal = sys.stdout.isatty()
        self.last_line = 0.0

    def show(self, done: int, *, last: bool = False) -> None:
        if self.on_terminal:
            width = 40
            filled = width * done // self.total
            bar = f"[{'#' * filled}{'.' * (width - filled)}]"
            print(f"\r  processed {bar} {done}/{self.total}", end="\n" if last else "", flush=True)
        elif last or time.monotonic() - self.last_line >= PROGRESS_EVERY:
            self.last_line = time.monotonic()
            print(f"  processed {done}/{self.total}", flush=True)


def short_name(handler: str) -> str:
    """``email_receipt`` for ``shop.events.OrderPlaced.email_receipt``."""
    return handler.rpartition(".")[2]


def print_table(rows: list[tuple[str, str]]) -> None:
    """Rows of a label and a value, the values in one column."""
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}".rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="how many events to log")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for them")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="eventlib-demo-"))
    database = workdir / "shop.sqlite"
    os.environ["SHOP_DATABASE"] = str(database)
    # The failures become dead letters, and an outage would fill a spool:
    # both in the demo's own files unless told otherwise.
    os.environ.setdefault("EVENTLIB_DEAD_LETTER_URL", f"sqlite:///{workdir}/dead-letters.sqlite")
    os.environ.setdefault("EVENTLIB_SPOOL_PATH", str(workdir / "spool.sqlite"))
    os.environ.setdefault("EVENTLIB_APPS", "shop")
    own_queue = not os.environ.get("EVENTLIB_QUEUE")
    if own_queue:
        os.environ["EVENTLIB_QUEUE"] = f"eventlib-demo-{uuid.uuid4().hex[:12]}"
    queue = os.environ["EVENTLIB_QUEUE"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }

    from shop.events import create_tables

    create_tables()
    whose = "the run's own, deleted at the end" if own_queue else "from EVENTLIB_QUEUE"
    print(f"eventlib demo: broker {broker_name(celery_app())}")
    print(f"  queue {queue} ({whose})")
    print(f"  work files in {workdir}")
    worker_log = workdir / "worker.log"
    worker = start_worker(worker_log, env)
    try:
        wait_until_ready(worker, worker_log, timeout=60)
        print("  worker ready; logging events")
        started = time.monotonic()
        started_at = datetime.now(UTC)
        logged: set[str] = set()
        for number in range(options.events):
            if number % 3:
                event_id = eventlib.log("shop.PageViewed", {"path": f"/deals/{number % 7}"})
            else:
                data = {
                    "sku": f"sku-{number % 11}",
                    "quantity": 1 + number % 3,
                    "price": Decimal("9.90"),
                }
                event_id = eventlib.log("shop.OrderPlaced", data)
            logged.add(event_id)
        log_seconds = time.monotonic() - started

        progress = Progress(len(logged))

        def all_processed() -> bool:
            done = completed(database, logged)
            progress.show(done)
            return done >= len(logged)

        remaining = started + options.timeout - time.monotonic()
        with contextlib.suppress(TimeoutError):  # the report says what is missing
            wait_for(all_processed, remaining, "every event", interval=0.02)
        done = completed(database, logged)
        progress.show(done, last=True)
        elapsed = time.monotonic() - started
    finally:
        try:
            stop_worker(worker)
        finally:
            if own_queue:
                delete_queue(queue)

    runs = handler_runs(database, logged)
    failures = Counter(short_name(name) for name in FAILURE.findall(worker_log.read_text()))
    lost = len(logged) - done
    rate = len(logged) / log_seconds
    rows = [
        ("events logged", f"{len(logged)} (in {log_seconds:.2f}s, {rate:.0f}/s)"),
        ("events processed", str(done)),
        ("handlers run", str(sum(runs.values()) + sum(failures.values()))),
        *((f"  ok      {handler}", str(count)) for handler, count in sorted(runs.items())),
        *((f"  failed  {handler}", str(count)) for handler, count in sorted(failures.items())),
        ("events per second", f"{done / elapsed:.0f} end to end"),
        ("events lost", str(lost)),
        ("worker log", str(worker_log)),
    ]
    print("\nReport")
    print_table(rows)
    print_dead_letters(started_at)
    return 1 if lost else 0


def print_dead_letters(since: datetime) -> None:
    """Say that the failures are on purpose, and how to list their dead letters."""
    url = eventlib.conf.get_settings().dead_letter_url
    try:
        count = len(deadletters.list_dead_letters(handler=FAILS_ON_PURPOSE, since=since))
    except Exception as error:  # the report stands without it
        print(f"demo: could not read the dead letters in {url}: {error}", file=sys.stderr)
        return
    command = Path(sys.executable).with_name("eventlib")
    if command.is_relative_to(Path.cwd()):
        command = command.relative_to(Path.cwd())
    print(
        f"\n{FAILS_ON_PURPOSE} fails on purpose (the demo's mail server is down), to show\n"
        f"what becomes of failures: {count} dead letters of this run. List them with:\n"
        f"  EVENTLIB_DEAD_LETTER_URL={shlex.quote(url)} \\\n"
        f"    {command} dead list --handler {FAILS_ON_PURPOSE}"
    )


if __name__ == "__main__":
    sys.exit(main())
