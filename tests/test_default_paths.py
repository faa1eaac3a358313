"""Where eventlib keeps its files by default: the spool, the dead letters and
the embedded broker, in one state folder per Python environment
(``eventlib.conf.state_directory``), whatever folder a process starts in;
and the ``eventlib`` commands that say where.
tests/integration/test_default_paths.py runs a worker and a logging process
started in different folders on the default embedded broker."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

import eventlib
from eventlib import ConfigurationError, conf
from eventlib.conf import state_directory, state_file
from eventlib.sending import celery_app

from .test_cli import run_cli


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    """``XDG_STATE_HOME`` of the test's own, and no ``EVENTLIB_*`` variable."""
    for key in list(os.environ):
        if key.startswith("EVENTLIB_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    conf.reset()
    return tmp_path / "state"


def test_the_state_folder_is_per_user_and_python_environment(state, monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/srv/shop/.venv")
    shop = state_directory()
    monkeypatch.setattr(sys, "prefix", "/srv/blog/.venv")
    blog = state_directory()

    assert shop.parent == blog.parent == state / "eventlib"
    assert shop.name.startswith("shop-.venv-") and blog.name.startswith("blog-.venv-")
    assert shop != blog
    assert len(shop.name.rpartition("-")[2]) == 8  # the hash of the whole path


def test_without_xdg_state_home_it_is_under_the_home_folder(monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/srv/shop/.venv")

    found = state_directory({"HOME": "/home/ana"})
    relative = state_directory({"HOME": "/home/ana", "XDG_STATE_HOME": "state"})

    assert found.parent == Path("/home/ana/.local/state/eventlib")
    assert relative == found  # the specification ignores a relative XDG_STATE_HOME


def test_without_any_home_it_says_which_settings_to_set(monkeypatch):
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no home to find

    with pytest.raises(ConfigurationError) as raised:
        state_directory({})

    assert str(raised.value) == (
        "eventlib's files have no folder: there is no home folder; set XDG_STATE_HOME, or "
        "EVENTLIB_SPOOL_PATH, EVENTLIB_DEAD_LETTER_URL and EVENTLIB_BROKER_URL"
    )


def test_the_defaults_are_files_of_the_state_folder_created_for_its_user_alone(state):
    settings = conf.get_settings()

    folder = state_directory()
    assert settings.spool_path == str(folder / "spool.sqlite")
    assert settings.dead_letter_url == f"sqlite:///{folder / 'dead-letters.sqlite'}"
    assert celery_app().conf.broker_url == f"eventlib+sqlite:///{folder / 'broker.sqlite'}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_setting_wins_over_the_default(state, tmp_path, monkeypatch):
    monkeypatch.setenv("EVENTLIB_SPOOL_PATH", str(tmp_path / "spool.sqlite"))
    conf.reset()
    eventlib.configure(dead_letter_url="sqlite:////var/lib/shop/dead.sqlite")

    assert conf.get_settings().spool_path == str(tmp_path / "spool.sqlite")
    assert conf.get_settings().dead_letter_url == "sqlite:////var/lib/shop/dead.sqlite"


def test_a_folder_that_cannot_be_created_is_named_by_whoever_opens_the_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "file"))

    path = state_file("spool.sqlite")

    assert path == state_directory() / "spool.sqlite"
    assert not path.parent.exists()


def test_the_commands_find_the_same_files_from_any_folder_and_say_which(state, tmp_path, isolation):
    folders = [tmp_path / "a", tmp_path / "b" / "deeper"]
    for folder in folders:
        folder.mkdir(parents=True)
    spool = state_directory() / "spool.sqlite"
    database = f"sqlite:///{state_directory() / 'dead-letters.sqlite'}"

    for folder in folders:
        status = run_cli(isolation, "spool", "status", cwd=folder)
        as_json = run_cli(isolation, "spool", "status", "--json", cwd=folder)
        listed = run_cli(isolation, "dead", "list", cwd=folder)

        assert (status.returncode, status.stderr) == (0, "")
        assert status.stdout == f"spool: {spool}\nthe spool is empty\n"
        assert json.loads(as_json.stdout)["path"] == str(spool)
        assert (listed.returncode, listed.stderr) == (0, "")
        assert listed.stdout == f"dead letters: {database}\nno dead letters\n"
    # The files the commands opened are the state folder's, none in theirs.
    files = list(tmp_path.glob("**/*.sqlite*"))
    assert files and {path.parent for path in files} == {state_directory()}
