"""``celery -A benchmarks.benchapp.bare worker``: the plain Celery worker of
the throughput comparison.

Its app is eventlib's own (``eventlib.sending.celery_app()``, configured from
the same ``EVENTLIB_*`` variables as the eventlib worker), so both workers run
with the same Celery configuration; only the task differs.
"""

from __future__ import annotations

from eventlib.sending import celery_app

from .tasks import register_bare

app = celery_app()
bare = register_bare(app)
