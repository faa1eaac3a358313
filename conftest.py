"""Test set-up shared by tests/, README.md, spec.md and docs/*.md.

The Markdown documents run through Sybil.  Their ```python blocks run in
order, sharing one namespace per document, with two conventions:

- a block whose first line is ``# steadymark: ignore`` is shown, not run, as
  steadymark did;
- a block whose first line is ``# file: some/path.py`` is not run: it is
  written to that path in a temporary directory on ``sys.path``, so a document
  can declare ``shop/events.py`` and then log ``'shop.Refund'``.

Every document and every test starts from eventlib's default settings, an
empty handler registry (but for what it declares) and no imported apps.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from doctest import ELLIPSIS
from pathlib import Path
from typing import Any

import pytest
from celery import _state as celery_state
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

from eventlib.testing import forget_event_classes, isolated

# The tests use sure's expect() only.  Importing sure would otherwise add
# .should, .must, .when and others to every object and replace builtins.dir
# for the whole test run.
os.environ.setdefault("SURE_DISABLE_NEW_SYNTAX", "1")
# eventlib's default files (eventlib.conf.state_directory) never go to the
# home folder of whoever runs the tests, even before a test's isolation
# gives them a folder of its own (OWN_FILES): Django's set-up, for one,
# reads the settings first.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="eventlib-state-")

IGNORE_MARKER = "# steadymark: ignore"
OWN_FILES = {
    "EVENTLIB_SPOOL_PATH": "{root}/eventlib-spool.sqlite",
    "EVENTLIB_DEAD_LETTER_URL": "sqlite:///{root}/eventlib-dead-letters.sqlite",
    # The folder of the defaults (eventlib.conf.state_directory): the embedded broker's.
    "XDG_STATE_HOME": "{root}/state",
}
FILE_MARKER = "# file:"


class Isolation:
    """Undo what a test or document did to eventlib (through
    :func:`eventlib.testing.isolated`) and to ``sys.path``/``sys.modules``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="eventlib-apps-"))
        # Spool, dead letters and embedded broker in the test's own files,
        # never the project's.
        self._environ = {key: os.environ.get(key) for key in OWN_FILES}
        for key, name in OWN_FILES.items():
            os.environ[key] = name.format(root=self.root)
        self._modules = set(sys.modules)
        # A Celery app a test creates is the current app of this thread from
        # then on: eventlib may take it for the project's.
        self._current_celery_app = celery_state._tls.current_app
        sys.path.insert(0, str(self.root))
        self._eventlib = ExitStack()
        self._eventlib.enter_context(isolated())

    def write(self, relative: str, source: str) -> Path:
        """Write a module under the temporary root, creating the packages
        above it, and make sure a stale import of it is forgotten."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for package in list(path.relative_to(self.root).parents)[:-1]:
            (self.root / package / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
        module = ".".join(path.relative_to(self.root).with_suffix("").parts)
        sys.modules.pop(module, None)
        forget_event_classes()
        return path

    def close(self) -> None:
        sys.path.remove(str(self.root))
        for key, value in self._environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name in set(sys.modules) - self._modules:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(str(self.root)):
                del sys.modules[name]
        celery_state._set_current_app(self._current_celery_app)
        self._eventlib.close()


@pytest.fixture
def isolation() -> Iterator[Isolation]:
    """Isolate a test (tests/conftest.py makes it automatic there); use
    ``isolation.write('shop/events.py', source)`` to create an app."""
    isolated = Isolation()
    try:
        yield isolated
    finally:
        isolated.close()


# ---------------------------------------------------------------- Sybil ---


class SpecParser:
    """Python code blocks, doctest or plain, honouring the two markers."""

    def __init__(self) -> None:
        self.python = PythonCodeBlockParser(doctest_optionflags=ELLIPSIS)

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.python.codeblock_parser(document):
            source = region.parsed
            first_line = source.lstrip().split("\n", 1)[0].strip()
            if first_line == IGNORE_MARKER:
                continue
            if first_line.startswith(FILE_MARKER):
                region.evaluator = self.write_file
                yield region
            elif source.startswith(">>>"):
                for doctest_region in self.python.doctest_parser(source, document.path):
                    doctest_region.adjust(region, source)
                    yield doctest_region
            else:
                yield region

    @staticmethod
    def write_file(example: Example) -> None:
        source = str(example.parsed)
        first_line, _, body = source.partition("\n")
        relative = first_line.strip()[len(FILE_MARKER) :].strip()
        example.namespace["_isolation"].write(relative, body)


def _setup(namespace: dict[str, Any]) -> None:
    namespace["_isolation"] = Isolation()
    namespace["__name__"] = "spec"


def _teardown(namespace: dict[str, Any]) -> None:
    namespace["_isolation"].close()


#: What runs the documents; tests/test_spec_parser.py runs it on one of its own.
DOCUMENTS = Sybil(
    parsers=[SpecParser()],
    patterns=["README.md", "spec.md", "docs/*.md"],
    setup=_setup,
    teardown=_teardown,
)
pytest_collect_file = DOCUMENTS.pytest()
