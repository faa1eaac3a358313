"""The Sybil set-up of the root ``conftest.py``, which runs README.md,
spec.md and docs/*.md: it must run every unmarked block, skip the blocks
marked ``# steadymark: ignore`` and write the ``# file:`` blocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sure import expect
from sybil import Example
from sybil.example import SybilFailure

FENCE = "```"

DOCUMENT = f"""
# A document

{FENCE}python
# file: notes/events.py
GREETING = 'written'
{FENCE}

{FENCE}python
# steadymark: ignore
raise AssertionError('an ignored block ran')
{FENCE}

{FENCE}python
# steadymark: ignore
>>> 1 + 1
3
{FENCE}

{FENCE}python
from notes.events import GREETING
{FENCE}

{FENCE}python
>>> GREETING
'written'
{FENCE}

{FENCE}python
raise AssertionError('an unmarked block failed')
{FENCE}

{FENCE}python
>>> 1 + 1
3
{FENCE}
"""


@pytest.fixture
def examples(request, tmp_path) -> Iterator[list[Example]]:
    """The examples of ``DOCUMENT``, parsed and set up as the root conftest
    does for the project's documents, torn down after the test."""
    root_conftest = request.config.pluginmanager.get_plugin(
        str(request.config.rootpath / "conftest.py")
    )
    documents = root_conftest.DOCUMENTS
    path = tmp_path / "document.md"
    path.write_text(DOCUMENT)
    document = documents.parse(path)
    documents.setup(document.namespace)
    try:
        yield list(document)
    finally:
        documents.teardown(document.namespace)


def test_every_unmarked_block_is_an_example_and_no_ignored_one(examples):
    sources = " ".join(str(example.parsed) for example in examples)

    expect(len(examples)).to.equal(5)
    expect(sources).to.contain("# file: notes/events.py")
    expect(sources).to_not.contain("ignored")
    expect(sources).to_not.contain("steadymark")


def test_a_file_block_writes_its_file_for_the_next_blocks_to_import(examples):
    write_file, import_it, check_it, *_ = examples
    root = write_file.namespace["_isolation"].root

    write_file.evaluate()

    expect((root / "notes" / "events.py").read_text()).to.equal("GREETING = 'written'\n")
    expect(write_file.namespace).to_not.contain("GREETING")
    import_it.evaluate()
    check_it.evaluate()
    expect(write_file.namespace["GREETING"]).to.equal("written")


def test_an_unmarked_failing_block_fails(examples):
    *_, failing_block, _ = examples

    with pytest.raises(AssertionError, match=r"^an unmarked block failed$"):
        failing_block.evaluate()


def test_an_unmarked_failing_doctest_fails(examples):
    *_, failing_doctest = examples

    with pytest.raises(SybilFailure) as failure:
        failing_doctest.evaluate()

    expect(str(failure.value)).to.contain("Expected:\n    3\nGot:\n    2")
