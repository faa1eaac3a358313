"""A project with a Celery app of its own (the ``celery_app`` setting): the
web process publishes through eventlib's producers for that app, and the
project's worker, started the usual way (``celery -A proj worker -Q
<queue>``, also from the project's folder with nothing on PYTHONPATH), runs
every handler."""

from __future__ import annotations

import subprocess
import sys

import pytest
from celery import Celery

import eventlib
from eventlib.conf import state_directory

from ..waiting import wait_for
from .support import Worker

USER_APP = """
import os

from celery import Celery

# include: the worker registers eventlib's task (docs/deployment.md).
app = Celery("proj", broker=os.environ["EVENTLIB_BROKER_URL"], include=["eventlib.tasks"])
"""


def start_project_worker(
    project, isolation, *options: str, env: dict[str, str] | None = None, cwd=None
) -> Worker:
    """The project's own ``celery -A proj worker *options``, ready."""
    isolation.write("proj/__init__.py", USER_APP)
    worker = Worker(
        project.environment() if env is None else env,
        project.tmp_path / "celery.log",
        "proj",
        command=["celery", "-A", "proj", "worker", *options],
        cwd=cwd,
    )
    project.workers.append(worker)
    worker.wait_ready()
    return worker


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_events_published_with_the_users_app_are_processed_by_its_worker(
    project, isolation, broker
):
    queue = project.settings["EVENTLIB_QUEUE"]
    worker = start_project_worker(project, isolation, "--queues", queue)
    project.configure_here()
    eventlib.configure(celery_app=Celery("proj", broker=broker, set_as_current=False))

    ids = [eventlib.log("shop.Purchase", {"sku": f"sku-{n}"}) for n in range(20)]

    wait_for(
        lambda: set(project.records.runs_per_event("audit")) == set(ids),
        60,
        f"every event to run; worker log:\n{worker.log}",
    )
    for handler in ("count_sale", "add_points", "audit"):
        assert project.records.runs_per_event(handler) == dict.fromkeys(ids, 1)


LOGGING_SCRIPT = """
import sys

import eventlib

# What docs/deployment.md shows: the project's app, by its import path.
eventlib.configure(celery_app="proj:app")
for n in range(int(sys.argv[1])):
    print(eventlib.log("shop.Purchase", {"sku": f"sku-{n}"}))
# No flush: a script that ends publishes what it logged on its way out.
"""


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_script_and_the_projects_worker_run_from_the_projects_folder(project, isolation):
    """The user's path: ``celery -A proj worker`` started in the project's
    folder, nothing on PYTHONPATH, finds the ``shop`` app it discovers; a
    script run from there logs a burst and ends at once, without a flush,
    and every event is published (in batches) and processed once."""
    (isolation.root / "log_purchases.py").write_text(LOGGING_SCRIPT)
    env = {key: value for key, value in project.environment().items() if key != "PYTHONPATH"}
    queue = project.settings["EVENTLIB_QUEUE"]
    worker = start_project_worker(
        project, isolation, "--queues", queue, env=env, cwd=isolation.root
    )

    script = subprocess.run(
        [sys.executable, "log_purchases.py", "300"],
        cwd=isolation.root,
        env={**env, "EVENTLIB_CELERY_APP": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert script.returncode == 0, script.stderr
    ids = script.stdout.split()
    assert len(ids) == 300
    assert "spool" not in script.stderr, script.stderr  # published, not spooled
    wait_for(
        lambda: set(project.records.runs_per_event("audit")) == set(ids),
        60,
        f"every event to run; worker log:\n{worker.log}",
    )
    assert project.records.runs_per_event("audit") == dict.fromkeys(ids, 1)
    assert "Task eventlib batch: shop.Purchase x" in worker.log  # batches, by their shadow name
    assert not (state_directory() / "spool.sqlite").exists()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_plain_celery_worker_consumes_eventlib_s_queue_and_says_so(project, isolation):
    """``celery -A proj worker`` with no ``-Q``: Celery alone would consume
    only its ``celery`` queue and leave every event waiting, silently."""
    queue = project.settings["EVENTLIB_QUEUE"]
    worker = start_project_worker(project, isolation)
    project.configure_here()

    ids = [eventlib.log("shop.Purchase", {"sku": f"sku-{n}"}) for n in range(10)]

    wait_for(
        lambda: set(project.records.runs_per_event("audit")) == set(ids),
        60,
        f"every event to run; worker log:\n{worker.log}",
    )
    assert f"This worker consumes eventlib's queue '{queue}' too" in worker.log
    assert f".> {queue}" in worker.log  # in Celery's banner


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_celery_worker_whose_queues_leave_out_eventlib_s_warns(project, isolation):
    queue = project.settings["EVENTLIB_QUEUE"]
    worker = start_project_worker(project, isolation, "-Q", "celery")

    assert (
        f"This worker consumes celery but not eventlib's queue '{queue}': events sent "
        f"there wait for another worker (add it: -Q celery,{queue})"
    ) in worker.log
    assert f".> {queue}" not in worker.log


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_setting_leaves_eventlib_s_queue_to_other_workers(project, isolation):
    queue = project.settings["EVENTLIB_QUEUE"]
    env = {**project.environment(), "EVENTLIB_WORKER_CONSUMES_QUEUE": "0"}
    worker = start_project_worker(project, isolation, env=env)

    assert f"This worker does not consume eventlib's queue '{queue}'" in worker.log
    assert f".> {queue}" not in worker.log
