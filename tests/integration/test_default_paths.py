"""The default files are the same for every process of a project on the
host: a real ``eventlib worker`` started in one folder and a process that
logs, started in another, meet on the default embedded broker, and the
``eventlib`` command run from a third lists the worker's dead letters,
naming their database.  No broker, spool or dead-letter setting is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eventlib.conf import state_directory

from .support import APP_SOURCE, Records, Worker, wait_for

LOG_ONE = """
import eventlib

eventlib.configure(apps=["shop"])
print(eventlib.log("shop.Purchase", {"sku": "a-1"}))
assert eventlib.flush(timeout=30)
"""


def test_processes_started_in_different_folders_share_the_default_files(isolation, tmp_path):
    isolation.write("shop/events.py", APP_SOURCE)
    records = Records(tmp_path / "records.sqlite")
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    env.update(
        EVENTLIB_APPS="shop",
        EVENTLIB_TEST_RECORDS=str(records.path),
        PYTHONPATH=str(isolation.root),
        XDG_STATE_HOME=str(tmp_path / "state"),
    )
    web, workers, shell = (tmp_path / name for name in ("web", "workers", "shell"))
    for folder in (web, workers, shell):
        folder.mkdir()

    def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``python *args`` run in ``folder``, with the project's settings."""
        return subprocess.run(
            [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60
        )

    worker = Worker(env, tmp_path / "worker.log", "paths", cwd=workers)
    try:
        worker.wait_ready()
        logged = run(web, "-c", LOG_ONE)
        assert logged.returncode == 0, logged.stderr
        event_id = logged.stdout.strip()

        wait_for(
            lambda: records.runs_per_event("audit") == {event_id: 1},
            60,
            f"the worker to process the event; its log:\n{worker.log}",
        )
        listed = run(shell, "-m", "eventlib", "dead", "list", "--json")
        table = run(shell, "-m", "eventlib", "dead", "list")
    finally:
        worker.stop()

    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert (letter["event_id"], letter["handler"]) == (
        event_id,
        "shop.events.Purchase.notify_warehouse",
    )
    folder = state_directory({**env})
    assert folder.parent == tmp_path / "state" / "eventlib"
    assert table.stdout.splitlines()[0] == f"dead letters: sqlite:///{folder}/dead-letters.sqlite"
    assert f"eventlib+sqlite:///{folder}/broker.sqlite" in worker.log
    # Nothing in the folders the processes started in.
    assert [path for path in (web, workers, shell) if any(Path(path).iterdir())] == []
