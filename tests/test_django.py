"""``eventlib.contrib.django`` in a real Django project (tests/django_project)
on an SQLite database file.

Django can be set up only once per process: the session fixture
``django_ready`` of tests/conftest.py does it, for this module and
tests/test_django_http.py, whichever runs first.  The ``django_project``
fixture gives this module's tests the handler registry and transaction hook
``ready()`` installed, and gives eventlib back its own when the module is
done.  Each test then configures eventlib from the Django settings again, since
the ``isolation`` fixture resets eventlib's settings after every test.

Handlers run eagerly, in this process.  The shop's handler reads the order
through the database alias ``worker``, a second connection to the same file,
so it sees what a worker process would: committed rows only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from celery import Celery
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.test import override_settings

import eventlib
from eventlib import conf, dispatch
from eventlib.contrib.django import configure_from_settings
from eventlib.registry import HANDLER_REGISTRY

from .conftest import DJANGO_APPS, DjangoReady

ORDER_PLACED = "django_project.shop.OrderPlaced"


class Project:
    """What the tests need from the set-up project."""

    def __init__(self, settings_at_ready: conf.Settings, modules_at_ready: set[str]) -> None:
        from django_project.notifications import events as notifications
        from django_project.shop import events as shop
        from django_project.shop.models import Order

        #: eventlib's settings and the modules imported right after ``django.setup()``.
        self.settings_at_ready = settings_at_ready
        self.modules_at_ready = modules_at_ready
        self.Order = Order
        self.OrderPlaced = shop.OrderPlaced
        self.looked_up = shop.LOOKED_UP
        self.notified = notifications.NOTIFIED
        self.notify_customer = notifications.notify_customer

    def place_order(self, customer: str, **log_options: bool) -> tuple[int, str | None]:
        """Create an order and log ``OrderPlaced`` for it; return its id and
        the event's id."""
        order = self.Order.objects.create(customer=customer)
        return order.pk, eventlib.log(ORDER_PLACED, {"order_id": order.pk}, **log_options)


@pytest.fixture(scope="module")
def django_project(django_ready: DjangoReady) -> Iterator[Project]:
    """The project (tests/conftest.py sets Django up), with the handler
    registry and transaction hook its ``ready()`` installed, given back to
    eventlib as they were when the module is done."""
    registry_before = HANDLER_REGISTRY._snapshot()
    hook_before = dispatch.transaction_hook()
    HANDLER_REGISTRY._restore(django_ready.registry)
    dispatch.set_transaction_hook(django_ready.hook)
    try:
        yield Project(django_ready.settings, set(django_ready.modules))
    finally:
        connections.close_all()
        HANDLER_REGISTRY._restore(registry_before)
        dispatch.set_transaction_hook(hook_before)


@pytest.fixture
def project(django_project: Project, isolation: object) -> Iterator[Project]:
    """The project, with eventlib configured from its settings, no orders and
    nothing recorded by its handlers."""
    configure_from_settings()
    yield django_project
    django_project.Order.objects.all().delete()
    django_project.looked_up.clear()
    django_project.notified.clear()


class Refused(Exception):
    """Raised to roll a transaction back."""


# ------------------------------------------------------------- ready() ---


def test_ready_imports_the_events_module_of_every_installed_app(project):
    assert {"django_project.shop.events", "django_project.notifications.events"} <= (
        project.modules_at_ready
    )
    assert HANDLER_REGISTRY[project.OrderPlaced] == [
        project.OrderPlaced.look_up_order,
        project.notify_customer,
    ]


def test_ready_configures_eventlib_from_the_django_settings(project):
    assert apps.get_app_config("eventlib").name == "eventlib.contrib.django"
    assert project.settings_at_ready.always_eager is True
    assert project.settings_at_ready.queue == "shop-events"
    assert project.settings_at_ready.apps == tuple(DJANGO_APPS)


# ------------------------------------------------------------ settings ---


