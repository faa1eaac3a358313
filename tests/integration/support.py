"""Real brokers and real worker processes: the pieces the integration tests
share.

Brokers are found through ``EVENTLIB_TEST_REDIS_URL`` and
``EVENTLIB_TEST_AMQP_URL`` (default: the local services).  A broker that
cannot be reached skips its tests with the reason, unless
``EVENTLIB_REQUIRE_BROKERS=1`` (set by CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from kombu.utils.url import url_to_parts

import eventlib

from ..waiting import wait_for

BROKERS = {
    "redis": ("EVENTLIB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "amqp": ("EVENTLIB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
DEFAULT_PORTS = {"redis": 6379, "amqp": 5672}

#: What a worker writes once it takes messages.
READY = "ready."


def queue_exists(url: str, name: str) -> bool:
    """Whether the Redis or RabbitMQ broker at ``url`` still has the queue
    ``name``: on RabbitMQ the queue itself; on Redis any key naming it (the
    list of its messages, or the binding kombu keeps for it in
    ``_kombu.binding.<exchange>``, which outlives an empty queue)."""
    scheme = url_to_parts(url).scheme.split("+")[0]
    if scheme in ("redis", "rediss"):
        import redis

        client = redis.Redis.from_url(url)
        try:
            return any(True for _ in client.scan_iter(match=f"*{name}*"))
        finally:
            client.close()
    if scheme in ("amqp", "pyamqp", "amqps"):
        from amqp.exceptions import NotFound
        from kombu import Connection

        with Connection(url) as connection:
            try:
                connection.channel().queue_declare(name, passive=True)
            except NotFound:
                return False
            return True
    raise ValueError(f"queue_exists() knows Redis and RabbitMQ, not {url}")


def take_event_ids(
    url: str, queue: str, expected: int, timeout: float, *, until_empty: bool = False
) -> list[str]:
    """Take messages from ``queue`` until they carry ``expected`` events
    (single ones and batches alike) and return their ids, in order; fail
    after ``timeout`` seconds saying how many came.

    With ``until_empty``, go on taking, once ``expected`` events came, until
    the queue is empty, and return every id taken, a duplicate as often as
    it came: for a queue whose producers have all returned or died, so that
    what they published is there already.
    """
    from kombu import Connection

    from eventlib.serialization import deserialize_event

    ids: list[str] = []
    deadline = time.monotonic() + timeout
    with Connection(url) as connection:
        simple = connection.SimpleQueue(queue)
        try:
            while until_empty or len(ids) < expected:
                try:
                    message = simple.get(block=True, timeout=0.2)
                except simple.Empty:
                    if until_empty and len(ids) >= expected:
                        break
                    if time.monotonic() > deadline:
                        pytest.fail(f"{len(ids)} of {expected} events reached {queue}")
                    continue
                args, _, _ = message.decode()
                if message.headers["task"] == "eventlib.process_batch":
                    ids.extend(deserialize_event(payload).id for _, payload in args[0])
                else:
                    ids.append(message.headers["id"])
                message.ack()
        finally:
            simple.close()
    return ids


def _reachable(url: str) -> bool:
    parts = url_to_parts(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.split("+")[0], 0)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def broker_url(kind: str) -> str:
    """The URL of the test broker ``kind``, skipping (or failing under
    EVENTLIB_REQUIRE_BROKERS=1) when it cannot be reached."""
    variable, default = BROKERS[kind]
    url = os.environ.get(variable, default)
    if not _reachable(url):
        message = f"{kind} broker {url} is unreachable (set {variable})"
        if os.environ.get("EVENTLIB_REQUIRE_BROKERS") == "1":
            pytest.fail(f"{message}; EVENTLIB_REQUIRE_BROKERS=1 forbids skipping")
        pytest.skip(message)
    return url


class Records:
    """An SQLite database the handlers of the test app write to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as db:
            db.execute("pragma journal_mode=wal")
            db.execute(
                "create table runs "
                "(event_id text, handler text, pid integer, ppid integer, at real)"
            )
        db.close()

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def count(self, handler: str | None = None) -> int:
        if handler is None:
            return self.query("select count(*) from runs")[0][0]
        return self.query("select count(*) from runs where handler = ?", handler)[0][0]

    def runs_per_event(self, handler: str) -> dict[str, int]:
        rows = self.query(
            "select event_id, count(*) from runs where handler = ? group by event_id", handler
        )
        return dict(rows)


