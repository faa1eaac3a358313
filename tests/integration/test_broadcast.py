"""Broadcast events through real brokers to real ``eventlib listen`` processes.

Each test writes a project: the app ``shop`` declares the event classes and
its handlers run in an ``eventlib worker`` (apps ``shop``), which broadcasts
the events; the app ``mirror`` declares external handlers only, and its
listeners (``eventlib listen --group NAME``, apps ``mirror``) never import
``shop``; ``money`` is a type registered with eventlib that both import.
Every handler appends a JSON line to the test's records file, saying which
process of which group saw which event.

Workers and listeners run one pool process each (``-c 1``): events are
processed, and so broadcast, in the order they were logged, and a listener
takes its group's events in that order.  Each test's groups have names of
their own and are deleted at its end.  Every group gets every event
broadcast through its broker: on Redis these tests keep to a database of
their own (:data:`REDIS_DB`); on RabbitMQ they count only the events they
logged (but the backlogs they read count every event).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from celery import Celery

import eventlib
from eventlib import broadcast, deadletters
from eventlib.embedded import url_for

from ..waiting import wait_for
from .support import Worker, broker_url

#: The Redis database of these tests: kombu keeps the exchange's bindings,
#: and so the groups, per database.
REDIS_DB = 11

RECORDS_SOURCE = """
import json
import os


def record(kind, event, **extra):
    line = {
        "kind": kind,
        "name": event.name,
        "id": event.id,
        "created_at": event.created_at.isoformat(),
        "group": os.environ.get("BROADCAST_TEST_GROUP"),
        "process": os.environ.get("BROADCAST_TEST_PROCESS"),
        **extra,
    }
    with open(os.environ["BROADCAST_TEST_RECORDS"], "a") as records:
        records.write(json.dumps(line) + "\\n")
"""

MONEY_SOURCE = """
from dataclasses import dataclass
from decimal import Decimal

import eventlib


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


eventlib.register_type(
    Money, encode=lambda m: [m.amount, m.currency], decode=lambda v: Money(*v), tag="money"
)
"""

SHOP_EVENTS = """
import eventlib
import money  # registers Money
from records import record


class Order(eventlib.BaseEvent):
    broadcast = True

    @eventlib.handler
    def book(self):
        record("worker", self)


class Refund(eventlib.BaseEvent):
    # Broadcast because it shapes what is sent: never the card, nothing when quiet.
    def broadcast(self, data):
        if data.get("quiet"):
            return None
        return {"amount": data["amount"], "shaped": True}

    @eventlib.handler
    def book(self):
        record("worker", self)


class Internal(eventlib.BaseEvent):
    broadcast = False

    @eventlib.handler
    def book(self):
        record("worker", self)


class Plain(eventlib.BaseEvent):
    # Broadcast only when the broadcast setting is on.
    @eventlib.handler
    def book(self):
        record("worker", self)
"""

MIRROR_EVENTS = """
import os
import sys
import time

import eventlib
import money  # registers Money
from records import record


@eventlib.external_handler("shop.Order", retries=1, backoff=0.2)
def fragile(event):
    # Fails on an order marked fragile until the file BROADCAST_TEST_FIXED exists.
    if not event.data.get("fragile"):
        return
    record("fragile", event)
    if not os.path.exists(os.environ["BROADCAST_TEST_FIXED"]):
        raise RuntimeError(f"fragile down for {event.id}")


@eventlib.external_handler("shop.*")
def mirror(event):
    # Its first run on an event whose hold_in names this group holds it, for the test to kill.
    held = os.environ["BROADCAST_TEST_RECORDS"] + f".held-{event.id}"
    if event.data.get("hold_in") == os.environ["BROADCAST_TEST_GROUP"] and not os.path.exists(held):
        open(held, "w").close()
        record("held", event)
        time.sleep(120)
    record(
        "mirror",
        event,
        data={key: [type(value).__name__, str(value)] for key, value in event.data.items()},
        shop_modules=sorted(m for m in sys.modules if m == "shop" or m.startswith("shop.")),
    )
