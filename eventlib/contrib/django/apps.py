"""The Django app: settings from ``EVENTLIB_*`` Django settings, discovery in
``ready()``, sending after the transaction commits, from sync code and from
coroutines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import AppConfig
from django.apps import apps as django_apps
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation
from django.db import transaction

from eventlib.brokers import project_celery_app
from eventlib.conf import ENV_PREFIX, Settings, configure, get_settings, import_celery_app
from eventlib.discovery import autodiscover
from eventlib.dispatch import set_sync_runner, set_transaction_hook
from eventlib.exceptions import ConfigurationError

__all__ = ["HTTP_SETTING", "SETTING_NAMES", "EventlibConfig", "configure_from_settings"]

#: Each Django setting eventlib reads and the eventlib setting it gives:
#: ``EVENTLIB_BROKER_URL`` gives ``broker_url``.
SETTING_NAMES = {ENV_PREFIX + field.name.upper(): field.name for field in fields(Settings)}
#: The Django setting of the HTTP endpoint's options, read by the view
#: (:func:`eventlib.contrib.django.views.options_from_settings`), not here.
HTTP_SETTING = ENV_PREFIX + "HTTP"


class EventlibConfig(AppConfig):
    """eventlib as a Django app, labelled ``eventlib``."""

    name = "eventlib.contrib.django"
    label = "eventlib"
    verbose_name = "eventlib"

    def ready(self) -> None:
        """Configure eventlib from Django's settings
        (:func:`configure_from_settings`), make ``log(..., on_commit=True)``
        wait with Django's ``transaction.on_commit`` (default database,
        :func:`on_commit`), make ``alog()`` run it, and its other synchronous
        work, where Django's async ORM runs its queries
        (:func:`in_the_connections_thread`), then import the ``events`` module
        of every app in the ``apps`` setting.

        The hook is robust: an event that cannot be sent after the commit
        (:class:`~eventlib.DispatchError`) is logged by Django at ERROR level
        and the other callbacks still run, rather than the error reaching the
        code that committed, whose data is already saved.

        A bad ``EVENTLIB_*`` setting raises ``ImproperlyConfigured`` and an
        events module that fails to import raises its own error, so the
        project does not start with either.
        """
        configure_from_settings()
        set_transaction_hook(on_commit)
        set_sync_runner(in_the_connections_thread)
        autodiscover()


def on_commit(callback: Callable[[], None]) -> None:
    """eventlib's transaction hook: ``transaction.on_commit(callback,
    robust=True)`` on the default database.

    Django refuses it in a coroutine (``SynchronousOnlyOperation``): the
    error then says to ``await eventlib.alog(...)`` instead.
    """
    try:
        transaction.on_commit(callback, robust=True)
    except SynchronousOnlyOperation as error:
        error.add_note(
            "eventlib.log(..., on_commit=True) was called in a coroutine: there, "
            "use `await eventlib.alog(..., on_commit=True)`, which waits for the "
            "transaction of the request's database connection"
        )
        raise


async def in_the_connections_thread(call: Callable[[], None]) -> None:
    """Run ``call()`` from a coroutine as Django's async ORM runs a query:
    with asgiref's ``sync_to_async(thread_sensitive=True)``, in the thread
    that holds the database connection (and so the transaction) of the
    current request, or of the code that called ``async_to_sync``."""
    await sync_to_async(call, thread_sensitive=True)()


def configure_from_settings(settings: Any = None) -> Settings:
    """Give every ``EVENTLIB_<NAME>`` attribute of ``settings`` (by default
    Django's settings) to :func:`eventlib.configure` as ``<name>`` and return
    the settings now in force.  ``EVENTLIB_HTTP``, the options of the HTTP
    endpoint's view, is left to the view.

    ``EVENTLIB_APPS`` defaults to the name of every installed app, which needs
    Django's app registry.  ``EVENTLIB_CELERY_APP`` may be a Celery app or the
    import path of one (``"proj.celery.app"`` or ``"proj.celery:app"``),
    imported here (:func:`eventlib.conf.import_celery_app`).  Without it,
    and without ``EVENTLIB_BROKER_URL`` (here or in the environment), the
    project's Celery app is used, found as ``shared_task`` finds it: the
    current app, which Celery's layout (``proj/celery.py`` imported by
    ``proj/__init__.py``) makes the project's when Django starts.  eventlib
    settings with no ``EVENTLIB_*`` setting keep their value.

    Raises ``ImproperlyConfigured`` for an ``EVENTLIB_*`` name eventlib does
    not know, a value it refuses or a Celery app path that does not import
    or names something else than a Celery app;
    eventlib's settings are then unchanged.
    """
    settings = django_settings if settings is None else settings
    given = [name for name in dir(settings) if name.startswith(ENV_PREFIX) and name != HTTP_SETTING]
    unknown = sorted(set(given) - set(SETTING_NAMES))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown setting(s) {', '.join(unknown)}: eventlib's settings are "
            f"{', '.join(sorted([*SETTING_NAMES, HTTP_SETTING]))}"
        )
    values = {SETTING_NAMES[name]: getattr(settings, name) for name in given}
    if "apps" not in values:
        values["apps"] = [config.name for config in django_apps.get_app_configs()]
    if isinstance(values.get("celery_app"), str):
        values["celery_app"] = _import_celery_app(values["celery_app"])
    elif "celery_app" not in values and "broker_url" not in values:
        # Celery's layout for Django: proj/__init__.py imports proj/celery.py,
        # whose app is the current one when Django starts.
        project = project_celery_app()
        current = get_settings()
        if project is not None and current.celery_app is None and not current.broker_url:
            values["celery_app"] = project
    try:
        return configure(**values)
    except ConfigurationError as error:
        raise ImproperlyConfigured(f"Invalid EVENTLIB_* setting: {error}") from error


def _import_celery_app(path: str) -> Any:
    try:
        return import_celery_app(path, f"{ENV_PREFIX}CELERY_APP = {path!r}")
    except ConfigurationError as error:
        raise ImproperlyConfigured(str(error)) from error
