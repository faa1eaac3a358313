"""The project's own Celery app, as ``proj/celery.py`` holds it in a Django
project that uses Celery."""

from celery import Celery

app = Celery("django_project", set_as_current=False)
app.conf.task_always_eager = True  # the tests have no broker
