"""The ``eventlib`` command as a user runs it: the console script installed
with eventlib, from the folder that holds the project's packages, with no
``PYTHONPATH`` and no ``EVENTLIB_*`` variable but those a test gives, as
``celery -A proj`` is run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from eventlib.conf import state_directory

from .test_cli import HANDLER_LOG, SHOP_EVENTS, handler_lines, one_line_error

#: The ``eventlib`` console script of the environment running the tests.
EVENTLIB = Path(sys.executable).parent / "eventlib"

#: The project's Celery app, as Celery's "First steps with Django" writes it.
PROJ_CELERY = """
    import os

    from celery import Celery

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

    app = Celery("proj", broker=os.environ.get("PROJ_BROKER_URL", "amqp://guest:secret@127.0.0.1:1//"))
"""

PROJ_SETTINGS = """
    import os
    from pathlib import Path

    SECRET_KEY = "test"
    INSTALLED_APPS = ["django.contrib.contenttypes", "eventlib.contrib.django", "shop"]
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(Path(__file__).resolve().parents[1] / "db.sqlite3"),
        }
    }
    USE_TZ = True
    EVENTLIB_APPS = ["shop"]
    EVENTLIB_ALWAYS_EAGER = os.environ.get("PROJ_EAGER") == "1"
"""

#: The project's folder: ``proj`` (its Celery app and Django settings) and
#: the app ``shop``.
PROJECT = {
    "proj/__init__.py": "from .celery import app\n",
    "proj/celery.py": PROJ_CELERY,
    "proj/settings.py": PROJ_SETTINGS,
    "shop/__init__.py": "",
    "shop/events.py": SHOP_EVENTS,
}


def write_project(folder: Path) -> Path:
    """Write the project's packages into ``folder`` and return it."""
    for relative, source in PROJECT.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return folder


def project_environment(folder: Path, **env: str) -> dict[str, str]:
    """The machine's environment without ``PYTHONPATH``, Django's settings
    module or any ``EVENTLIB_*`` variable, plus ``env``."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EVENTLIB_") and key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")
    }
    clean[HANDLER_LOG] = str(folder / "handlers.log")
    return {**clean, **env}


def eventlib_in(
    folder: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``eventlib *args`` in ``folder``, as a user types it there."""
    return subprocess.run(
        [str(EVENTLIB), *args],
        cwd=folder,
        env=project_environment(folder, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project(tmp_path) -> Path:
    assert EVENTLIB.exists(), f"no eventlib command next to {sys.executable}"
    return write_project(tmp_path)


def test_the_command_imports_the_apps_of_the_folder_it_runs_in(project):
    result = eventlib_in(project, "--apps", "shop", "events", "--json")

    assert result.returncode == 0, result.stderr
    assert [event["name"] for event in json.loads(result.stdout)] == ["shop.Refund", "shop.Signup"]


def test_the_django_settings_module_is_found_in_the_folder(project):
    result = eventlib_in(project, "events", "--json", DJANGO_SETTINGS_MODULE="proj.settings")

    assert result.returncode == 0, result.stderr
    assert [event["name"] for event in json.loads(result.stdout)] == ["shop.Refund", "shop.Signup"]


def test_a_django_project_logs_from_its_folder(project):
    result = eventlib_in(
        project,
        "log",
        "shop.Refund",
        "order_id=5",
        DJANGO_SETTINGS_MODULE="proj.settings",
        PROJ_EAGER="1",
    )

    assert result.returncode == 0, result.stderr
    assert f'notify {result.stdout.strip()} {{"order_id": "5"}}' in handler_lines(
        project / "handlers.log"
    )


@pytest.mark.parametrize("app", ["proj", "proj.celery", "proj.celery:app"])
def test_dash_a_finds_the_celery_app_as_celery_does(project, app):
    """The worker checks the broker of the app ``-A`` names: the project's,
    an AMQP server that is not there, where eventlib's own app would have
    used the embedded broker."""
    result = eventlib_in(project, "-A", app, "--apps", "shop", "worker", timeout=30)

    assert result.returncode == 3, result.stdout + result.stderr
    assert one_line_error(result).startswith(
        "eventlib: cannot reach the broker amqp://guest:**@127.0.0.1:1//: "
    )


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("nowhere", "eventlib: -A nowhere: no Celery app there: No module named 'nowhere'"),
        (
            "proj.settings:SECRET_KEY",
            "eventlib: -A proj.settings:SECRET_KEY is not a Celery app but 'test'",
        ),
    ],
)
def test_dash_a_without_a_celery_app_is_a_usage_error(project, app, message):
    result = eventlib_in(project, "-A", app, "--apps", "shop", "events")

    assert result.returncode == 2
    assert one_line_error(result) == message


