"""``eventlib worker`` and ``eventlib events`` in a Django project: with
``DJANGO_SETTINGS_MODULE`` set, the command sets Django up first, so the
``EVENTLIB_*`` Django settings are used and an events module that imports
its models at the top loads.  A web process logs with ``on_commit=True``; a
real worker runs the handler, which reads and writes through the ORM.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ..waiting import wait_for
from .support import Worker

SETTINGS = """
    import os

    SECRET_KEY = "test"
    INSTALLED_APPS = ["django.contrib.contenttypes", "eventlib.contrib.django", "orders"]
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["SHOP_DB"]}
    }
    DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
    USE_TZ = True
    EVENTLIB_BROKER_URL = os.environ["SHOP_BROKER_URL"]
    EVENTLIB_QUEUE = os.environ["SHOP_QUEUE"]
    EVENTLIB_SPOOL_PATH = os.environ["SHOP_SPOOL_PATH"]
    EVENTLIB_DEAD_LETTER_URL = os.environ["SHOP_DEAD_LETTER_URL"]
"""

MODELS = """
    from django.db import models


    class Order(models.Model):
        customer = models.CharField(max_length=100)


    class Shipment(models.Model):
        order = models.ForeignKey(Order, on_delete=models.CASCADE)
        event_id = models.CharField(max_length=36, unique=True)
"""

EVENTS = """
    import eventlib

    from .models import Order, Shipment  # needs Django set up


    class OrderPlaced(eventlib.BaseEvent):
        def clean(self):
            self.require_data_keys(["order_id"])

        @eventlib.handler
        def ship(self):
            order = Order.objects.get(pk=self.data["order_id"])
            Shipment.objects.create(order=order, event_id=self.id)
"""

PLACE_ORDER = """
    import django

    django.setup()

    from django.db import transaction

    import eventlib
    from orders.models import Order

    with transaction.atomic():
        order = Order.objects.create(customer="ada")
        event_id = eventlib.log("orders.OrderPlaced", {"order_id": order.pk}, on_commit=True)
    print(order.pk, event_id)
"""


class DjangoProject:
    """The project on disk, and the environment of its commands."""

    def __init__(self, root: Path, broker: str, queue: str) -> None:
        self.root = root
        self.database = root / "db.sqlite3"
        for relative, source in [
            ("shop_settings.py", SETTINGS),
            ("orders/__init__.py", ""),
            ("orders/models.py", MODELS),
            ("orders/events.py", EVENTS),
        ]:
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        self.env = {key: value for key, value in os.environ.items() if "EVENTLIB_" not in key}
        self.env.update(
            DJANGO_SETTINGS_MODULE="shop_settings",
            PYTHONPATH=str(root),
            SHOP_DB=str(self.database),
            SHOP_BROKER_URL=broker,
            SHOP_QUEUE=queue,
            SHOP_SPOOL_PATH=str(root / "spool.sqlite"),
            SHOP_DEAD_LETTER_URL=f"sqlite:///{root / 'dead-letters.sqlite'}",
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def shipments(self) -> list[tuple[int, str]]:
        with sqlite3.connect(self.database, timeout=30) as db:
            rows = db.execute("select order_id, event_id from orders_shipment").fetchall()
        db.close()
        return rows


@pytest.fixture
def django_project(tmp_path, broker, queue) -> DjangoProject:
    project = DjangoProject(tmp_path, broker, queue)
    migrated = project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity=0")
    assert migrated.returncode == 0, migrated.stderr
    return project


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_eventlib_events_reads_the_apps_from_the_django_project(django_project):
    result = django_project.run("-m", "eventlib", "events", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"name": "orders.OrderPlaced", "handlers": ["orders.events.OrderPlaced.ship"]}
    ]


@pytest.mark.parametrize("broker", ["embedded", "redis"], indirect=True)
def test_a_worker_started_with_eventlib_worker_runs_orm_handlers_after_the_commit(
    django_project, tmp_path
):
    worker = Worker(django_project.env, tmp_path / "worker.log", "django")
    try:
        worker.wait_ready()
        placed = django_project.run("-c", textwrap.dedent(PLACE_ORDER))
        assert placed.returncode == 0, placed.stderr
        order_id, event_id = placed.stdout.split()

        shipped = wait_for(django_project.shipments, 60, f"the shipment; worker log:\n{worker.log}")
    finally:
        worker.stop()
    assert shipped == [(int(order_id), event_id)]
