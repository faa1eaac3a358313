"""``eventlib worker`` started as a user starts it: the console script, from
the folder that holds ``proj/`` and ``shop/``, with no ``PYTHONPATH``, in a
Django project (``DJANGO_SETTINGS_MODULE``) or with the project's Celery app
(``-A proj``, as for ``celery -A proj worker``).  ``eventlib log``, from the
same folder, sends an event; the worker runs its handlers."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from eventlib.embedded import url_for

from ..test_cli import handler_lines
from ..test_cli_project import EVENTLIB, eventlib_in, project_environment, write_project
from ..waiting import wait_for
from .support import READY


@pytest.mark.parametrize(
    ("options", "env"),
    [
        ((), {"DJANGO_SETTINGS_MODULE": "proj.settings"}),
        (("-A", "proj"), {}),
    ],
    ids=["django-settings-module", "dash-a"],
)
def test_a_worker_started_in_the_project_s_folder_runs_its_handlers(tmp_path, options, env):
    project = write_project(tmp_path / "project")
    broker = url_for(tmp_path / "broker.sqlite")
    env = {
        **env,
        # eventlib's own app (Django project) or the project's app (-A proj).
        "EVENTLIB_BROKER_URL": broker,
        "PROJ_BROKER_URL": broker,
        "EVENTLIB_QUEUE": f"eventlib-test-{uuid.uuid4().hex[:12]}",
        "EVENTLIB_SPOOL_PATH": str(tmp_path / "spool.sqlite"),
        "EVENTLIB_DEAD_LETTER_URL": f"sqlite:///{tmp_path / 'dead-letters.sqlite'}",
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [
                str(EVENTLIB),
                *options,
                "worker",
                "--loglevel=INFO",
                "--concurrency=1",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=project,
            env=project_environment(project, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited with {worker.returncode}:\n{log_path.read_text()}")
            return READY in log_path.read_text()

        wait_for(ready, 60, f"the worker to be ready; its log:\n{log_path.read_text()}")
        logged = eventlib_in(project, *options, "log", "shop.Refund", "order_id=3", **env)
        assert logged.returncode == 0, logged.stderr
        event_id = logged.stdout.strip()

        wait_for(
            lambda: (
                f'notify {event_id} {{"order_id": "3"}}' in handler_lines(project / "handlers.log")
            ),
            60,
            f"the worker to run the handlers; its log:\n{log_path.read_text()}",
        )
    finally:
        _stop(worker)
    assert handler_lines(project / "handlers.log")[:2] == ["record", "charge"]
    if options:
        assert ".> app:         proj:" in log_path.read_text()


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then kill the worker's process group."""
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=20)


def test_the_project_s_folder_is_not_needed_on_pythonpath(tmp_path):
    """What the test above relies on: without the command's help, nothing
    in the environment finds the project's packages."""
    project = write_project(tmp_path / "project")
    python = Path(EVENTLIB).with_name("python")

    result = subprocess.run(
        [str(python), "-P", "-c", "import shop"],
        cwd=project,
        env=project_environment(project),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert "No module named 'shop'" in result.stderr
