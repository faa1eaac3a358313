"""Events through a real broker to real ``eventlib worker`` processes."""

from __future__ import annotations

import json

import pytest

import eventlib

from ..waiting import wait_for
from .support import Worker

EVENTS = 300
HANDLERS = ("count_sale", "add_points", "audit")


def log_purchases(count: int) -> list[str]:
    return [eventlib.log("shop.Purchase", {"sku": f"sku-{n}"}) for n in range(count)]


def test_every_handler_runs_once_per_event_and_failures_are_logged(project):
    worker = project.start_worker()
    project.configure_here()

    ids = log_purchases(EVENTS)

    wait_for(
        lambda: project.records.count() == EVENTS * len(HANDLERS),
        120,
        f"{EVENTS} events x {len(HANDLERS)} handlers to run",
    )
    for handler in HANDLERS:
        assert project.records.runs_per_event(handler) == dict.fromkeys(ids, 1), handler
    # The failing handler sits between the others and stopped none of them.
    log = wait_for(
        lambda: worker.log if worker.log.count("RuntimeError: warehouse down") == EVENTS else "",
        60,
        "every failure to reach the worker log",
    )
    assert "Traceback (most recent call last)" in log
    assert (
        f"Handler shop.events.Purchase.notify_warehouse failed on event shop.Purchase (id {ids[0]})"
        in log
    )


def test_two_workers_share_the_queue_and_each_event_runs_once(project):
    first, second = project.start_worker(), project.start_worker()
    project.configure_here()
    # Small batches, so that there are messages enough for both workers.
    eventlib.configure(batch_size=5)

    ids = log_purchases(EVENTS)

    wait_for(
        lambda: project.records.count() == EVENTS * len(HANDLERS),
        120,
        "every handler of every event to run",
    )
    for handler in HANDLERS:
        assert project.records.runs_per_event(handler) == dict.fromkeys(ids, 1), handler
    took_part = {ppid for (ppid,) in project.records.query("select distinct ppid from runs")}
    assert {first.process.pid, second.process.pid} <= took_part


# Not on the embedded broker: it has no visibility timeout, and an event a
# killed worker was processing is lost (docs/deployment.md says so).
@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_an_event_being_processed_by_a_killed_worker_runs_again(project, broker):
    if broker.startswith("redis"):
        # Redis has no acknowledgement on disconnect: an unacknowledged
        # message comes back after visibility_timeout, restored by a live
        # worker's sweep.  Short values keep the test short.
        project.settings["EVENTLIB_BROKER_TRANSPORT_OPTIONS"] = json.dumps(
            {"visibility_timeout": 3, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
        )
    first = project.start_worker()
    project.configure_here()

    event_id = eventlib.log("shop.Slow", {})
    wait_for(lambda: project.records.count("started") == 1, 60, "the handler to start")
    first.kill()
    assert project.records.count("finished") == 0

    project.start_worker()

    wait_for(lambda: project.records.count("finished") == 1, 90, "the event to run again")
    assert project.records.runs_per_event("started") == {event_id: 2}


# On every broker, the embedded one included: the worker's main process, not
# the broker, gives the message back.
@pytest.mark.parametrize("broker", ["amqp", "embedded", "redis"], indirect=True)
def test_an_event_whose_pool_process_is_killed_runs_again_in_the_same_worker(project, broker):
    """The main process stays alive, so its broker connection stays open and
    nothing times out: the message comes back only because the task has
    ``reject_on_worker_lost`` (with ``acks_late`` alone Celery acknowledges
    the message of a lost pool process, and the event is lost)."""
    if broker.startswith("redis"):
        # An hour (Redis's default, explicit here): an unacknowledged message
        # must not come back through the visibility timeout during the test.
        project.settings["EVENTLIB_BROKER_TRANSPORT_OPTIONS"] = json.dumps(
            {"visibility_timeout": 3600}
        )
    worker = project.start_worker()
    project.configure_here()

    event_id = eventlib.log("shop.Slow", {})
    [(first_pid, first_ppid)] = wait_for(
        lambda: project.records.query("select pid, ppid from runs where handler = 'started'"),
        60,
        "the handler to start",
    )
    assert first_ppid == worker.process.pid  # it runs in a pool process
    worker.kill_pool_process(first_pid)

    wait_for(lambda: project.records.count("finished") == 1, 60, "the event to run again")
    wait_for(
        lambda: f"pid:{first_pid} exited with 'signal 9 (SIGKILL)'" in worker.log,
        60,
        f"the worker to log the lost pool process; its log:\n{worker.log}",
    )
    assert worker.process.poll() is None, "the worker's main process died"
    started = project.records.query(
        "select event_id, pid, ppid from runs where handler = 'started' order by at"
    )
    # Run again by a new pool process of the same worker, to completion.
    assert [(event, ppid) for event, _, ppid in started] == [(event_id, worker.process.pid)] * 2
    assert started[1][1] != first_pid
    [(finished_pid,)] = project.records.query("select pid from runs where handler = 'finished'")
    assert finished_pid == started[1][1]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_events_logged_by_handlers_leave_with_a_pool_process_that_ends(project):
    """A pool process replaced after each task (``--max-tasks-per-child=1``)
    ends without the interpreter's exit functions: the events its handlers
    logged, in the background mode, are published as it ends."""
    project.workers.append(
        Worker(
            project.environment(),
            project.tmp_path / "worker.log",
            "w0",
            command=["eventlib", "worker", "--max-tasks-per-child=1"],
        )
    )
    project.workers[-1].wait_ready()
    project.configure_here()

    # Enough events per task that some still wait in memory as it ends.
    chains = [eventlib.log("shop.Chain", {"count": 500}) for _ in range(3)]

    wait_for(
        lambda: project.records.count("audit") == 500 * len(chains),
        60,
        f"the events logged by the handlers to run; worker log:\n{project.workers[-1].log}",
    )
    assert project.records.runs_per_event("followed_up") == dict.fromkeys(chains, 1)
