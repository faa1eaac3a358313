"""Brokers: eventlib's own Celery app, the transport options eventlib
publishes with, and what eventlib can tell of a broker.

:mod:`eventlib.sending` builds its app and its producer pools with these;
the command line checks a broker with :func:`check_broker` before it starts
a worker.  docs/deployment.md explains each setting of the app.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from kombu.connection import Connection
from kombu.utils.url import maybe_sanitize_url

from .conf import Settings, get_settings
from .embedded import SCHEME, default_path, url_for
from .exceptions import ConfigurationError, DispatchError

__all__ = [
    "PUBLISH_RETRY_POLICY",
    "broker_name",
    "check_broker",
    "create_app",
    "project_celery_app",
    "publish_transport_options",
    "resolved_broker_url",
    "transport_options",
    "warn_of_a_project_broker",
]

logger = logging.getLogger("eventlib")

#: One retry at once, for a pooled connection the broker closed meanwhile;
#: a broker that is down is the spool's business.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0,
    "interval_max": 0,
}


def broker_name(app: Celery) -> str:
    """The broker URL of ``app``, with its password masked."""
    return maybe_sanitize_url(app.conf.broker_url or "amqp://localhost//")  # type: ignore[no-any-return]


def check_broker(app: Celery | None = None) -> None:
    """Connect to ``app``'s broker (by default that of the app events are
    sent with) once, within ``broker_timeout``.

    Raises :class:`~eventlib.ConfigurationError` for a URL whose scheme no
    kombu transport knows, and :class:`~eventlib.DispatchError` naming the
    broker when it cannot be reached.
    """
    if app is None:
        from .sending import celery_app

        app = celery_app()
    settings = get_settings()
    try:
        connection = app.connection_for_write(
            connect_timeout=settings.broker_timeout,
            transport_options=publish_transport_options(app, settings),
        )
    except KeyError as error:
        raise ConfigurationError(
            f"unknown broker URL scheme in {broker_name(app)}: {error.args[0]}"
        ) from None
    with connection:
        try:
            connection.ensure_connection(max_retries=1, timeout=settings.broker_timeout)
        except Exception as error:
            raise DispatchError(f"cannot reach the broker {broker_name(app)}: {error}") from error


def project_celery_app() -> Celery | None:
    """The Celery app the project created, as ``shared_task`` finds it: the
    current app of this thread, unless it is the one Celery makes up when
    the project made none (named ``default``)."""
    from celery import current_app

    app: Celery = current_app._get_current_object()
    return None if app.main == "default" else app


_warned = False


def warn_of_a_project_broker(settings: Settings) -> None:
    """Say, once per process, that events go to the embedded broker although
    the project has a broker of its own: a Celery app, or
    ``CELERY_BROKER_URL`` in the environment, which eventlib does not read."""
    global _warned
    if _warned or settings.celery_app is not None or settings.broker_url:
        return
    project = project_celery_app()
    if project is not None and project.conf.broker_url:
        where = f"the Celery app {project.main!r} has the broker {broker_name(project)}"
    elif os.environ.get("CELERY_BROKER_URL"):
        where = "CELERY_BROKER_URL is set"
    else:
        return
    _warned = True
    logger.warning(
        "eventlib sends events to its embedded broker (%s), although %s: set "
        "EVENTLIB_CELERY_APP to the import path of the project's Celery app "
        "(the celery_app setting, 'proj.celery:app') or EVENTLIB_BROKER_URL",
        maybe_sanitize_url(resolved_broker_url(settings)),
        where,
    )


def resolved_broker_url(settings: Settings) -> str:
    """The ``broker_url`` setting, or the embedded broker in its default
    file (:func:`eventlib.embedded.default_path`) when it is unset."""
    return settings.broker_url or url_for(default_path())


def publish_transport_options(app: Celery, settings: Settings) -> dict[str, Any]:
    """The transport options eventlib publishes with on ``app`` (its own or
    a user's): the app's own, then eventlib's timeouts and confirms for its
    broker, then eventlib's ``broker_transport_options`` setting."""
    url = app.conf.broker_write_url or app.conf.broker_url or "amqp://"
    return {
        **app.conf.broker_transport_options,
        **transport_options(url, settings.broker_timeout),
        **settings.broker_transport_options,
    }


def transport_options(broker_url: str, timeout: float) -> dict[str, Any]:
    """Timeouts for the broker's transport, so that a broker that accepts
    connections but never answers (or a locked SQLite file) cannot block
    publishing."""
    scheme = broker_url.partition(":")[0]
    if scheme in ("redis", "rediss", "sentinel"):
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if scheme in ("amqp", "pyamqp", "amqps"):
        # confirm_publish: a publish returns once RabbitMQ has the message.
        return {"read_timeout": timeout, "write_timeout": timeout, "confirm_publish": True}
    if scheme == SCHEME:
        return {"connect_args": {"timeout": timeout}}
    return {}


def create_app(settings: Settings) -> Celery:
    """eventlib's own Celery app; docs/deployment.md explains each setting.

    Raises :class:`~eventlib.ConfigurationError` when no kombu transport
    knows the broker URL's scheme.
    """
    timeout = settings.broker_timeout
    broker_url = resolved_broker_url(settings)
    try:
        Connection(broker_url)  # resolves the transport, without connecting
    except KeyError as error:
        raise ConfigurationError(
            f"unknown broker URL scheme in {maybe_sanitize_url(broker_url)}: {error.args[0]}"
        ) from None
    app = Celery("eventlib", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=settings.queue,
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            **transport_options(broker_url, timeout),
            **settings.broker_transport_options,
        },
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
    )
    return app
