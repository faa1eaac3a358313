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

from .support import Worker, wait_for

USER_APP = """
import os

from celery import Celery

# include: the worker registers eventlib's task (docs/deployment.md).
app = Celery("proj", broker=os.environ["EVENTLIB_BROKER_URL"], include=["eventlib.tasks"])
"""


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_events_published_with_the_users_app_are_processed_by_its_worker(
    project, isolation, broker
):
    isolation.write("proj/__init__.py", USER_APP)
    queue = project.settings["EVENTLIB_QUEUE"]
    worker = Worker(
        project.environment(),
        project.tmp_path / "celery.log",
        "proj",
        command=["celery", "-A", "proj", "worker", "--queues", queue],
    )
    project.workers.append(worker)
    worker.wait_ready()
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
    isolation.write("proj/__init__.py", USER_APP)
    (isolation.root / "log_purchases.py").write_text(LOGGING_SCRIPT)
    env = {key: value for key, value in project.environment().items() if key != "PYTHONPATH"}
    queue = project.settings["EVENTLIB_QUEUE"]
    worker = Worker(
        env,
        project.tmp_path / "celery.log",
        "proj",
        command=["celery", "-A", "proj", "worker", "--queues", queue],
        cwd=isolation.root,
    )
    project.workers.append(worker)
    worker.wait_ready()

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
