"""The Django app: settings from ``EVENTLIB_*`` Django settings, discovery in
``ready()``, sending after the transaction commits."""

from __future__ import annotations

from dataclasses import fields
from functools import partial
from typing import Any

from django.apps import AppConfig
from django.apps import apps as django_apps
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from eventlib.conf import ENV_PREFIX, Settings, configure, import_celery_app
from eventlib.discovery import autodiscover
from eventlib.dispatch import set_transaction_hook
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
        wait with Django's ``transaction.on_commit`` (default database), then
        import the ``events`` module of every app in the ``apps`` setting.

        The hook is robust: an event that cannot be sent after the commit
        (:class:`~eventlib.DispatchError`) is logged by Django at ERROR level
        and the other callbacks still run, rather than the error reaching the
        code that committed, whose data is already saved.

        A bad ``EVENTLIB_*`` setting raises ``ImproperlyConfigured`` and an
        events module that fails to import raises its own error, so the
        project does not start with either.
        """
        configure_from_settings()
        set_transaction_hook(partial(transaction.on_commit, robust=True))
        autodiscover()


def configure_from_settings(settings: Any = None) -> Settings:
    """Give every ``EVENTLIB_<NAME>`` attribute of ``settings`` (by default
    Django's settings) to :func:`eventlib.configure` as ``<name>`` and return
    the settings now in force.  ``EVENTLIB_HTTP``, the options of the HTTP
    endpoint's view, is left to the view.

    ``EVENTLIB_APPS`` defaults to the name of every installed app, which needs
    Django's app registry.  ``EVENTLIB_CELERY_APP`` may be a Celery app or the
    import path of one (``"proj.celery.app"`` or ``"proj.celery:app"``),
    imported here (:func:`eventlib.conf.import_celery_app`).  eventlib
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
    try:
        return configure(**values)
    except ConfigurationError as error:
        raise ImproperlyConfigured(f"Invalid EVENTLIB_* setting: {error}") from error


def _import_celery_app(path: str) -> Any:
    try:
        return import_celery_app(path, f"{ENV_PREFIX}CELERY_APP = {path!r}")
    except ConfigurationError as error:
        raise ImproperlyConfigured(str(error)) from error
