"""eventlib's Celery task, ``eventlib.process``.

It is a shared task: every Celery app in the process registers it, the
user's own app as well as the one eventlib creates when there is none, so
``celery -A yourproject worker -Q eventlib`` runs it like any other task.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_init

from .discovery import autodiscover
from .processing import process

TASK_NAME = "eventlib.process"


@shared_task(
    name=TASK_NAME,
    ignore_result=True,
    serializer="json",
    # Acknowledged once the handlers ran: a worker killed mid-event does not
    # lose it, another worker runs it again (handlers must be idempotent).
    acks_late=True,
    reject_on_worker_lost=True,
)
def process_event(name: str, payload: str) -> dict[str, Any]:
    """Process one event in the worker; returns :meth:`ProcessResult.as_dict`."""
    return process(name, payload).as_dict()


@worker_init.connect
def _discover_at_worker_start(**_: Any) -> None:
    """Import every configured app's events module before the worker takes
    its first event, so that import errors show at start."""
    autodiscover()
