"""The dispatch modes (docs/deployment.md) against real brokers: events
logged in ``multiprocessing`` children and in a preloaded gunicorn app, at a
normal exit, on SIGTERM and on ``kill -9``, across a broker killed
mid-stream, by many threads at once; and batches on a real worker, with a
failing handler and beside the single-event task.

Where nothing is processed, the tests take the messages off the queue
(:func:`take_event_ids`) and count the events they carry; where handlers
run, a real ``eventlib worker`` processes them.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from celery import Celery

import eventlib
from eventlib import deadletters, metrics
from eventlib.conf import get_settings
from eventlib.discovery import find_event
from eventlib.sending import PROCESS_TASK, spool_status
from eventlib.serialization import serialize_event
from eventlib.spool import BATCH

from ..http_server import Loopback
from .support import APP_SOURCE, Project, Worker, take_event_ids, wait_for
from .test_outage import BusyLoggers, PrivateRedis, command_environment, flush

#: Events of the test app beside those of support.py: ``Tick`` has one
#: handler that records its run; ``Order`` ships then bills, and its
#: shipping fails for an order whose data says ``fail``.
MODES_SOURCE = """

class Tick(eventlib.BaseEvent):
    @eventlib.handler
    def count(self):
        record(self, "tick")


class Order(eventlib.BaseEvent):
    @eventlib.handler
    def ship(self):
        if self.data.get("fail"):
            raise RuntimeError(f"cannot ship {self.id}")
        record(self, "ship")

    @eventlib.handler
    def bill(self):
        record(self, "bill")
"""

#: A spooled batch a killed process claimed stays claimed this long (a
#: minute, ``LEASE_SECONDS``, in production): the loggers killed by the
#: tests write this shorter claim into the spool file, where `eventlib spool
#: flush` reads it.
KILLED_LEASE_SECONDS = 3.0


def write_shop(isolation: Any) -> None:
    isolation.write("shop/events.py", APP_SOURCE + MODES_SOURCE)


@pytest.fixture
def shop(isolation, project) -> Project:
    """The test app with its extra events, configured in the test process."""
    write_shop(isolation)
    project.configure_here()
    return project


# ------------------------------------------- processes that log, then end ---


LOGGER_SOURCE = """
    import mmap
    import os
    import signal
    import sys
    import time

    import eventlib
    import eventlib.spool
    from eventlib import metrics

    ids_path, count, pause, ending = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    eventlib.spool.LEASE_SECONDS = float(sys.argv[5])
    # Each id goes to a line of a file mapped in memory as soon as log()
    # returns it: the kernel keeps what was written when the process is
    # killed, and the kill follows the last log() at once.
    LINE = 64
    with open(ids_path, "w+b") as ids_file:
        ids_file.truncate(LINE * (count + 1))
        lines = mmap.mmap(ids_file.fileno(), 0)
    lines[:] = b" " * len(lines)
    for n in range(count):
        event_id = eventlib.log("shop.Tick", {"n": n}).encode()
        lines[LINE * (n + 1) : LINE * (n + 1) + len(event_id)] = event_id
        if pause:
            time.sleep(pause)
    published = str(metrics.snapshot()["published"]).encode()
    lines[: len(published)] = published
    if ending == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    elif ending == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
