"""``await eventlib.alog(..., on_commit=True)`` in an async Django view,
served by a real ASGI server (uvicorn, in a process of its own) and called
over HTTP on the loopback.

The view and its ``atomic()`` helper are docs/django.md's, read from there
as they are written.  The project's handler looks the order up through a
second connection to the database file, as a worker process would, and
writes down what it found.  In eager mode the handler runs in the server
when the event is sent, before the response: it finds the order only if
the event was sent after the commit, and never runs for an order the view
rolled back.  With a broker, a real worker handles the events.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ..http_server import Reply, ServerProcess
from .support import Worker, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "django.md"

SETTINGS = """
    import os

    SECRET_KEY = "test"
    DEBUG = False
    ALLOWED_HOSTS = ["127.0.0.1"]
    INSTALLED_APPS = ["django.contrib.contenttypes", "eventlib.contrib.django", "shop"]
    MIDDLEWARE = []
    ROOT_URLCONF = "shop.urls"
    DATABASE = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["SHOP_DB"],
        "OPTIONS": {"timeout": 30},
    }
    # "observer" is a second connection to the same file: it sees committed rows only.
    DATABASES = {"default": DATABASE, "observer": DATABASE}
    DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
    USE_TZ = True
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,  # uvicorn's
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "root": {"handlers": ["console"], "level": "WARNING"},
    }
    EVENTLIB_QUEUE = os.environ["SHOP_QUEUE"]
    EVENTLIB_SPOOL_PATH = os.environ["SHOP_SPOOL_PATH"]
    EVENTLIB_DEAD_LETTER_URL = os.environ["SHOP_DEAD_LETTER_URL"]
    if "SHOP_BROKER_URL" in os.environ:
        EVENTLIB_BROKER_URL = os.environ["SHOP_BROKER_URL"]
    else:
        EVENTLIB_ALWAYS_EAGER = True
"""

MODELS = """
    from django.db import models


    class Order(models.Model):
        customer = models.CharField(max_length=100)
"""

EVENTS = """
    import json
    import os

    import eventlib

    from .models import Order


    class OrderPlaced(eventlib.BaseEvent):
        def clean(self):
            self.require_data_keys(["order_id"])

        @eventlib.handler
        def look_up_order(self):
            order = Order.objects.using("observer").filter(pk=self.data["order_id"]).first()
            found = [self.id, self.data["order_id"], order and order.customer]
            with open(os.environ["SHOP_SEEN"], "a") as seen:
                seen.write(json.dumps(found) + "\\n")
"""

URLS = """
    from django.urls import path

    from . import views

    urlpatterns = [path("orders/", views.place_order)]
"""

ASGI = """
    import os

    from django.core.asgi import get_asgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_settings")
    application = get_asgi_application()
"""


def documented(path: str) -> str:
    """The Python block of docs/django.md that holds the file ``path``."""
    blocks = re.findall(
        r"```python\n# steadymark: ignore\n# (\S+)\n(.*?)```", DOCS.read_text(), re.S
    )
    [source] = [body for name, body in blocks if name == path]
    return source


class Project:
    """The project on disk, the environment of its processes, and what its
    handler found."""

    def __init__(self, root: Path, queue: str, broker: str | None) -> None:
        self.root = root
        self.database = root / "db.sqlite3"
        self.seen_path = root / "seen.jsonl"
        for relative, source in [
            ("shop_settings.py", textwrap.dedent(SETTINGS)),
            ("asgi.py", textwrap.dedent(ASGI)),
            ("shop/__init__.py", ""),
            ("shop/models.py", textwrap.dedent(MODELS)),
            ("shop/events.py", textwrap.dedent(EVENTS)),
            ("shop/urls.py", textwrap.dedent(URLS)),
            ("shop/transactions.py", documented("shop/transactions.py")),
            ("shop/views.py", documented("shop/views.py")),
        ]:
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        self.env = {key: value for key, value in os.environ.items() if "EVENTLIB_" not in key}
        self.env.update(
            DJANGO_SETTINGS_MODULE="shop_settings",
            PYTHONPATH=str(root),
            SHOP_DB=str(self.database),
            SHOP_SEEN=str(self.seen_path),
            SHOP_QUEUE=queue,
            SHOP_SPOOL_PATH=str(root / "spool.sqlite"),
            SHOP_DEAD_LETTER_URL=f"sqlite:///{root / 'dead-letters.sqlite'}",
        )
        if broker is not None:
            self.env["SHOP_BROKER_URL"] = broker
        migrated = subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--run-syncdb", "--verbosity=0"],
            env=self.env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrated.returncode == 0, migrated.stderr

    def orders(self) -> list[tuple[int, str]]:
        db = sqlite3.connect(self.database, timeout=30)
        try:
            return db.execute("select id, customer from shop_order order by id").fetchall()
        finally:
            db.close()

    def seen(self) -> list[list[Any]]:
        """``[event id, order id, the order's customer or None]`` for each
        run of the handler, in order."""
        if not self.seen_path.exists():
            return []
        return [json.loads(line) for line in self.seen_path.read_text().splitlines()]


@contextmanager
def serve_uvicorn(project: Project) -> Iterator[ServerProcess]:
    """The project's ASGI application under uvicorn, in a process of its
    own, on a loopback socket bound here and handed over as ``--fd``;
    ready once uvicorn says it runs (the application is imported by then)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.set_inheritable(True)
    log = project.root / "uvicorn.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                f"--fd={listener.fileno()}",
                "--lifespan=off",
                "asgi:application",
            ],
            cwd=project.root,
            env={**project.env, "PYTHONUNBUFFERED": "1"},  # its log, as it goes
            pass_fds=(listener.fileno(),),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    port = listener.getsockname()[1]
    listener.close()  # uvicorn has its own copy
    server = ServerProcess("127.0.0.1", port, process, log)
    try:

        def running() -> bool:
            if process.poll() is not None:
                pytest.fail(f"uvicorn stopped with {process.returncode}:\n{server.output()}")
            return "Uvicorn running" in server.output()

        wait_for(running, 60, "uvicorn to start")
        yield server
    finally:
        server.stop()


