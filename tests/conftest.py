from __future__ import annotations

import importlib
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from eventlib import conf, dispatch
from eventlib.registry import HANDLER_REGISTRY

TESTS = Path(__file__).parent
#: The installed apps of the Django project the Django tests share.
DJANGO_APPS = [
    "django.contrib.contenttypes",
    "eventlib.contrib.django",
    "django_project.shop",
    "django_project.notifications",
]


@pytest.fixture(autouse=True)
def _isolated(isolation):
    """Every test starts from default settings and an empty registry."""
    return isolation


@pytest.fixture
def shop(isolation, request):
    """The app ``shop``: the ``SHOP_EVENTS`` source of the test's module,
    written as ``shop/events.py`` and imported; returns that module.  A test
    module that needs more (settings, other apps) extends it with a fixture
    of its own named ``shop``."""
    isolation.write("shop/events.py", request.module.SHOP_EVENTS)
    return importlib.import_module("shop.events")


@pytest.fixture
def refusing_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    """A user's Celery app on kombu's in-memory broker, for sending without
    running.  Its queues are shared by every connection in this process:
    they are emptied around the test."""
    app = Celery("proj", broker="memory://", set_as_current=False)
    _purge(app)
    yield app
    _purge(app)
    app.close()


def _purge(app: Celery) -> None:
    with app.connection_for_write() as connection:
        for name in ("eventlib", "refunds"):
            queue = connection.SimpleQueue(name)
            queue.clear()
            queue.close()


@dataclass(frozen=True)
class DjangoReady:
    """What ``django.setup()`` left: eventlib's settings and the modules
    imported right after it, and the handler registry and transaction hook
    that ``eventlib.contrib.django``'s ``ready()`` installed."""

    settings: conf.Settings
    modules: frozenset[str]
    registry: Any
    hook: Any


@pytest.fixture(scope="session")
def django_ready(tmp_path_factory: pytest.TempPathFactory) -> DjangoReady:
    """Django, set up once for the whole run, since a process can set it up
    only once: tests/django_project (``DJANGO_APPS``) on an SQLite file, its
    tables created, with the ``worker`` database alias a second connection to
    the same file.  Whichever Django test module runs first sets it up.

    eventlib's handler registry and transaction hook are given back as they
    were before ``ready()``: a module that wants Django's installs
    ``registry`` and ``hook`` for its own tests."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    registry_before = HANDLER_REGISTRY._snapshot()
    hook_before = dispatch.transaction_hook()
    database = str(tmp_path_factory.mktemp("django") / "db.sqlite3")
    settings.configure(
        INSTALLED_APPS=DJANGO_APPS,
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database},
            "worker": {"ENGINE": "django.db.backends.sqlite3", "NAME": database},
        },
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None,  # leave logging to pytest
        EVENTLIB_ALWAYS_EAGER=True,
        EVENTLIB_QUEUE="shop-events",
    )
    django.setup()
    ready = DjangoReady(
        conf.get_settings(),
        frozenset(sys.modules),
        HANDLER_REGISTRY._snapshot(),
        dispatch.transaction_hook(),
    )
    call_command("migrate", run_syncdb=True, verbosity=0)
    HANDLER_REGISTRY._restore(registry_before)
    dispatch.set_transaction_hook(hook_before)
    return ready
