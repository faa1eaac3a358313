"""A project with a Celery app of its own (the ``celery_app`` setting): the
web process publishes through eventlib's producers for that app, and the
project's worker, started the usual way (``celery -A proj worker -Q
<queue>``), runs every handler."""

from __future__ import annotations

import subprocess
import sys

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


class CeleryWorker(Worker):
    """``celery -A proj worker`` for the queue, in a process group of its own."""

    def __init__(self, env: dict[str, str], log_path, queue: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "proj",
                "worker",
                "--queues",
                queue,
                "--loglevel=INFO",
                "--concurrency=2",
                "--without-mingle",
                "--without-gossip",
                "--hostname=proj@%h",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_events_published_with_the_users_app_are_processed_by_its_worker(
    project, isolation, broker
):
    isolation.write("proj/__init__.py", USER_APP)
    worker = CeleryWorker(
        project.environment(), project.tmp_path / "celery.log", project.settings["EVENTLIB_QUEUE"]
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
