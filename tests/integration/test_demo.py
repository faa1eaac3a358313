"""The README's first command: the demo, on the embedded broker (as ``make
demo`` runs it) and on Redis and RabbitMQ (``EVENTLIB_BROKER_URL`` set)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kombu.utils.url import maybe_sanitize_url

from eventlib.conf import state_directory

from .support import broker_url, queue_exists

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
OWN_QUEUE = re.compile(
    r"^  queue (eventlib-demo-[0-9a-f]{12}) \(the run's own, deleted at the end\)$", re.M
)


def run_demo(tmp_path: Path, events: int, **settings: str) -> str:
    """Run the demo in ``tmp_path`` with ``settings`` and none of the
    machine's ``EVENTLIB_*`` variables; return its output once it exited 0."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    env.update(settings)
    env["TMPDIR"] = str(tmp_path)  # the demo's work files
    result = subprocess.run(
        [sys.executable, str(DEMO), "--events", str(events)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: could not delete" not in result.stderr, result.stderr
    return result.stdout


def worker_log(report: str) -> str:
    return Path(re.search(r"worker log\s+(\S+)\n", report)[1]).read_text()


def assert_the_report_is_aligned(report: str) -> None:
    """Plain lines (the output is not a terminal: no carriage returns), and
    in the report's table every value, each handler's count included,
    starts in the same column."""
    assert "\r" not in report
    assert re.search(r"^  processed 120/120$", report, re.M), report
    table = report.partition("\nReport\n")[2].partition("\n\n")[0].splitlines()
    assert [line.split()[:2] for line in table if line.startswith("    ")] == [
        ["ok", "audit"],
        ["ok", "count_view"],
        ["ok", "save_order"],
        ["failed", "email_receipt"],
    ]
    # A value starts after the last run of two spaces or more of its line.
    columns = {[gap.end() for gap in re.finditer(r"\S {2,}", line)][-1] for line in table}
    assert len(columns) == 1, table


def assert_the_report_lists_the_dead_letters(report: str, count: int) -> None:
    """The report says the failing handler fails on purpose, and gives a
    command that lists its dead letters: run, it lists them."""
    assert "\nemail_receipt fails on purpose (the demo's mail server is down)" in report
    assert f"{count} dead letters of this run" in report
    found = re.search(
        r"^  EVENTLIB_DEAD_LETTER_URL=(\S+) \\\n    (\S+) dead list --handler email_receipt$",
        report,
        re.M,
    )
    assert found, report
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    env["EVENTLIB_DEAD_LETTER_URL"] = found[1]
    listed = subprocess.run(
        [found[2], "dead", "list", "--handler", "email_receipt", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert len(letters) == count
    assert {letter["handler"] for letter in letters} == {"shop.events.OrderPlaced.email_receipt"}


@pytest.mark.parametrize("kind", ["amqp", "embedded", "redis"])
def test_the_demo_processes_every_event_in_a_queue_of_its_own(tmp_path, kind):
    if kind == "embedded":
        settings = {}
        # The default: the demo's worker and its logging process share it.
        broker = f"eventlib+sqlite:///{state_directory()}/broker.sqlite"
    else:
        url = broker_url(kind)
        settings = {"EVENTLIB_BROKER_URL": url}
        broker = maybe_sanitize_url(url)

    report = run_demo(tmp_path, 120, **settings)

    assert report.startswith(f"eventlib demo: broker {broker}\n"), report
    # Not eventlib's default queue, which other consumers of the broker may
    # share: a queue of the run's own, which its worker consumed.
    queue = OWN_QUEUE.search(report)[1]
    assert re.search(rf"^\s*\.> {queue}\s+exchange={queue}\(direct\)", worker_log(report), re.M)
    assert re.search(r"events logged\s+120 ", report)
    assert re.search(r"events processed\s+120\n", report)
    assert re.search(r"events lost\s+0\n", report)
    # 120 events: 40 orders (two handlers, one failing) and 80 page views,
    # each also audited.
    assert re.search(r"ok\s+save_order\s+40\n", report)
    assert re.search(r"ok\s+count_view\s+80\n", report)
    assert re.search(r"ok\s+audit\s+120\n", report)
    assert re.search(r"failed\s+email_receipt\s+40\n", report)
    assert_the_report_is_aligned(report)
    assert_the_report_lists_the_dead_letters(report, count=40)
    if kind != "embedded":
        assert not queue_exists(settings["EVENTLIB_BROKER_URL"], queue), f"{queue} is left"


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_the_demo_uses_and_keeps_the_queue_eventlib_queue_names(tmp_path, broker, queue):
    report = run_demo(tmp_path, 12, EVENTLIB_BROKER_URL=broker, EVENTLIB_QUEUE=queue)

    assert f"\n  queue {queue} (from EVENTLIB_QUEUE)\n" in report, report
    assert re.search(rf"^\s*\.> {queue}\s+exchange={queue}\(direct\)", worker_log(report), re.M)
    assert re.search(r"events processed\s+12\n", report)
    assert re.search(r"events lost\s+0\n", report)
    assert queue_exists(broker, queue)  # the queue fixture deletes it
