"""Finding the project's Celery app (#9): in a Django project laid out as
Celery's docs say, eventlib publishes with it; elsewhere, when events would
go to the embedded broker although the project has a broker, it says so.
Each case runs in a project of its own, in a process of its own (Django
starts once per process, and a Celery app stays current in its thread)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROJ_INIT = """
from .celery import app as celery_app

__all__ = ["celery_app"]
"""

PROJ_CELERY = """
from celery import Celery

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
"""

PROJ_SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["eventlib.contrib.django", "shop"]
CELERY_BROKER_URL = "memory://"
"""

SHOP_EVENTS = """
import eventlib


class Purchase(eventlib.BaseEvent):
    pass
"""


def write(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def run(root: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    clean.pop("CELERY_BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=root,
        env={
            **clean,
            "PYTHONPATH": str(root),
            "EVENTLIB_SPOOL_PATH": str(root / "s.sqlite"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


DJANGO_LOGS = """
import django
django.setup()
import eventlib
from eventlib.sending import celery_app
app = celery_app()
print(app.main, app.conf.broker_url)
eventlib.log("shop.Purchase", {})
print(eventlib.flush(timeout=10))
"""


def test_a_django_project_with_celerys_layout_publishes_with_its_app(tmp_path):
    write(
        tmp_path,
        {
            "proj/__init__.py": PROJ_INIT,
            "proj/celery.py": PROJ_CELERY,
            "proj/settings.py": PROJ_SETTINGS,
            "shop/__init__.py": "",
            "shop/events.py": SHOP_EVENTS,
        },
    )

    result = run(tmp_path, DJANGO_LOGS, DJANGO_SETTINGS_MODULE="proj.settings")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["proj", "memory://", "True"]
    assert "embedded broker" not in result.stderr
    broker_file = run(tmp_path, "from eventlib.embedded import default_path\nprint(default_path())")
    assert not Path(broker_file.stdout.strip()).exists()


def test_eventlib_s_broker_url_still_wins_over_the_projects_app(tmp_path):
    write(
        tmp_path,
        {
            "proj/__init__.py": PROJ_INIT,
            "proj/celery.py": PROJ_CELERY,
            "proj/settings.py": PROJ_SETTINGS + 'EVENTLIB_BROKER_URL = "memory://other"\n',
            "shop/__init__.py": "",
            "shop/events.py": SHOP_EVENTS,
        },
    )

    result = run(tmp_path, DJANGO_LOGS, DJANGO_SETTINGS_MODULE="proj.settings")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["eventlib", "memory://other", "True"]


SCRIPT_WITH_ITS_OWN_APP = """
from celery import Celery
import eventlib

app = Celery("proj", broker="redis://127.0.0.1:1/0")
eventlib.log("shop.Purchase", {})
"""


def test_events_for_the_embedded_broker_beside_a_projects_broker_are_a_warning(tmp_path):
    write(tmp_path, {"shop/__init__.py": "", "shop/events.py": SHOP_EVENTS})

    result = run(tmp_path, SCRIPT_WITH_ITS_OWN_APP)
    default_broker_file = run(
        tmp_path, "from eventlib.embedded import default_path\nprint(default_path())"
    ).stdout.strip()

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "embedded broker" in line]
    assert warnings == [
        "eventlib sends events to its embedded broker "
        f"(eventlib+sqlite:///{default_broker_file}), although the Celery app "
        "'proj' has the broker redis://127.0.0.1:1/0: set EVENTLIB_CELERY_APP to the import "
        "path of the project's Celery app (the celery_app setting, 'proj.celery:app') or "
        "EVENTLIB_BROKER_URL"
    ]


def test_celery_broker_url_in_the_environment_is_named_in_the_warning(tmp_path):
    write(tmp_path, {"shop/__init__.py": "", "shop/events.py": SHOP_EVENTS})

    result = run(
        tmp_path,
        'import eventlib\neventlib.log("shop.Purchase", {})\n',
        CELERY_BROKER_URL="redis://127.0.0.1:1/0",
    )

    assert result.returncode == 0, result.stderr
    assert "although CELERY_BROKER_URL is set: set EVENTLIB_CELERY_APP" in result.stderr


def test_no_warning_without_a_broker_anywhere(tmp_path):
    write(tmp_path, {"shop/__init__.py": "", "shop/events.py": SHOP_EVENTS})

    result = run(tmp_path, 'import eventlib\neventlib.log("shop.Purchase", {})\n')

    assert result.returncode == 0, result.stderr
    assert "embedded broker" not in result.stderr
