"""``eventlib.tasks``: discovery when a worker starts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from celery.signals import worker_init
from sure import expect

import eventlib
from eventlib import HANDLER_REGISTRY
from eventlib.tasks import _discover_at_worker_start

SHOP_EVENTS = """
    from eventlib import BaseEvent


    class Refund(BaseEvent):
        pass
"""

# Declared in another app: registered only once something imports crm.events.
CRM_EVENTS = """
    from eventlib import handler


    @handler('shop.Refund')
    def follow_up(event):
        pass
"""

BROKEN_EVENTS = "raise RuntimeError('broken')\n"


def start_worker() -> object:
    """Send ``worker_init`` as a Celery worker does when it starts, and
    return what eventlib's receiver answered."""
    responses = dict(worker_init.send(sender=None))
    return responses[_discover_at_worker_start]


def test_worker_start_registers_the_function_handlers_of_the_configured_apps(isolation):
    isolation.write("shop/events.py", SHOP_EVENTS)
    isolation.write("crm/events.py", CRM_EVENTS)
    eventlib.configure(apps=["shop", "crm"])
    from shop.events import Refund

    expect(HANDLER_REGISTRY[Refund]).to.equal([])
    expect(sys.modules).to_not.contain("crm.events")

    expect(start_worker()).to.be(None)

    expect(HANDLER_REGISTRY[Refund]).to.equal([sys.modules["crm.events"].follow_up])


def test_worker_start_stops_on_an_events_module_that_fails_to_import(isolation, caplog):
    isolation.write("shop/events.py", SHOP_EVENTS)
    isolation.write("broken/events.py", BROKEN_EVENTS)
    eventlib.configure(apps=["shop", "broken"])

    # Not an Exception, which Celery's signal would log and swallow.
    with pytest.raises(SystemExit) as stopped:
        start_worker()

    expect(stopped.value.code).to.equal("eventlib: the worker cannot start: RuntimeError('broken')")
    expect(stopped.value.__cause__).to.be.a(RuntimeError)
    [record] = [r for r in caplog.records if r.name == "eventlib"]
    expect(record.levelno).to.equal(logging.CRITICAL)
    expect(record.getMessage()).to.equal(
        "The worker cannot start: importing the events modules of its apps failed"
    )
    expect(record.exc_info[1]).to.be(stopped.value.__cause__)


def test_a_celery_worker_exits_when_an_events_module_fails_to_import(isolation):
    """The real thing: a project's own worker (``celery -A proj worker``,
    eventlib's tasks being shared) exits at once, saying why, instead of
    consuming events without the handlers of the broken app."""
    isolation.write("broken/events.py", BROKEN_EVENTS)
    isolation.write(
        "proj/celery.py",
        """
        from celery import Celery

        import eventlib

        app = Celery('proj', broker='memory://')
        """,
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(isolation.root), env.get("PYTHONPATH")]))
    env["EVENTLIB_APPS"] = "broken"
    command = [sys.executable, "-m", "celery", "-A", "proj.celery:app", "worker"]

    # Should the worker start after all, the timeout ends the test as a failure.
    result = subprocess.run(
        [*command, "--pool=solo", "--queues=eventlib", "--loglevel=INFO"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=isolation.root,
    )

    expect(result.returncode).to.equal(1)
    lines = result.stderr.splitlines()
    expect(lines[-1]).to.equal("eventlib: the worker cannot start: RuntimeError('broken')")
    expect(lines).to.contain(
        "The worker cannot start: importing the events modules of its apps failed"
    )
    expect(result.stderr).to_not.contain("ready.")


BATCH_EVENTS = """
    from eventlib import BaseEvent, handler

    SEEN = []


    class Purchase(BaseEvent):
        @handler
        def fails_on_two(self):
            if self.data['n'] == 2:
                raise RuntimeError('no second purchase')
            SEEN.append(('fails_on_two', self.data['n']))

        @handler
        def record(self):
            SEEN.append(('record', self.data['n']))
"""


def test_a_batch_runs_every_event_as_process_does_and_a_failure_stops_nothing(isolation, tmp_path):
    """A batch of four events, of which one has a failing handler and one
    names no event at all: every other handler of every event runs, in
    order, and each failure becomes a dead letter."""
    from eventlib import deadletters
    from eventlib.serialization import serialize_event
    from eventlib.tasks import process_batch

    isolation.write("shop/events.py", BATCH_EVENTS)
    eventlib.configure(always_eager=True, raise_errors=False)
    from shop.events import SEEN, Purchase

    payloads = [serialize_event(Purchase({"n": n})) for n in range(1, 4)]
    events = [
        ["shop.Purchase", payloads[0]],
        ["shop.Missing", payloads[1]],
        ["shop.Purchase", payloads[1]],
        ["shop.Purchase", payloads[2]],
    ]

    process_batch.apply(args=(events,))

    expect(SEEN).to.equal(
        [
            ("fails_on_two", 1),
            ("record", 1),
            ("record", 2),
            ("fails_on_two", 3),
            ("record", 3),
        ]
    )
    letters = {(letter.event_name, letter.handler) for letter in deadletters.list_dead_letters()}
    expect(letters).to.equal(
        {
            ("shop.Missing", None),
            ("shop.Purchase", "shop.events.Purchase.fails_on_two"),
        }
    )
