"""The bare Celery task eventlib is compared with."""

from __future__ import annotations

from typing import Any

from celery import Celery

from .counter import bump

BARE_TASK = "benchmarks.bare"


def register_bare(app: Celery, queue: str | None = None) -> Any:
    """Register on ``app`` a task doing what ``Order``'s handler does, with
    the options of eventlib's own task (JSON, results ignored, acknowledged
    once it ran); ``queue`` is where ``delay()`` sends it."""

    @app.task(
        name=BARE_TASK,
        shared=False,  # for this app only, not every app created later
        ignore_result=True,
        serializer="json",
        acks_late=True,
        reject_on_worker_lost=True,
        queue=queue,
    )
    def bare(data: dict[str, Any]) -> None:
        bump()

    return bare
