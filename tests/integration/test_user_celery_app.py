"""A project with a Celery app of its own (the ``celery_app`` setting): the
web process publishes through eventlib's producers for that app, and the
project's worker, started the usual way (``celery -A proj worker -Q
<queue>``), runs every handler."""

from __future__ import annotations

import pytest
from celery import Celery

import eventlib

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
