"""What the benchmarks share: brokers, payloads, statistics, counters and
worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue
from kombu.utils.url import maybe_sanitize_url, url_to_parts

from eventlib.embedded import url_for
from examples import waiting

from .benchapp.counter import COUNTER_ENV, TOTAL_ENV

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.benchapp"
ORDER = f"{APP}.Order"

#: The event data ``log()`` gets: five keys, a Decimal and a datetime among them.
DATA: dict[str, Any] = {
    "order_id": 48213,
    "sku": "TEA-EARLGREY-250",
    "amount": Decimal("19.90"),
    "currency": "EUR",
    "placed_at": datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC),
}
#: The same data as plain JSON values, what the bare task gets.
BARE_DATA: dict[str, Any] = {
    **DATA,
    "amount": str(DATA["amount"]),
    "placed_at": DATA["placed_at"].isoformat(),
}


class BenchError(Exception):
    """A benchmark could not complete (a worker died, a deadline passed)."""


class Unavailable(Exception):
    """The installed libraries cannot run a variant: a dispatch mode the
    installed eventlib refuses, a package that is not installed."""


def configure_dispatch(mode: str, **settings: Any) -> None:
    """``eventlib.configure(dispatch=mode, **settings)``."""
    import eventlib

    eventlib.configure(dispatch=mode, **settings)


# ------------------------------------------------------------- brokers ---


@dataclass
class Broker:
    kind: str  # "redis", "amqp" or "embedded"
    url: str
    #: Why it is skipped; None when it can be used.
    skipped: str | None = None
    version: str = ""
    #: Files to delete at the end (the embedded broker's database).
    files: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return {"redis": "Redis", "amqp": "RabbitMQ", "embedded": "embedded (SQLite)"}[self.kind]

    @property
    def shown_url(self) -> str:
        if self.kind == "embedded":
            return "eventlib+sqlite:///<temporary file>"
        return maybe_sanitize_url(self.url)


NETWORK_BROKERS = {
    "redis": (("EVENTLIB_BENCH_REDIS_URL", "EVENTLIB_TEST_REDIS_URL"), "redis://127.0.0.1:6379/0"),
    "amqp": (
        ("EVENTLIB_BENCH_AMQP_URL", "EVENTLIB_TEST_AMQP_URL"),
        "amqp://guest:guest@127.0.0.1:5672//",
    ),
}
DEFAULT_PORTS = {"redis": 6379, "amqp": 5672}


def find_brokers(kinds: Sequence[str], workdir: Path) -> list[Broker]:
    """The brokers asked for, each either usable or with the reason it is
    skipped."""
    brokers = []
    for kind in kinds:
        if kind == "embedded":
            brokers.append(_embedded(workdir))
            continue
        variables, default = NETWORK_BROKERS[kind]
        url = next((os.environ[v] for v in variables if os.environ.get(v)), default)
        broker = Broker(kind, url)
        broker.skipped = _unreachable(kind, url)
        if broker.skipped is None:
            broker.version = _server_version(kind, url)
        brokers.append(broker)
    return brokers


def _embedded(workdir: Path) -> Broker:
    path = workdir / "embedded-broker.sqlite"
    broker = Broker("embedded", url_for(path), files=[path])
    try:
        import sqlalchemy
    except ImportError:
        broker.skipped = "SQLAlchemy is not installed (the embedded broker needs it)"
    else:
        broker.version = f"SQLite {sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}"
    return broker


def _unreachable(kind: str, url: str) -> str | None:
    parts = url_to_parts(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[kind]
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as error:
        return f"{maybe_sanitize_url(url)} is unreachable ({error})"
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as error:
        return f"{maybe_sanitize_url(url)} refused the connection ({error!r})"
    return None


def _server_version(kind: str, url: str) -> str:
    with contextlib.suppress(Exception):
        if kind == "redis":
            import redis

            client = redis.Redis.from_url(url, socket_timeout=3)
            try:
                return f"Redis {client.info('server')['redis_version']}"
            finally:
                client.close()
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
            properties = connection.connection.server_properties
            product, version = properties.get("product", "?"), properties.get("version", "?")
            return f"{_text(product)} {_text(version)}"
    return "version unknown"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def unique_queue(role: str) -> str:
    return f"eventlib-bench-{role}-{uuid.uuid4().hex[:10]}"


def delete_queues(broker: Broker, queues: Sequence[str]) -> None:
    """Delete the benchmark's queues, with their messages and the direct
    exchange of the same name Celery declares for each."""
    with Connection(broker.url, connect_timeout=5) as connection:
        for name in queues:
            if broker.kind == "amqp":
                # One channel per operation: a failed one closes its channel.
                for delete in ("queue_delete", "exchange_delete"):
                    with contextlib.suppress(Exception):  # never declared, or gone
                        channel = connection.channel()
                        getattr(channel, delete)(name)
                        channel.close()
                continue
            # A virtual transport (Redis, SQLite) deletes only the bindings
            # this channel knows of: declare the queue as Celery did first.
            with contextlib.suppress(Exception):
                queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
                bound = queue(connection.default_channel)
                bound.declare()
                bound.delete()


def queue_size(broker: Broker, name: str) -> int:
    """How many messages the queue ``name`` holds (0 when it does not exist)."""
    with Connection(broker.url, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue=name, passive=True).message_count)
        except Exception:  # no such queue (a virtual transport: no message left)
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()


# ---------------------------------------------------------- statistics ---


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass
class Summary:
    """Per-call latencies in microseconds."""

    calls: int
    median: float
    p99: float

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Summary:
        ordered = sorted(s / 1000 for s in samples_ns)
        return cls(len(ordered), median(ordered), percentile(ordered, 0.99))


def rotated(items: Sequence[Any], by: int) -> list[Any]:
    """``items`` starting at position ``by``: the order of one round."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """The examples' :func:`~examples.waiting.wait_for`, raising
    :class:`BenchError` when ``timeout`` seconds passed."""
    try:
        return waiting.wait_for(condition, timeout, what, interval)
    except TimeoutError as error:
        raise BenchError(str(error)) from None


# ------------------------------------------------------------ counters ---


class Counter:
    """Where handlers and bare tasks count the messages they processed."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.round = 0
        self._key = ""
        self._redis: Any = None
        self._db: sqlite3.Connection | None = None
        if where.startswith("sqlite:///"):
            path = where.removeprefix("sqlite:///")
            self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=normal")
            self._db.execute(
                "create table if not exists counter (n integer, first real, last real)"
            )
        else:
            import redis

            self._redis = redis.Redis.from_url(where.partition("#")[0], socket_timeout=10)

    @classmethod
    def for_broker(cls, broker: Broker, redis_url: str | None, workdir: Path) -> Counter:
        """A Redis counter when Redis can be reached, except for the embedded
        broker (which needs no server, so neither does its counter)."""
        if broker.kind != "embedded" and redis_url is not None:
            return cls(f"{redis_url}#eventlib-bench:{uuid.uuid4().hex[:10]}")
        return cls(f"sqlite:///{workdir / f'counter-{broker.kind}.sqlite'}")

    @property
    def kind(self) -> str:
        return "SQLite row" if self._db is not None else "Redis INCR"

    def reset(self) -> str:
        """Start a new count; returns the value of ``EVENTLIB_BENCH_COUNTER``."""
        self.round += 1
        if self._db is not None:
            self._db.execute("delete from counter")
            self._db.execute("insert into counter values (0, null, null)")
            return self.where
        self._key = f"{self.where.partition('#')[2]}:{self.round}"
        return f"{self.where.partition('#')[0]}#{self._key}"

    def count(self) -> int:
        if self._db is not None:
            return int(self._db.execute("select n from counter").fetchone()[0])
        return int(self._redis.get(self._key) or 0)

    def span(self) -> tuple[float, float] | None:
        """When the first and the last message finished (epoch seconds), once
        both are recorded."""
        if self._db is not None:
            first, last = self._db.execute("select first, last from counter").fetchone()
        else:
            first, last = self._redis.mget(f"{self._key}:first", f"{self._key}:last")
        if first is None or last is None:
            return None
        return float(first), float(last)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        else:
            prefix = self.where.partition("#")[2]
            keys = list(self._redis.scan_iter(f"{prefix}:*"))
            if keys:
                self._redis.delete(*keys)
            self._redis.close()