def test_every_eventlib_setting_can_come_from_the_django_settings(project):
    celery_app = Celery("elsewhere", set_as_current=False)
    with override_settings(
        EVENTLIB_ALWAYS_EAGER=False,
        EVENTLIB_RAISE_ERRORS=True,
        EVENTLIB_APPS=["django_project.shop"],
        EVENTLIB_BROKER_URL="redis://broker:6379/0",
        EVENTLIB_QUEUE="other-queue",
        EVENTLIB_BROKER_TIMEOUT=5,
        EVENTLIB_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 60},
        EVENTLIB_ON_COMMIT=True,
        EVENTLIB_CELERY_APP=celery_app,
    ):
        configured = configure_from_settings()
    assert configured == conf.get_settings()
    assert configured.always_eager is False
    assert configured.raise_errors is True
    assert configured.apps == ("django_project.shop",)
    assert configured.broker_url == "redis://broker:6379/0"
    assert configured.queue == "other-queue"
    assert configured.broker_timeout == 5.0
    assert configured.broker_transport_options == {"visibility_timeout": 60}
    assert configured.on_commit is True
    assert configured.celery_app is celery_app


def test_the_celery_app_setting_may_be_a_dotted_path_and_events_go_through_that_app(project):
    from django_project.celery import app

    with override_settings(
        EVENTLIB_CELERY_APP="django_project.celery.app", EVENTLIB_ALWAYS_EAGER=False
    ):
        configured = configure_from_settings()
    assert configured.celery_app is app
    order_id, event_id = project.place_order("Ana")
    assert project.looked_up == [(order_id, "Ana")]
    assert project.notified == [event_id]


def test_a_celery_app_path_that_does_not_import_is_refused(project):
    with (
        override_settings(EVENTLIB_CELERY_APP="django_project.celery.missing"),
        pytest.raises(ImproperlyConfigured) as raised,
    ):
        configure_from_settings()
    assert str(raised.value).startswith(
        "EVENTLIB_CELERY_APP = 'django_project.celery.missing' does not import:"
    )


def test_an_unknown_eventlib_setting_is_refused_by_name(project):
    with (
        override_settings(EVENTLIB_BROKER="redis://broker"),
        pytest.raises(ImproperlyConfigured) as raised,
    ):
        configure_from_settings()
    message = str(raised.value)
    assert message.startswith("Unknown setting(s) EVENTLIB_BROKER: eventlib's settings are ")
    assert "EVENTLIB_BROKER_URL" in message
    assert conf.get_settings().broker_url is None


def test_a_value_eventlib_refuses_is_reported_and_changes_nothing(project):
    with (
        override_settings(EVENTLIB_QUEUE="other", EVENTLIB_ON_COMMIT="yes"),
        pytest.raises(ImproperlyConfigured) as raised,
    ):
        configure_from_settings()
    assert str(raised.value) == (
        "Invalid EVENTLIB_* setting: on_commit must be True or False, not 'yes'"
    )
    assert isinstance(raised.value.__cause__, eventlib.ConfigurationError)
    assert conf.get_settings().queue == "shop-events"


def test_any_object_with_eventlib_attributes_can_be_read(project):
    class ScriptSettings:
        EVENTLIB_APPS = ("django_project.shop",)
        EVENTLIB_QUEUE = "script-queue"
        DEBUG = True

    configured = configure_from_settings(ScriptSettings)
    assert (configured.apps, configured.queue) == (("django_project.shop",), "script-queue")


# ----------------------------------------------------------- on_commit ---


def test_on_commit_sends_when_the_transaction_commits_and_the_handler_finds_the_row(project):
    with transaction.atomic():
        order_id, event_id = project.place_order("Ana", on_commit=True)
        assert project.looked_up == []
        assert project.notified == []
    assert project.looked_up == [(order_id, "Ana")]
    assert project.notified == [event_id]


def test_without_on_commit_the_handler_runs_before_the_row_is_committed(project):
    with transaction.atomic():
        order_id, event_id = project.place_order("Ana")
        assert project.looked_up == [(order_id, None)]
    assert project.notified == [event_id]