"""


class Logged(NamedTuple):
    """What a logger process did."""

    #: The ids its ``log()`` calls returned, in order.
    ids: list[str]
    #: How many events the broker had taken when the last ``log()`` returned.
    published_at_the_end: int
    returncode: int
    stderr: str


def run_logger(
    project: Project,
    tmp_path: Path,
    count: int,
    ending: str,
    *,
    pause: float = 0.0,
    **settings: str,
) -> Logged:
    """A process that logs ``count`` events of ``shop.Tick``, ``pause``
    seconds apart, with the project's settings and ``settings``
    (``dispatch="spool"``: ``EVENTLIB_DISPATCH=spool``), then at once
    returns (``ending="exit"``), or sends itself SIGTERM (``"sigterm"``) or
    SIGKILL (``"sigkill"``)."""
    script = tmp_path / "logger.py"
    script.write_text(textwrap.dedent(LOGGER_SOURCE))
    ids_path = tmp_path / f"logged-{ending}.txt"
    env = command_environment(project)
    env.update({f"EVENTLIB_{name.upper()}": value for name, value in settings.items()})
    arguments = [str(ids_path), str(count), str(pause), ending, str(KILLED_LEASE_SECONDS)]
    done = subprocess.run(
        [sys.executable, str(script), *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ids_path.exists(), f"the logger exited with {done.returncode}:\n{done.stderr}"
    published, *ids = ids_path.read_text().split()
    assert len(set(ids)) == count, done.stderr
    return Logged(ids, int(published), done.returncode, done.stderr)


def flush_what_the_killed_process_spooled(project: Project) -> int:
    """Once the claim a killed process may have left on spooled events has
    expired, `eventlib spool flush`; return how many it published."""
    wait_for(
        lambda: (spool_status().held_until or 0) < time.time(),
        KILLED_LEASE_SECONDS + 30,
        "the killed process's claim on spooled events to expire",
    )
    flushed = flush(project)
    assert flushed.returncode == 0, flushed.stderr
    published = int(flushed.stdout.split()[1])  # "published N spooled events"
    assert spool_status().count == 0
    return published


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.parametrize("count", [1, 5000])
@pytest.mark.parametrize("ending", ["exit", "sigterm"])
def test_a_process_that_exits_or_gets_sigterm_publishes_every_event_it_logged(
    shop, tmp_path, broker, queue, ending, count
):
    """One event, or 5,000 in a burst, logged in the background mode, then
    the process returns from its script, or sends itself SIGTERM, at once:
    the events still in memory are published by the flush at exit (not
    left in the spool), and SIGTERM still ends the process as SIGTERM
    does."""
    logged = run_logger(shop, tmp_path, count, ending)

    expected_status = 0 if ending == "exit" else -signal.SIGTERM
    assert logged.returncode == expected_status, logged.stderr
    # Not all published while logging: the end had some left to flush.
    assert logged.published_at_the_end < len(logged.ids)
    assert spool_status().count == 0, logged.stderr
    delivered = take_event_ids(broker, queue, len(logged.ids), timeout=60, until_empty=True)
    assert sorted(delivered) == sorted(logged.ids)  # all of them, each once
    print(
        f"{ending}: {len(logged.ids) - logged.published_at_the_end} of {len(logged.ids)} "
        "events were not published yet when the last log() returned; all were delivered"
    )


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_kill_9_in_the_spool_mode_loses_no_event(shop, tmp_path, broker, queue):
    """A process logs 2,000 events in the spool mode, the broker up, and
    kills itself with SIGKILL right after the last log() returned; `eventlib
    spool flush` publishes what it had not.  Every event is delivered, only
    a batch the process published but had not yet removed from the spool
    twice."""
    logged = run_logger(shop, tmp_path, 2000, "sigkill", dispatch="spool")

    assert logged.returncode == -signal.SIGKILL, logged.stderr
    flushed = flush_what_the_killed_process_spooled(shop)
    delivered = take_event_ids(broker, queue, len(logged.ids), timeout=60, until_empty=True)
    twice = len(delivered) - len(set(delivered))
    figures = (
        f"spool mode, kill -9: {len(logged.ids)} events logged, {logged.published_at_the_end} "
        f"published when the last log() returned, {flushed} by `eventlib spool flush` "
        f"afterwards, {twice} delivered twice"
    )
    print(figures)
    assert set(delivered) == set(logged.ids), figures  # none lost, none unknown
    assert twice <= BATCH, figures


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.parametrize(
    ("count", "pause", "buffer_size"),
    [(5000, 0.0, 1000), (2000, 0.0005, 1000), (12_000, 0.0, 10_000)],
    ids=["burst", "paced", "burst-default-buffer"],
)
def test_kill_9_in_the_background_mode_loses_at_most_the_buffer(
    shop, tmp_path, broker, queue, count, pause, buffer_size
):
    """A process logs in the background mode, the broker up, and kills
    itself with SIGKILL right after the last log() returned: a burst larger
    than its buffer (log() outruns the publisher, the buffer fills, the rest
    is spooled in the caller), with a buffer of 1,000 events or the default
    10,000; or 2,000 events half a millisecond apart (a busy service).  What
    the buffer held is lost, what was spooled is published by `eventlib
    spool flush`: the test measures the loss, and fails if it exceeds the
    buffer."""
    logged = run_logger(shop, tmp_path, count, "sigkill", pause=pause, buffer_size=str(buffer_size))

    assert logged.returncode == -signal.SIGKILL, logged.stderr
    flushed = flush_what_the_killed_process_spooled(shop)
    delivered = take_event_ids(broker, queue, 0, timeout=60, until_empty=True)
    lost = len(set(logged.ids) - set(delivered))
    figures = (
        f"background mode, kill -9 after {count} events {pause * 1000:g} ms apart: "
        f"{lost} lost (buffer_size {buffer_size}); {logged.published_at_the_end} "
        f"published when the last log() returned, {flushed} spooled and published by "
        f"`eventlib spool flush` afterwards, {len(delivered) - len(set(delivered))} "
        "delivered twice"
    )
    print(figures)
    assert set(delivered) <= set(logged.ids), figures
    assert lost <= buffer_size, figures


# ----------------------------------------------------------------- forks ---


def log_ticks_and_end(results: Any, count: int) -> None:
    """A ``multiprocessing`` child: log, report the ids, return (no flush)."""
    results.put([eventlib.log("shop.Tick", {"n": n}) for n in range(count)])


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_events_logged_in_multiprocessing_children_are_delivered_once(shop, broker, queue):
    """Four children forked by ``multiprocessing`` (after the parent's
    publisher thread started) log 500 events each in the background mode
    and return at once: the flush when a child ends delivers them."""
    first = eventlib.log("shop.Tick", {"n": "parent"})
    assert eventlib.flush(timeout=10)  # the parent's publisher runs

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [context.Process(target=log_ticks_and_end, args=(results, 500)) for _ in range(4)]
    try:
        for child in children:
            child.start()
        ids = [first]
        for _ in children:
            ids.extend(results.get(timeout=60))
        for child in children:
            child.join(60)
            assert child.exitcode == 0
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()

    delivered = take_event_ids(broker, queue, len(ids), timeout=60, until_empty=True)
    assert sorted(delivered) == sorted(ids)  # all of them, each once


TICKING_APP = """
    import json
    import os

    import eventlib

    # Imported by gunicorn's master (--preload): this starts its publisher
    # thread before it forks the workers.
    PRELOADED = eventlib.log("shop.Tick", {"n": "preloaded"})


    def application(environ, start_response):
        count = int(environ["PATH_INFO"].strip("/") or 1)
        ids = [eventlib.log("shop.Tick", {"n": n}) for n in range(count)]
        body = json.dumps({"ids": ids, "pid": os.getpid(), "preloaded": PRELOADED}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
"""


class Gunicorn(NamedTuple):
    """A running gunicorn: its master process, its address, its log."""

    process: subprocess.Popen[bytes]
    server: Loopback
    log: Path


@pytest.fixture
def preloaded_gunicorn(shop, isolation, tmp_path) -> Iterator[Gunicorn]:
    """gunicorn serving :data:`TICKING_APP` with ``--preload`` and two
    synchronous workers, on a socket listening before it starts (so that
    requests wait in its backlog until a worker is up); killed at the end
    if the test has not stopped it."""
    isolation.write("ticking.py", TICKING_APP)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.set_inheritable(True)
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                f"--bind=fd://{listener.fileno()}",
                "--preload",
                "--workers=2",
                "--graceful-timeout=30",
                "--log-level=info",
                "--no-control-socket",
                "ticking:application",
            ],
            cwd=tmp_path,
            env=command_environment(shop),
            pass_fds=(listener.fileno(),),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Loopback("127.0.0.1", listener.getsockname()[1])
    listener.close()  # gunicorn has its own copy
    try:
        yield Gunicorn(process, server, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_a_preloaded_gunicorn_app_delivers_every_event_of_its_workers(
    preloaded_gunicorn, broker, queue
):
    """200 requests over loopback, four at a time, to two workers forked
    from a master that had logged; then four requests that log 500 events
    each, and gunicorn is stopped gracefully (SIGTERM to the master) as soon
    as they are answered: every event is delivered, once."""
    gunicorn = preloaded_gunicorn

    def get(path: str) -> dict[str, Any]:
        reply = gunicorn.server.request("GET", path)
        assert reply.status == 200, reply.body
        return reply.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=4) as clients:
        answers = list(clients.map(get, ["/1"] * 200))
        answers += list(clients.map(get, ["/500"] * 4))
    gunicorn.process.send_signal(signal.SIGTERM)
    assert gunicorn.process.wait(timeout=60) == 0, gunicorn.log.read_text()
    # Published, not left for a later `eventlib spool flush`.
    assert spool_status().count == 0, gunicorn.log.read_text()

    pids = {answer["pid"] for answer in answers}
    assert len(pids) == 2 and gunicorn.process.pid not in pids  # both forked workers
    [preloaded] = {answer["preloaded"] for answer in answers}
    expected = [preloaded, *(event_id for answer in answers for event_id in answer["ids"])]
    delivered = take_event_ids(broker, queue, len(expected), timeout=60, until_empty=True)
    assert sorted(delivered) == sorted(expected)  # all of them, each once


# ------------------------------------------- the broker killed mid-stream ---


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_shop(isolation, tmp_path, private_redis) -> Iterator[Project]:
    """The test app on the private Redis, configured in the test process."""
    write_shop(isolation)
    project = Project(isolation, tmp_path, private_redis.url, "eventlib")
    project.configure_here()
    yield project
    project.close()


@pytest.mark.parametrize("mode", ["background", "spool"])
def test_a_broker_killed_mid_stream_loses_no_event(private_shop, private_redis, mode):
    """Four threads call ``log()``, each a millisecond after its last call
    returned, while a private Redis is killed (SIGKILL), stays down for a
    second and until 300 events wait in the spool, and comes back; they go
    on until the publisher has published what was spooled and 300 events
    more, then ``flush()``.  Every event ``log()`` returned an id for
    reaches the queue; one twice only if the publisher had it in flight
    when Redis died (a batch Redis stored without the publisher seeing the
    answer, then spooled and published again)."""
    eventlib.configure(broker_timeout=0.5, spool_probe_interval=0.5, dispatch=mode)
    before = metrics.snapshot()
    loggers = BusyLoggers(threads=4, pause=0.001)
    loggers.start()
    try:
        loggers.wait_until(
            lambda: metrics.snapshot()["published"] - before["published"] >= 300,
            60,
            "300 events to be published",
        )
        private_redis.kill()
        killed = time.monotonic()
        # Down long enough for the publisher to find it still down twice.
        loggers.wait_until(
            lambda: spool_status().count >= 300 and time.monotonic() - killed > 1.0,
            60,
            "300 events to wait in the spool",
        )
        private_redis.start()
        outage = time.monotonic() - killed
        backlog = spool_status().count
        published = metrics.snapshot()["published"]
        # flush() does not wait for the end of an outage: the publisher
        # must have found the broker back first.
        loggers.wait_until(
            lambda: metrics.snapshot()["published"] - published >= backlog + 300,
            60,
            "the spooled events and 300 more to be published after the restart",
        )
    finally:
        loggers.stop()
    assert eventlib.flush(timeout=60)
    after = metrics.snapshot()

    ids = [call.event_id for call in loggers.calls]
    delivered = take_event_ids(private_redis.url, "eventlib", len(ids), 60, until_empty=True)
    twice = Counter(delivered) - Counter(set(delivered))
    batch_size = get_settings().batch_size
    figures = (
        f"{mode} mode: {len(ids)} events logged, {after['spooled'] - before['spooled']} "
        f"spooled over a {outage:.1f} s outage, {sum(twice.values())} delivered twice"
    )
    print(figures)
    assert set(delivered) == set(ids), figures  # none lost, none unknown
    assert max(Counter(delivered).values()) <= 2, figures
    assert sum(twice.values()) <= 2 * batch_size, figures


# --------------------------------------------------- on a real worker ---


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_sixteen_threads_logging_at_once_get_each_event_processed_once(shop):
    """16 threads log 200 events each at the same instant in the background
    mode; one worker processes every event exactly once, from batches."""
    worker = shop.start_worker()
    start = threading.Barrier(16)

    def log_ticks(number: int) -> list[str]:
        start.wait(timeout=30)
        return [eventlib.log("shop.Tick", {"n": f"{number}-{n}"}) for n in range(200)]

    with ThreadPoolExecutor(max_workers=16) as threads:
        ids = [event_id for logged in threads.map(log_ticks, range(16)) for event_id in logged]
    assert eventlib.flush(timeout=60)

    assert len(set(ids)) == 16 * 200
    wait_for(lambda: shop.records.count("tick") >= len(ids), 120, "every event to be processed")
    assert shop.records.runs_per_event("tick") == dict.fromkeys(ids, 1)
    assert "Task eventlib batch: " in worker.log  # a batch, by its shadow name


def received_alone(worker: Worker, event_id: str) -> bool:
    """Whether the event came to ``worker`` as a message of its own (the
    task ``eventlib.process``, whose id is the event's)."""
    return f"Task {PROCESS_TASK}[{event_id}] received" in worker.log


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_failing_handler_in_a_batch_stops_no_other_event_and_gets_a_dead_letter(shop):
    """300 orders logged in a burst in the background mode, every 50th of
    which fails to ship: the worker processes them in batches; each failure
    becomes a dead letter and the order is still billed, every other order
    of its batch shipped and billed, each once."""
    worker = shop.start_worker()

    ids = [eventlib.log("shop.Order", {"n": n, "fail": n % 50 == 25}) for n in range(300)]
    assert eventlib.flush(timeout=60)
    failing = ids[25::50]

    wait_for(lambda: shop.records.count("bill") >= len(ids), 120, "every order to be billed")
    assert shop.records.runs_per_event("bill") == dict.fromkeys(ids, 1)
    shipped = [event_id for event_id in ids if event_id not in failing]
    assert shop.records.runs_per_event("ship") == dict.fromkeys(shipped, 1)
    letters = wait_for(
        lambda: (found := deadletters.list_dead_letters()) and len(found) >= len(failing) and found,
        60,
        f"{len(failing)} dead letters",
    )
    assert sorted(letter.event_id for letter in letters) == sorted(failing)
    for letter in letters:
        assert letter.handler == "shop.events.Order.ship"
        assert letter.reason == f"RuntimeError: cannot ship {letter.event_id}"
        assert letter.attempts == 1
    # The failures came in batches, with other orders.
    assert "Task eventlib batch: " in worker.log  # a batch, by its shadow name
    in_batches = [event_id for event_id in failing if not received_alone(worker, event_id)]
    print(f"{len(in_batches)} of the {len(failing)} failing orders came in batches")
    assert in_batches, "every failing order came alone, none in a batch"


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_the_single_event_task_still_works_beside_batches(shop, broker, queue):
    """Messages of the task ``eventlib.process``, as a producer of an earlier
    eventlib sends them, and the batches of a burst of ``log()`` calls, in
    one queue: one worker processes both, each event once."""
    worker = shop.start_worker()
    producer = Celery("earlier", broker=broker, set_as_current=False)

    def send_the_earlier_way(n: int) -> str:
        event = find_event("shop.Tick")({"n": f"earlier-{n}"})
        producer.send_task(
            PROCESS_TASK,
            args=("shop.Tick", serialize_event(event)),
            task_id=event.id,
            queue=queue,
            serializer="json",
        )
        return event.id

    earlier, logged = [], []
    for n in range(300):
        logged.append(eventlib.log("shop.Tick", {"n": n}))
        if n % 15 == 0:
            earlier.append(send_the_earlier_way(n))
    assert eventlib.flush(timeout=60)
    producer.close()

    ids = earlier + logged
    wait_for(lambda: shop.records.count("tick") >= len(ids), 120, "every event to be processed")
    assert shop.records.runs_per_event("tick") == dict.fromkeys(ids, 1)
    assert all(received_alone(worker, event_id) for event_id in earlier)
    assert "Task eventlib batch: " in worker.log  # a batch, by its shadow name
