"""``await eventlib.alog()``: ``log()`` for coroutines, which never blocks the
event loop.

The event loop's freedom is measured with a ticker, a task that notes the
time every 10 ms: while ``alog()`` waits for a broker that never answers (or
a spool file another process has locked), the ticks go on.  An async Django
view under a real ASGI server is tested in
tests/integration/test_asgi_django.py.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from sure import expect

import eventlib
from eventlib import dispatch
from eventlib.sending import spool_status
from eventlib.testing import capture_events

from .test_dispatch import receive

SHOP_EVENTS = """
    import threading

    import eventlib

    #: (event id, data, name of the thread) of each run of the handler.
    RECEIVED = []


    class Refund(eventlib.BaseEvent):
        def clean(self):
            self.require_data_keys(["order_id"])

        @eventlib.handler
        def record(self):
            RECEIVED.append((self.id, self.data, threading.current_thread().name))
"""

#: How often the ticker notes the time, and the longest pause between two
#: of its ticks that still counts as a free event loop.
TICK = 0.01
LONGEST_PAUSE = 0.4


@pytest.fixture
def shop(isolation):
    isolation.write("shop/events.py", SHOP_EVENTS)


@pytest.fixture(autouse=True)
def default_runner() -> Iterator[None]:
    """asyncio's threads, the runner of a process without Django (which,
    once set up by another test module, leaves its own)."""
    runner = dispatch._sync_runner
    dispatch.set_sync_runner(None)
    yield
    dispatch.set_sync_runner(runner)


def received() -> list[tuple[str, dict[str, Any], str]]:
    return importlib.import_module("shop.events").RECEIVED


@dataclass
class Ticked:
    """What ``alog()`` returned, how long it took, and the longest pause of
    the ticker meanwhile."""

    result: Any
    seconds: float
    longest_pause: float


def ticking_while(call: Callable[[], Awaitable[Any]]) -> Ticked:
    """Run ``call()`` in an event loop that also runs the ticker."""

    async def main() -> Ticked:
        ticks: list[float] = []

        async def tick() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(TICK)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(5 * TICK)
        started = time.monotonic()
        try:
            result = await call()
        finally:
            ended = time.monotonic()
            ticker.cancel()
        during = [started, *(t for t in ticks if started < t < ended), ended]
        pauses = [later - earlier for earlier, later in pairwise(during)]
        return Ticked(result, ended - started, max(pauses))

    return asyncio.run(main())


# ------------------------------------------------------ same as log() ---


def test_alog_returns_the_id_the_handlers_see(shop):
    eventlib.configure(always_eager=True)

    event_id = asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7, "amount": Decimal("1.5")}))

    [(seen_id, data, thread)] = received()
    expect((seen_id, data)).to.equal((event_id, {"order_id": 7, "amount": Decimal("1.5")}))
    # Eager handlers run in a thread, not in the event loop's.
    expect(thread).to_not.equal(threading.main_thread().name)


class Unserializable:
    pass


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("shop.Refund", ["order_id", 7]),
        ("shop.Chargeback", {"order_id": 7}),
        ("nodots", {}),
        ("shop.Refund", {"amount": 3}),
        ("shop.Refund", {"order_id": 7, "by": Unserializable()}),
    ],
    ids=["not-a-mapping", "unknown-event", "invalid-name", "refused-by-clean", "unserializable"],
)
def test_alog_raises_in_the_caller_what_log_raises_and_sends_nothing(shop, name, data):
    eventlib.configure(always_eager=True)
    with capture_events() as events:
        with pytest.raises(Exception) as by_log:
            eventlib.log(name, data)
        with pytest.raises(Exception) as by_alog:
            asyncio.run(eventlib.alog(name, data))

    expect(type(by_alog.value)).to.be(type(by_log.value))
    expected = str(by_log.value).replace("eventlib.log(", "eventlib.alog(")
    expect(str(by_alog.value)).to.equal(expected)
    expect(getattr(by_alog.value, "__notes__", None)).to.equal(
        getattr(by_log.value, "__notes__", None)
    )
    expect(events.events).to.equal([])
    expect(received()).to.equal([])


def test_alog_says_alog_when_data_is_not_a_mapping(shop):
    with pytest.raises(TypeError) as error:
        asyncio.run(eventlib.alog("shop.Refund", ["order_id", 7]))
    expect(str(error.value)).to.equal(
        "eventlib.alog('shop.Refund', data): data must be a mapping, not list"
    )


def test_alog_logs_refused_data_and_returns_none_when_raise_errors_is_off(shop, caplog):
    eventlib.configure(always_eager=True, raise_errors=False)

    result = asyncio.run(eventlib.alog("shop.Refund", {"amount": 3}))

    expect(result).to.be(None)
    expect(received()).to.equal([])
    [record] = [r for r in caplog.records if r.name == "eventlib"]
    expect(record.getMessage()).to.contain("Event shop.Refund was not logged")
    expect(record.getMessage()).to.contain("(data keys: amount)")


# --------------------------------------------------------------- sending ---


def test_alog_puts_the_event_in_the_buffer_from_the_coroutine_in_background_mode(shop, memory_app):
    eventlib.configure(always_eager=False, celery_app=memory_app)

    async def no_thread(call: Callable[[], None]) -> None:
        raise AssertionError("the background mode needs no thread")

    dispatch.set_sync_runner(no_thread)

    event_id = asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7}))

    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib").headers["id"]).to.equal(event_id)


def test_alog_sends_through_the_runner_in_direct_mode(shop, memory_app):
    eventlib.configure(always_eager=False, celery_app=memory_app, dispatch="direct")
    threads = []

    async def recording(call: Callable[[], None]) -> None:
        def run() -> None:
            threads.append(threading.current_thread())
            call()

        await asyncio.to_thread(run)

    dispatch.set_sync_runner(recording)

    event_id = asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7}))

    # Published by the time alog() returned: the direct mode waits for the broker.
    expect(receive(memory_app, "eventlib").headers["id"]).to.equal(event_id)
    [thread] = threads
    expect(thread).to_not.be(threading.main_thread())


@pytest.mark.parametrize("from_the_setting", [False, True], ids=["argument", "setting"])
def test_alog_with_on_commit_calls_the_hook_from_a_thread_and_sends_on_its_callback(
    shop, memory_app, from_the_setting
):
    after_commit: list[tuple[Callable[[], None], threading.Thread]] = []

    def hook(callback: Callable[[], None]) -> None:
        after_commit.append((callback, threading.current_thread()))

    dispatch.set_transaction_hook(hook)
    eventlib.configure(always_eager=False, celery_app=memory_app, on_commit=from_the_setting)

    if from_the_setting:
        event_id = asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7}))
    else:
        event_id = asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7}, on_commit=True))

    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib")).to.be(None)
    [(send, thread)] = after_commit
    expect(thread).to_not.be(threading.main_thread())
    send()
    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib").headers["id"]).to.equal(event_id)


def test_alog_with_on_commit_false_sends_at_once_when_the_setting_waits(shop, memory_app):
    dispatch.set_transaction_hook(lambda callback: None)  # a commit that never comes
    eventlib.configure(always_eager=False, celery_app=memory_app, on_commit=True)

    event_id = asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7}, on_commit=False))

    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib").headers["id"]).to.equal(event_id)


def test_alog_with_on_commit_without_a_transaction_hook_is_a_configuration_error(shop, memory_app):
    dispatch.set_transaction_hook(None)  # the isolation fixture puts back any hook
    eventlib.configure(always_eager=False, celery_app=memory_app)

    with pytest.raises(eventlib.ConfigurationError) as error:
        asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7}, on_commit=True))

    expect(str(error.value)).to.equal(
        "eventlib.alog('shop.Refund', on_commit=True) needs a transaction hook: add "
        "'eventlib.contrib.django' to INSTALLED_APPS (or call set_transaction_hook)"
    )
    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib")).to.be(None)


def test_capture_events_records_alog_and_knows_what_waits_for_the_commit(shop):
    after_commit: list[Callable[[], None]] = []
    dispatch.set_transaction_hook(after_commit.append)

    with capture_events() as events:
        event_id = asyncio.run(eventlib.alog("shop.Refund", {"order_id": 7}, on_commit=True))
        expect(events.waiting_for_commit).to.equal(1)
        with pytest.raises(AssertionError, match="1 event is waiting for a database commit"):
            events.assert_logged("shop.Refund")
        [send] = after_commit
        send()

    expect(events.waiting_for_commit).to.equal(0)
    expect(events.assert_logged("shop.Refund", {"order_id": 7}).id).to.equal(event_id)


# ------------------------------------------------- the loop never waits ---


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A Redis URL whose server accepts connections (the kernel does, into
    the backlog of a socket that listens) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def test_alog_leaves_the_loop_running_while_the_direct_mode_waits_for_the_broker(
    shop, silent_broker
):
    eventlib.configure(
        always_eager=False, dispatch="direct", broker_url=silent_broker, broker_timeout=1.5
    )

    ticked = ticking_while(lambda: eventlib.alog("shop.Refund", {"order_id": 7}))

    # alog() waited for the broker, then kept the event in the spool...
    expect(ticked.seconds).to.be.greater_than(1.2)
    expect(spool_status().count).to.equal(1)
    expect(ticked.result).to.be.a(str)
    # ...while the event loop went on.
    expect(ticked.longest_pause).to.be.lower_than(LONGEST_PAUSE)


def test_alog_leaves_the_loop_running_while_the_spool_mode_waits_for_the_file(
    shop, isolation, refusing_port
):
    eventlib.configure(
        always_eager=False,
        dispatch="spool",
        broker_url=f"redis://127.0.0.1:{refusing_port}/0",
        broker_timeout=5.0,
    )
    # Another process (here, another connection) writes to the spool file.
    locker = sqlite3.connect(
        isolation.root / "eventlib-spool.sqlite", isolation_level=None, check_same_thread=False
    )
    locker.execute("begin exclusive")
    unlock = threading.Timer(1.5, locker.rollback)
    unlock.start()
    try:
        ticked = ticking_while(lambda: eventlib.alog("shop.Refund", {"order_id": 7}))
    finally:
        unlock.join()
        locker.close()

    expect(ticked.seconds).to.be.greater_than(1.2)
    expect(spool_status().count).to.equal(1)
    expect(ticked.longest_pause).to.be.lower_than(LONGEST_PAUSE)


# ---------------------------------------------------------------- Django ---


def test_log_with_on_commit_in_a_coroutine_says_to_await_alog(shop, django_ready):
    from django.core.exceptions import SynchronousOnlyOperation

    dispatch.set_transaction_hook(django_ready.hook)  # the isolation fixture puts it back

    async def view() -> None:
        eventlib.log("shop.Refund", {"order_id": 7}, on_commit=True)

    with pytest.raises(SynchronousOnlyOperation) as error:
        asyncio.run(view())

    expect(error.value.__notes__).to.equal(
        [
            "eventlib.log(..., on_commit=True) was called in a coroutine: there, use "
            "`await eventlib.alog(..., on_commit=True)`, which waits for the transaction "
            "of the request's database connection"
        ]
    )