"""

FRAGILE = "mirror.events.fragile"


@pytest.fixture(params=["amqp", "redis"])
def broker(request) -> str:
    """RabbitMQ, then Redis in the database :data:`REDIS_DB`."""
    url = broker_url(request.param)
    if request.param == "redis":
        url = urlunsplit(urlsplit(url)._replace(path=f"/{REDIS_DB}"))
    return url


class Broadcasting:
    """The project on disk, its worker, listeners and commands, and the
    groups it created (deleted by :meth:`close`)."""

    def __init__(self, isolation: Any, tmp_path: Path, broker: str, queue: str) -> None:
        isolation.write("records.py", RECORDS_SOURCE)
        isolation.write("money/__init__.py", MONEY_SOURCE)
        isolation.write("shop/events.py", SHOP_EVENTS)
        isolation.write("mirror/events.py", MIRROR_EVENTS)
        self.root = isolation.root
        self.tmp_path = tmp_path
        self.broker = broker
        self.queue = queue
        self.records = tmp_path / "records.jsonl"
        self.records.touch()
        self.fixed = tmp_path / "fixed"
        self.dead_letter_url = f"sqlite:///{tmp_path / 'dead-letters.sqlite'}"
        #: The broker_transport_options setting of every process.
        self.transport_options: dict[str, Any] = {}
        self.processes: list[Worker] = []
        self.groups: list[str] = []
        self._configured = False

    # ------------------------------------------------------------ set-up ---

    def group(self, role: str) -> str:
        """A new group name, unique to this test run."""
        name = f"test-{role}-{uuid.uuid4().hex[:10]}"
        self.groups.append(name)
        return name

    def environment(self, apps: str, **extra: str) -> dict[str, str]:
        """The environment of a process of the project: its settings and
        none of the machine's ``EVENTLIB_*`` variables."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
        env.update(
            EVENTLIB_APPS=apps,
            EVENTLIB_BROKER_URL=self.broker,
            EVENTLIB_QUEUE=self.queue,
            EVENTLIB_DEAD_LETTER_URL=self.dead_letter_url,
            BROADCAST_TEST_RECORDS=str(self.records),
            BROADCAST_TEST_FIXED=str(self.fixed),
            PYTHONPATH=os.pathsep.join([str(self.root), env.get("PYTHONPATH", "")]),
        )
        if self.transport_options:
            env["EVENTLIB_BROKER_TRANSPORT_OPTIONS"] = json.dumps(self.transport_options)
        env.update(extra)
        return env

    def _start(self, command: tuple[str, ...], env: dict[str, str], name: str) -> Worker:
        process = Worker(
            env,
            self.tmp_path / f"{name}.log",
            name,
            ("eventlib", *command),
            concurrency=1,
        )
        self.processes.append(process)
        process.wait_ready()
        return process

    def start_worker(self, **settings: str) -> Worker:
        """``eventlib worker`` of the app ``shop``."""
        name = f"worker{len(self.processes)}"
        return self._start(("worker",), self.environment("shop", **settings), name)

    def start_listener(self, group: str) -> Worker:
        """``eventlib listen --group GROUP`` of the app ``mirror``."""
        name = f"listener{len(self.processes)}"
        env = self.environment("mirror", BROADCAST_TEST_GROUP=group, BROADCAST_TEST_PROCESS=name)
        return self._start(("listen", "--group", group), env, name)

    def eventlib(self, *args: str, apps: str = "mirror") -> subprocess.CompletedProcess[str]:
        """``eventlib *args`` in a process of its own."""
        return subprocess.run(
            [sys.executable, "-m", "eventlib", *args],
            env=self.environment(apps),
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def close(self) -> None:
        """Stop every process, then delete the groups: a listener still
        running would create its group again."""
        self.stop_processes()
        app = Celery("broadcast-tests", broker=self.broker, set_as_current=False)
        try:
            for group in self.groups:
                with contextlib.suppress(broadcast.NoSuchGroup):  # the test deleted it
                    broadcast.delete_group(group, app)
        finally:
            app.close()

    def stop_processes(self) -> None:
        for process in self.processes:
            process.stop()

    # -------------------------------------------------- events and records ---

    def log(self, name: str, data: dict[str, Any]) -> str:
        """Log an event from this process, as the project's web app would."""
        if not self._configured:
            os.environ["BROADCAST_TEST_RECORDS"] = str(self.records)
            eventlib.configure(
                apps=["shop"],
                broker_url=self.broker,
                queue=self.queue,
                dead_letter_url=self.dead_letter_url,
                broker_transport_options=self.transport_options,
            )
            self._configured = True
        return eventlib.log(name, data)

    def log_orders(self, count: int, **data: Any) -> list[str]:
        return [self.log("shop.Order", {"n": n, **data}) for n in range(count)]

    def lines(self, kind: str, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """What the handlers of ``kind`` recorded, in order; with ``ids``,
        about those events only (a listener on RabbitMQ also gets what
        tests running beside this one broadcast)."""
        lines = [json.loads(line) for line in self.records.read_text().splitlines()]
        wanted = None if ids is None else set(ids)
        return [
            line
            for line in lines
            if line["kind"] == kind and (wanted is None or line["id"] in wanted)
        ]

    def mirrored(self, ids: Iterable[str]) -> dict[str, Counter[str]]:
        """Per group, how many times its listeners mirrored each of ``ids``."""
        wanted = set(ids)
        seen: dict[str, Counter[str]] = {}
        for line in self.lines("mirror", wanted):
            seen.setdefault(line["group"], Counter())[line["id"]] += 1
        return seen

    def wait_mirrored(self, expected: dict[str, list[str]], timeout: float = 60) -> None:
        """Wait until each group mirrored at least the events it names."""

        def done() -> bool:
            seen = self.mirrored(id for ids in expected.values() for id in ids)
            return all(set(ids) <= set(seen.get(group, ())) for group, ids in expected.items())

        self.wait(done, timeout, f"the groups to mirror {expected}")

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """:func:`wait_for`, failing with the records and the processes' logs
        as they are then."""
        try:
            return wait_for(condition, timeout, what)
        except pytest.fail.Exception as failure:
            pytest.fail(f"{failure.msg}; records and logs:\n{self.logs()}")

    def wait_backlog(self, group: str, count: int) -> dict[str, dict[str, Any]]:
        """Wait until ``count`` events wait for ``group``; return this
        test's groups as ``eventlib groups list --json`` then shows them."""
        return self.wait(
            lambda: (groups := self.listed_groups())[group]["backlog"] == count and groups,
            30,
            f"{count} events waiting for {group}",
        )

    def listed_groups(self) -> dict[str, dict[str, Any]]:
        """This test's groups as ``eventlib groups list --json`` shows them."""
        listed = self.eventlib("groups", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        listed_groups = json.loads(listed.stdout)
        return {group["name"]: group for group in listed_groups if group["name"] in self.groups}

    def logs(self) -> str:
        logs = [f"--- {process.log_path.name}\n{process.log[-3000:]}" for process in self.processes]
        return "\n".join([self.records.read_text(), *logs])


@pytest.fixture
def project(isolation, tmp_path, broker, queue) -> Iterator[Broadcasting]:
    built = Broadcasting(isolation, tmp_path, broker, queue)
    try:
        yield built
    finally:
        built.close()
        os.environ.pop("BROADCAST_TEST_RECORDS", None)


def is_amqp(url: str) -> bool:
    return url.startswith("amqp")


# ------------------------------------------------------------------ tests ---


def test_every_group_gets_every_event_once_one_of_them_after_it_was_killed(project, broker):
    """The second group's listener is killed during the broadcast, running a
    handler with more events prefetched: what it had not acknowledged goes
    back to its group's queue (on Redis, through the visibility timeout and
    the group's own routing key), and to no other group."""
    if not is_amqp(broker):
        # Short values keep the test short: unacknowledged messages of a lost
        # listener come back after 3 seconds, found by a live process's sweep.
        project.transport_options = {
            "visibility_timeout": 3,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    first, second = project.group("first"), project.group("second")
    project.start_worker()
    project.start_listener(first)
    killed = project.start_listener(second)
    before = project.log_orders(3)
    project.wait_mirrored({first: before, second: before})

    during = [project.log("shop.Order", {"n": 3, "hold_in": second}), *project.log_orders(4)]
    project.wait(lambda: project.lines("held"), 60, f"{second} to hold {during[0]}")
    project.wait_mirrored({first: during})
    killed.kill()
    # The killed group keeps what it missed, and only that.
    listed = project.wait_backlog(second, len(during))
    assert listed[first]["backlog"] == 0
    project.start_listener(second)
    project.wait_mirrored({second: during})

    project.stop_processes()
    every = Counter(before + during)
    assert project.mirrored(before + during) == {first: every, second: every}
    [held] = project.lines("held")
    assert (held["id"], held["group"]) == (during[0], second)
    assert {group["backlog"] for group in project.listed_groups().values()} == {0}


def test_the_listeners_of_one_group_share_its_events(project):
    shared = project.group("shared")
    project.start_worker()
    one, other = project.start_listener(shared), project.start_listener(shared)
    # Broadcast one at a time (-c 1), each finds both listeners idle:
    # RabbitMQ hands them out in turn, Redis to the one waiting longest.
    ids = project.log_orders(20)
    project.wait_mirrored({shared: ids})

    project.stop_processes()
    assert project.mirrored(ids) == {shared: Counter(ids)}
    took = Counter(line["process"] for line in project.lines("mirror", ids))
    assert set(took) == {one.log_path.stem, other.log_path.stem}, took


def test_a_failing_external_handler_is_retried_through_its_group_then_a_dead_letter(
    project,
):
    group = project.group("fragile")
    project.start_worker()
    listener = project.start_listener(group)
    [order] = project.log_orders(1, fragile=True)

    # Its first run and its one retry failed; the handler after it ran once.
    project.wait(
        lambda: len(project.lines("fragile")) == 2,
        60,
        f"two runs of {FRAGILE}",
    )
    project.wait_mirrored({group: [order]})
    [letter] = project.wait(deadletters.list_dead_letters, 30, "the dead letter")
    assert (letter.event_name, letter.event_id) == ("shop.Order", order)
    assert letter.handler == f"external:{group}:{FRAGILE}"
    assert letter.attempts == 2
    assert f"RuntimeError: fragile down for {order}" in letter.reason
    # The retry came back to the listener through the broker.
    assert f"shop.Order retry of {FRAGILE}[" in listener.log

    project.fixed.touch()
    retried = project.eventlib("dead", "retry", str(letter.id))
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.split() == ["sent", str(letter.id), "shop.Order", letter.handler]
    project.wait(lambda: len(project.lines("fragile")) == 3, 60, f"{FRAGILE} to run again")
    project.wait(lambda: not deadletters.list_dead_letters(), 30, "the dead letter to go")

    project.stop_processes()
    assert f"shop.Order dead letter {letter.id}[" in listener.log
    assert [line["id"] for line in project.lines("fragile")] == [order] * 3
    assert project.mirrored([order]) == {group: Counter([order])}


def test_a_listener_needs_none_of_the_event_classes_and_gets_typed_data(project):
    from money import Money

    group = project.group("typed")
    project.start_worker()
    project.start_listener(group)
    at = datetime(2026, 3, 1, 14, 30, 15, 250000, tzinfo=UTC)
    data = {"total": Decimal("12.50"), "at": at, "price": Money(Decimal("3.10"), "EUR")}
    order = project.log("shop.Order", {**data, "note": "gift"})
    project.wait_mirrored({group: [order]})

    [mirrored] = project.lines("mirror", [order])
    [booked] = project.lines("worker")
    assert mirrored["shop_modules"] == []
    assert mirrored["data"] == {
        "total": ["Decimal", "12.50"],
        "at": ["datetime", "2026-03-01 14:30:15.250000+00:00"],
        "price": ["Money", "Money(amount=Decimal('3.10'), currency='EUR')"],
        "note": ["str", "gift"],
    }
    assert (mirrored["name"], mirrored["created_at"]) == ("shop.Order", booked["created_at"])


def test_what_is_broadcast_is_what_the_event_says(project):
    group = project.group("shaped")
    project.start_worker(EVENTLIB_BROADCAST="1")
    project.start_listener(group)
    internal = project.log("shop.Internal", {"n": 1})  # broadcast = False wins
    quiet = project.log("shop.Refund", {"amount": 5, "card": "4111", "quiet": True})
    shaped = project.log("shop.Refund", {"amount": 7, "card": "4111"})
    plain = project.log("shop.Plain", {"n": 2})  # by the setting; the last one
    project.wait_mirrored({group: [shaped, plain]})

    project.stop_processes()
    assert [line["id"] for line in project.lines("worker")] == [internal, quiet, shaped, plain]
    logged = [internal, quiet, shaped, plain]
    mirrored = {line["id"]: line["data"] for line in project.lines("mirror", logged)}
    assert mirrored == {
        shaped: {"amount": ["int", "7"], "shaped": ["bool", "True"]},
        plain: {"n": ["int", "2"]},
    }
    assert deadletters.list_dead_letters() == []


def test_groups_list_shows_backlogs_and_listeners_and_delete_removes_a_group(project, broker):
    idle, busy = project.group("idle"), project.group("busy")
    created = project.eventlib("groups", "create", idle)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == (
        f"group {idle} keeps broadcast events in {broadcast.QUEUE_PREFIX}{idle}"
    )
    project.start_worker()
    project.start_listener(busy)
    ids = project.log_orders(3)
    project.wait_mirrored({busy: ids})

    listed = project.wait_backlog(idle, 3)
    amqp = is_amqp(broker)
    assert listed == {
        idle: {
            "name": idle,
            "queue": broadcast.QUEUE_PREFIX + idle,
            "backlog": 3,
            "listeners": 0 if amqp else None,
        },
        busy: {
            "name": busy,
            "queue": broadcast.QUEUE_PREFIX + busy,
            "backlog": 0,
            "listeners": 1 if amqp else None,
        },
    }

    deleted = project.eventlib("groups", "delete", idle, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"deleted the group {idle} and 3 events waiting for it"
    assert set(project.listed_groups()) == {busy}
    again = project.eventlib("groups", "delete", idle, "--yes")
    assert again.returncode == 2
    assert f"eventlib: there is no group '{idle}' on " in again.stderr
    # Broadcasting goes on to the groups that are left.
    more = project.log_orders(2)
    project.wait_mirrored({busy: more})
    assert set(project.listed_groups()) == {busy}


def test_the_embedded_broker_broadcasts_between_the_processes_of_a_host(isolation, tmp_path):
    """The embedded broker keeps the broadcast exchange's bindings in its
    file: the worker's process sees the groups its listeners and the
    command line created in theirs."""
    embedded = Broadcasting(isolation, tmp_path, url_for(tmp_path / "broker.sqlite"), "events")
    try:
        running, later = embedded.group("running"), embedded.group("later")
        created = embedded.eventlib("groups", "create", later)
        assert created.returncode == 0, created.stderr
        embedded.start_worker()
        embedded.start_listener(running)
        ids = embedded.log_orders(3)
        embedded.wait_mirrored({running: ids})
        listed = embedded.wait_backlog(later, 3)
        assert listed[running]["backlog"] == 0
        embedded.start_listener(later)
        embedded.wait_mirrored({later: ids})

        embedded.stop_processes()
        assert embedded.mirrored(ids) == {running: Counter(ids), later: Counter(ids)}
    finally:
        embedded.close()
