"""Redis killed under a worker that holds an event: kombu's Redis transport
kills a worker that consumes a fanout queue too ("Unrecoverable error:
AttributeError(\\"'NoneType' object has no attribute 'hostname'\\")"), and
what keeps every event all the same (docs/reliability.md).  The private
Redis of test_outage.py, killed by its pid; never the shared one."""

from __future__ import annotations

import eventlib

from ..waiting import wait_for
from . import test_outage
from .support import Project, Worker
from .test_outage import PrivateRedis

# A Redis of the test's own (appendonly, so that a restart loses nothing),
# and a project on it whose visibility_timeout is 5 seconds.
redis_server = test_outage.redis_server
outage_project = test_outage.outage_project

CRASH = "Unrecoverable error: AttributeError(\"'NoneType' object has no attribute 'hostname'\")"

#: How long the held event's first run keeps its message unacknowledged.
HOLD_SECONDS = 4

#: A project's own Celery app with the setting docs/reliability.md
#: recommends; the Worker class runs it with --without-gossip too.
USER_APP = """
import json
import os

from celery import Celery

app = Celery("proj", broker=os.environ["EVENTLIB_BROKER_URL"], include=["eventlib.tasks"])
app.conf.broker_transport_options = json.loads(os.environ["EVENTLIB_BROKER_TRANSPORT_OPTIONS"])
app.conf.worker_enable_remote_control = False
"""


def kill_redis_while_an_event_is_held(project: Project, redis: PrivateRedis, worker: Worker) -> str:
    """Log a held event and kill Redis while its handler runs: the worker
    holds its message, unacknowledged, and waits on an empty queue."""
    event_id = eventlib.log("shop.Held", {"seconds": HOLD_SECONDS})
    wait_for(lambda: project.records.count("held") == 1, 60, "the held event to start")
    redis.kill()
    wait_for(
        lambda: "Connection to broker lost" in worker.log,
        30,
        f"the worker to see Redis go; its log:\n{worker.log}",
    )
    return event_id


def wait_until_processed(project: Project, held: str, others: list[str]) -> None:
    """Every event ran to its end; the held one at most twice (given back
    after the visibility timeout, its first run's acknowledgement having
    failed with Redis), the others once."""
    wait_for(
        lambda: (
            held in project.records.runs_per_event("released")
            and set(others) <= set(project.records.runs_per_event("audit"))
        ),
        120,
        "every event to be processed",
    )
    assert project.records.runs_per_event("released")[held] <= 2
    assert project.records.runs_per_event("audit") == dict.fromkeys(others, 1)


def test_redis_dying_under_a_worker_holding_an_event_kills_it_and_its_restart_loses_nothing(
    outage_project, redis_server
):
    """eventlib's own app consumes its remote-control (fanout) queue: the
    connection error surfaces there while the task channel waits in BRPOP,
    the channel's close is cut short, and the second close, after kombu has
    dropped the transport's client, restores the held message through a new
    Redis client built from that client: the worker dies.  Started again, as
    a supervisor does, a worker gets the held event back and loses none."""
    project = outage_project
    crashed = project.start_worker()
    project.configure_here()

    held = kill_redis_while_an_event_is_held(project, redis_server, crashed)

    wait_for(lambda: CRASH in crashed.log, 30, f"the worker to crash; its log:\n{crashed.log}")
    redis_server.start()
    # It finishes the handler it runs (a warm shutdown), then exits.
    wait_for(
        lambda: crashed.process.poll() is not None,
        HOLD_SECONDS + 60,
        f"the crashed worker to exit; its log:\n{crashed.log}",
    )
    # A supervisor that restarts only what failed sees it fail.
    assert crashed.process.returncode != 0, "eventlib worker exited 0 after a crash"
    others = [eventlib.log("shop.Purchase", {"sku": f"after-{n}"}) for n in range(20)]
    project.start_worker()  # what a supervisor does

    wait_until_processed(project, held, others)


def test_a_worker_without_remote_control_or_gossip_outlives_redis_and_loses_nothing(
    outage_project, redis_server, isolation
):
    """With ``worker_enable_remote_control = False`` and ``--without-gossip``
    the worker consumes no fanout queue: the error surfaces in BRPOP, the
    channel closes cleanly and the worker reconnects once Redis is back.
    The held event runs to its end: once when its acknowledgement reaches
    the restarted Redis, twice when it is given back after the visibility
    timeout."""
    project = outage_project
    isolation.write("proj/__init__.py", USER_APP)
    worker = Worker(
        project.environment(),
        project.tmp_path / "proj-worker.log",
        "proj",
        command=["celery", "-A", "proj", "worker", "--queues", project.settings["EVENTLIB_QUEUE"]],
    )
    project.workers.append(worker)
    worker.wait_ready()
    project.configure_here()

    held = kill_redis_while_an_event_is_held(project, redis_server, worker)

    redis_server.start()

    def reconnected() -> bool:
        assert CRASH not in worker.log, f"the worker crashed; its log:\n{worker.log}"
        return worker.log.count("Connected to redis://") == 2

    wait_for(reconnected, 60, f"the worker to reconnect; its log:\n{worker.log}")
    others = [eventlib.log("shop.Purchase", {"sku": f"after-{n}"}) for n in range(20)]

    wait_until_processed(project, held, others)
    assert CRASH not in worker.log
    assert worker.process.poll() is None, f"the worker died; its log:\n{worker.log}"
