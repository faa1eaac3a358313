"""The documentation of the settings lists exactly the settings declared as
the fields of ``eventlib.conf.Settings``: README.md's paragraph that starts
with "Settings:" and the table of docs/django.md's "Settings" section."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from eventlib.conf import ENV_PREFIX, STATE, Settings, state_directory
from eventlib.contrib.django.apps import HTTP_SETTING

ROOT = Path(__file__).resolve().parent.parent
DECLARED = [setting.name for setting in fields(Settings)]


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def without_parentheses(text: str) -> str:
    """``text`` without what its parentheses say (``dispatch``'s modes,
    ``celery_app``'s forms), innermost first."""
    while True:
        shorter = re.sub(r"\([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


def readme_settings() -> list[str]:
    """The names listed by the first sentence of README.md's paragraph that
    starts with "Settings:", in their order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.startswith("Settings:")]
    assert len(paragraphs) == 1, "README.md has one paragraph that starts with 'Settings:'"
    listing = re.split(r"\.\s", without_parentheses(paragraphs[0]))[0]
    return code_spans(listing)


def django_table() -> dict[str, str]:
    """Each Django setting of docs/django.md's "Settings" table, with the
    text of its default column."""
    text = (ROOT / "docs" / "django.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            name, default, _ = (cell.strip() for cell in line.strip().strip("|").split("|"))
            rows[code_spans(name)[0]] = default
    return rows


def difference(documented: list[str], declared: list[str]) -> str:
    return (
        f"not documented: {sorted(set(declared) - set(documented))}; "
        f"documented but not declared: {sorted(set(documented) - set(declared))}"
    )


def test_the_readme_lists_every_setting_once():
    listed = readme_settings()

    assert sorted(listed) == sorted(DECLARED), difference(listed, DECLARED)


def test_the_django_table_has_a_row_for_every_setting():
    rows = [name for name in django_table() if name != HTTP_SETTING]
    expected = [ENV_PREFIX + name.upper() for name in DECLARED]

    assert sorted(rows) == sorted(expected), difference(rows, expected)


def test_the_django_table_gives_each_setting_its_default():
    """Each default is the declared one, written as a Python literal (with
    ``<state>`` for eventlib's state folder, the defaults of files), but for
    ``EVENTLIB_APPS``, whose default under Django is every installed app."""
    defaults = Settings()
    for name, cell in django_table().items():
        if name == HTTP_SETTING:
            continue
        if name == f"{ENV_PREFIX}APPS":
            assert cell == "every installed app"
            continue
        literal = code_spans(cell)[0].replace(STATE, str(state_directory()))
        setting = name.removeprefix(ENV_PREFIX).lower()
        assert ast.literal_eval(literal) == getattr(defaults, setting), name