def test_version(project):
    result = eventlib_in(project, "--version")

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"eventlib {version('eventlib')}\n"


def test_process_takes_key_value_pairs_like_log(project):
    result = eventlib_in(project, "--apps", "shop", "process", "shop.Refund", "order_id=7")

    assert result.returncode == 0, result.stderr
    assert "ok      shop.events.Refund.record" in result.stdout.splitlines()
    [notified] = [line for line in handler_lines(project / "handlers.log") if "notify" in line]
    assert notified.endswith(' {"order_id": "7"}')


def test_process_refuses_pairs_and_json_together(project):
    result = eventlib_in(
        project, "--apps", "shop", "process", "shop.Refund", "a=1", "--json", '{"order_id": 7}'
    )

    assert result.returncode == 2
    assert one_line_error(result) == (
        "eventlib: give the data either as key=value pairs or with --json, not both"
    )


def test_a_misspelt_setting_gets_did_you_mean(project):
    result = eventlib_in(
        project,
        "--apps",
        "shop",
        "events",
        EVENTLIB_BROKER="redis://127.0.0.1:6379/0",
        EVENTLIB_QUEUES="shop",
        # Close to no setting: the project's own, left alone.
        EVENTLIB_REQUIRE_BROKERS="1",
    )

    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "eventlib: warning: EVENTLIB_BROKER is not an eventlib setting and is ignored; "
        "did you mean EVENTLIB_BROKER_URL?",
        "eventlib: warning: EVENTLIB_QUEUES is not an eventlib setting and is ignored; "
        "did you mean EVENTLIB_QUEUE?",
    ]
    assert result.stdout.startswith("shop.Refund\n")


def test_the_help_says_the_options_come_below(project):
    result = eventlib_in(project, "--help")

    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "the options below override them" in text
    assert "above" not in text
    assert text.index("the options below") < text.index("Options: -A, --app APP")
    assert "--version" in text


def test_dead_letters_listed_by_last_failure_filtered_and_purged(project):
    """``process`` runs the handlers here: ``Signup.explode`` fails each
    time and becomes a dead letter, in the folder's default database."""

    def dead_list(*args: str) -> list[dict]:
        result = eventlib_in(project, "dead", "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    for order_id in ("1", "2"):
        processed = eventlib_in(
            project, "--apps", "shop", "process", "shop.Signup", f"n={order_id}"
        )
        assert processed.returncode == 1, processed.stderr
    first, second = (letter["id"] for letter in dead_list())
    # The first fails again: it is now the one that failed last.
    retried = eventlib_in(project, "--apps", "shop", "dead", "retry", str(first), "--here")
    assert retried.returncode == 1, retried.stderr

    assert [letter["id"] for letter in dead_list()] == [second, first]
    assert [letter["id"] for letter in dead_list("--handler", "explode", "--since", "1h")] == [
        second,
        first,
    ]
    assert dead_list("--event", "shop.Refund") == []
    assert dead_list("--since", "2999-01-01") == []
    listed = eventlib_in(project, "dead", "list", "--event", "shop.Signup")
    database, header, *rows = listed.stdout.splitlines()
    # The default database, the same whatever folder the command runs in.
    assert database == f"dead letters: sqlite:///{state_directory() / 'dead-letters.sqlite'}"
    assert header.startswith("ID  FAILED AT (UTC)")
    assert [line.split()[0] for line in rows] == [str(second), str(first)]

    purged = eventlib_in(
        project, "dead", "purge", "--event", "shop.Signup", "--handler", "explode", "--yes"
    )
    assert (purged.returncode, purged.stdout) == (
        0,
        "purged 2 dead letters of shop.Signup of handler explode\n",
    )
    assert dead_list() == []