APP_SOURCE = """
import os
import sqlite3
import time

import eventlib


def record(event, handler):
    db = sqlite3.connect(os.environ["EVENTLIB_TEST_RECORDS"], timeout=60)
    try:
        with db:
            db.execute(
                "insert into runs values (?, ?, ?, ?, ?)",
                (event.id, handler, os.getpid(), os.getppid(), time.time()),
            )
    finally:
        db.close()


def runs(event, handler):
    db = sqlite3.connect(os.environ["EVENTLIB_TEST_RECORDS"], timeout=60)
    try:
        query = "select count(*) from runs where event_id = ? and handler = ?"
        return db.execute(query, (event.id, handler)).fetchone()[0]
    finally:
        db.close()


class Purchase(eventlib.BaseEvent):
    def clean(self):
        self.require_data_keys(["sku"])

    @eventlib.handler
    def count_sale(self):
        record(self, "count_sale")

    @eventlib.handler
    def notify_warehouse(self):
        raise RuntimeError(f"warehouse down for {self.id}")

    @eventlib.handler
    def add_points(self):
        record(self, "add_points")


@eventlib.handler("shop.Purchase")
def audit(event):
    record(event, "audit")


class Slow(eventlib.BaseEvent):
    @eventlib.handler
    def work(self):
        record(self, "started")
        if runs(self, "started") == 1:
            time.sleep(120)  # the test kills the worker here
        record(self, "finished")


class Chain(eventlib.BaseEvent):
    # Its handler logs an event in the worker's pool process.
    @eventlib.handler
    def follow_up(self):
        for n in range(self.data.get("count", 1)):
            eventlib.log("shop.Purchase", {"sku": f"after-{self.id}-{n}"})
        record(self, "followed_up")


class Held(eventlib.BaseEvent):
    # Its first run holds the message, unacknowledged, for data["seconds"].
    @eventlib.handler
    def hold(self):
        record(self, "held")
        if runs(self, "held") == 1:
            time.sleep(self.data["seconds"])
        record(self, "released")


class Refund(eventlib.BaseEvent):
    # Retry n of a handler waits 1 ** n seconds, times 0.5 to 1.5.
    retries = 2
    backoff = 1.0

    @eventlib.handler
    def ledger(self):
        record(self, "ledger")

    @eventlib.handler
    def flaky(self):
        record(self, "flaky")
        if runs(self, "flaky") < 3:
            raise ConnectionError(f"flaky for {self.id}")

    @eventlib.handler(retries=1)
    def broken(self):
        record(self, "broken")
        if not os.path.exists(os.environ["EVENTLIB_TEST_RECORDS"] + ".fixed"):
            raise RuntimeError(f"broken for {self.id}")


@eventlib.handler("shop.Refund")
def notify(event):
    record(event, "notify")
"""


class Worker:
    """``eventlib worker`` in a process group of its own; ``command`` runs
    another worker command instead (``["celery", "-A", "proj", "worker",
    "--queues", "q"]``), with the same options."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        name: str,
        command: Sequence[str] = ("eventlib", "worker"),
        *,
        cwd: Path | None = None,
        concurrency: int = 2,
    ) -> None:
        """With ``cwd``, the command runs there as its script (the venv's
        ``celery``, not ``python -m celery``, which would put the folder on
        ``sys.path`` itself).  ``concurrency`` is its number of pool processes."""
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        start = [sys.executable, "-m"] if cwd is None else []
        if cwd is not None:
            command = [str(Path(sys.executable).parent / command[0]), *command[1:]]
        self.process = subprocess.Popen(
            [
                *start,
                *command,
                "--loglevel=INFO",
                f"--concurrency={concurrency}",
                "--without-mingle",
                "--without-gossip",
                f"--hostname={name}@%h",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited with {self.process.returncode}:\n{self.log}")
            return READY in self.log

        wait_for(ready, timeout, f"the worker to be ready; its log:\n{self.log}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes, as a crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def kill_pool_process(self, pid: int) -> None:
        """SIGKILL the worker's pool process ``pid`` alone, as the OOM killer
        would; the worker's main process stays.  Fails the test when ``pid``
        is not a child of the main process."""
        parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        if parent != self.process.pid:
            pytest.fail(f"process {pid} is not a pool process of worker {self.process.pid}")
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        self._log.close()


class Project:
    """A test app on disk, the settings to reach the broker, and workers."""

    def __init__(self, isolation: Any, tmp_path: Path, broker: str, queue: str) -> None:
        isolation.write("shop/events.py", APP_SOURCE)
        self.root = isolation.root
        self.tmp_path = tmp_path
        self.records = Records(tmp_path / "records.sqlite")
        self.dead_letter_url = f"sqlite:///{tmp_path / 'dead-letters.sqlite'}"
        self.settings: dict[str, str] = {
            "EVENTLIB_APPS": "shop",
            "EVENTLIB_BROKER_URL": broker,
            "EVENTLIB_QUEUE": queue,
            "EVENTLIB_DEAD_LETTER_URL": self.dead_letter_url,
        }
        self.workers: list[Worker] = []

    def configure_here(self) -> None:
        """Use the same settings in the test process, which logs the events."""
        os.environ["EVENTLIB_TEST_RECORDS"] = str(self.records.path)
        options = self.settings.get("EVENTLIB_BROKER_TRANSPORT_OPTIONS")
        eventlib.configure(
            apps=["shop"],
            broker_url=self.settings["EVENTLIB_BROKER_URL"],
            queue=self.settings["EVENTLIB_QUEUE"],
            broker_transport_options=json.loads(options) if options else {},
            dead_letter_url=self.dead_letter_url,
        )

    def environment(self) -> dict[str, str]:
        """The environment of a worker or command of the project: its
        settings and none of the machine's ``EVENTLIB_*`` variables."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
        env.update(self.settings)
        env["EVENTLIB_TEST_RECORDS"] = str(self.records.path)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), env.get("PYTHONPATH", "")])
        return env

    def start_worker(self) -> Worker:
        worker = Worker(
            self.environment(),
            self.tmp_path / f"worker-{len(self.workers)}.log",
            f"w{len(self.workers)}",
        )
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        os.environ.pop("EVENTLIB_TEST_RECORDS", None)