def test_an_event_logged_in_a_transaction_that_rolls_back_is_never_sent(project):
    with pytest.raises(Refused), transaction.atomic():
        project.place_order("Ana", on_commit=True)
        raise Refused
    with transaction.atomic():
        project.Order.objects.create(customer="Bea")
    assert project.looked_up == []
    assert project.notified == []
    assert list(project.Order.objects.values_list("customer", flat=True)) == ["Bea"]


def test_an_event_logged_in_a_savepoint_that_rolls_back_is_never_sent(project):
    with transaction.atomic():
        kept_id, _ = project.place_order("Ana", on_commit=True)
        with pytest.raises(Refused), transaction.atomic():
            project.place_order("Bea", on_commit=True)
            raise Refused
        assert project.looked_up == []
    assert project.looked_up == [(kept_id, "Ana")]
    assert len(project.notified) == 1


def test_on_commit_outside_a_transaction_sends_at_once(project):
    order_id, event_id = project.place_order("Ana", on_commit=True)
    assert project.looked_up == [(order_id, "Ana")]
    assert project.notified == [event_id]


def test_the_on_commit_setting_makes_it_the_default(project):
    with override_settings(EVENTLIB_ON_COMMIT=True):
        configure_from_settings()
    with transaction.atomic():
        order_id, _ = project.place_order("Ana")
        assert project.looked_up == []
    assert project.looked_up == [(order_id, "Ana")]


def test_on_commit_false_overrides_the_setting(project):
    with override_settings(EVENTLIB_ON_COMMIT=True):
        configure_from_settings()
    with transaction.atomic():
        order_id, _ = project.place_order("Ana", on_commit=False)
        assert project.looked_up == [(order_id, None)]


def test_with_on_commit_invalid_data_is_refused_at_once(project):
    with pytest.raises(eventlib.ValidationError), transaction.atomic():
        eventlib.log(ORDER_PLACED, {"customer": "Ana"}, on_commit=True)
    assert project.looked_up == []


# ------------------------------------------------------ without Django ---


def test_eventlib_works_without_django(tmp_path):
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").touch()
    (tmp_path / "shop" / "events.py").write_text(
        textwrap.dedent(
            """
            import eventlib

            class Refund(eventlib.BaseEvent):
                @eventlib.handler
                def announce(self):
                    print("refunded", self.data["order_id"])
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys


        class WithoutDjango:  # imports Django as if it were not installed
            def find_spec(self, name, path, target=None):
                if name.partition(".")[0] == "django":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)


        sys.meta_path.insert(0, WithoutDjango())
        import eventlib, eventlib.cli, eventlib.testing, eventlib.contrib.pytest

        eventlib.configure(always_eager=True)
        eventlib.log("shop.Refund", {"order_id": 7})
        try:
            import eventlib.contrib.django
        except ImportError as error:
            print("ImportError:", error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "refunded 7",
        "ImportError: No module named 'django'",
    ]


def test_an_event_that_cannot_be_sent_after_the_commit_is_logged_not_raised(project, caplog):
    with override_settings(
        EVENTLIB_ALWAYS_EAGER=False,
        EVENTLIB_BROKER_URL="amqp://guest@127.0.0.1:1//",
        EVENTLIB_BROKER_TIMEOUT=0.5,
        EVENTLIB_DISPATCH="direct",
        EVENTLIB_SPOOL_PATH="/nonexistent-eventlib-dir/spool.sqlite",
    ):
        configure_from_settings()
    with transaction.atomic():
        order_id, event_id = project.place_order("Ana", on_commit=True)
    assert project.Order.objects.using("worker").get(pk=order_id).customer == "Ana"
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert isinstance(record.exc_info[1], eventlib.DispatchError)
    assert f"could not send the event {ORDER_PLACED} (id {event_id})" in str(record.exc_info[1])