def place_order(server: ServerProcess, customer: str) -> Reply:
    return server.request(
        "POST",
        "/orders/",
        f"customer={customer}",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )


@pytest.fixture
def eager_project(tmp_path) -> Project:
    return Project(tmp_path, "shop-events", broker=None)


def test_the_async_view_sends_its_event_once_the_order_is_committed(eager_project):
    with serve_uvicorn(eager_project) as server:
        reply = place_order(server, "ada")

    assert reply.status == 201, server.output()
    placed = reply.json()
    assert eager_project.orders() == [(placed["order_id"], "ada")]
    # The handler ran before the response, and found the order committed.
    assert eager_project.seen() == [[placed["event_id"], placed["order_id"], "ada"]]


def test_the_async_view_that_rolls_back_never_sends_its_event(eager_project):
    with serve_uvicorn(eager_project) as server:
        first = place_order(server, "ada")
        refused = place_order(server, "ada")
        after = place_order(server, "bob")

    assert (first.status, refused.status, after.status) == (201, 409, 201), server.output()
    assert refused.json() == {"error": "ada has an order already"}
    ada, bob = first.json(), after.json()
    assert eager_project.orders() == [(ada["order_id"], "ada"), (bob["order_id"], "bob")]
    assert eager_project.seen() == [
        [ada["event_id"], ada["order_id"], "ada"],
        [bob["event_id"], bob["order_id"], "bob"],
    ]


@pytest.mark.parametrize("broker", ["embedded", "redis"], indirect=True)
def test_a_worker_handles_the_events_of_the_async_view(tmp_path, broker, queue):
    project = Project(tmp_path, queue, broker)
    worker = Worker(project.env, tmp_path / "worker.log", "asgi")
    try:
        worker.wait_ready()
        with serve_uvicorn(project) as server:
            replies = [place_order(server, name) for name in ("ada", "ada", "bob")]
            assert [reply.status for reply in replies] == [201, 409, 201], server.output()
            seen = wait_for(
                lambda: len(project.seen()) >= 2 and project.seen(),
                60,
                f"the handler in the worker; its log:\n{worker.log}",
            )
    finally:
        worker.stop()
    ada, bob = replies[0].json(), replies[2].json()
    assert sorted(seen) == sorted(
        [
            [ada["event_id"], ada["order_id"], "ada"],
            [bob["event_id"], bob["order_id"], "bob"],
        ]
    )


def test_uvicorn_stopped_right_after_a_response_keeps_its_event(tmp_path, silent_port):
    """uvicorn handles SIGTERM itself, shuts down, then raises SIGTERM again
    with the handler it found: eventlib's, which publishes or spools what the
    process still holds.  Here the broker accepts connections and never
    answers, so the event is still in memory at the SIGTERM: it ends up in
    the spool, not lost with the process."""
    project = Project(tmp_path, "shop-events", f"redis://127.0.0.1:{silent_port}/0")
    with serve_uvicorn(project) as server:
        reply = place_order(server, "ada")
        assert reply.status == 201, server.output()
        server.stop()  # SIGTERM, at once

    assert server.process.returncode == -15, server.output()
    assert spooled_event_ids(tmp_path) == [reply.json()["event_id"]], server.output()


def spooled_event_ids(root: Path) -> list[str]:
    path = root / "spool.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return [event_id for (event_id,) in db.execute("select event_id from spool order by seq")]
    finally:
        db.close()