# ------------------------------------------------------------- workers ---

#: Options of every worker: one worker, one prefork pool process, no
#: per-task logging (``--loglevel=WARNING``), no cluster chatter.
WORKER_OPTIONS = (
    "--concurrency=1",
    "--pool=prefork",
    "--loglevel=WARNING",
    "--without-mingle",
    "--without-gossip",
    "--without-heartbeat",
)


class Worker:
    """A worker command in a process group of its own."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _group(self) -> dict[int, list[str]]:
        """The fields of ``/proc/<pid>/stat`` after the command name, for each
        process of the worker's group (its main process and its pool), by
        pid; empty where there is no /proc."""
        try:
            entries = os.listdir("/proc")
        except OSError:
            return {}
        found = {}
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[2]) == self.process.pid:  # pgrp
                found[int(entry)] = fields
        return found

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) used so far by the worker and its pool
        processes, from /proc; None where there is no /proc."""
        group = self._group()
        if not group:
            return None
        ticks = sum(int(fields[11]) + int(fields[12]) for fields in group.values())  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss(self) -> dict[str, int]:
        """Resident memory in bytes of the worker's main process (``main``)
        and of its pool processes (``pool``, together), from /proc."""
        found = {"main": 0, "pool": 0}
        for pid in self._group():
            try:
                with open(f"/proc/{pid}/status") as status:
                    lines = status.read().splitlines()
            except OSError:  # gone meanwhile
                continue
            for line in lines:
                if line.startswith("VmRSS:"):
                    kib = int(line.split()[1])
                    found["main" if pid == self.process.pid else "pool"] += kib * 1024
        return found

    @property
    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"the worker exited with {self.process.returncode}")

    def stop(self) -> None:
        """SIGTERM the group (a warm shutdown), SIGKILL it if that takes too long."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        # Pool processes left behind by a worker that died.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


def worker_env(broker: Broker, queue: str, counter: str, total: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    env.update(
        {
            "EVENTLIB_APPS": APP,
            "EVENTLIB_BROKER_URL": broker.url,
            "EVENTLIB_QUEUE": queue,
            COUNTER_ENV: counter,
            TOTAL_ENV: str(total),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        }
    )
    return env
