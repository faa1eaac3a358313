"""Per-handler retries and dead letters with real ``eventlib worker``
processes, on every broker.

``shop.Refund`` (tests/integration/support.py) has four handlers: ``ledger``
and ``notify`` succeed, ``flaky`` fails its first two runs, and ``broken``
fails until a file says it was fixed.  The event retries twice, ``broken``
once, each retry ``n`` waiting ``1.0 ** n`` seconds times 0.5 to 1.5.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import eventlib
from eventlib import deadletters

from ..waiting import wait_for
from .support import Project

EVENTS = 4
HANDLERS = ("ledger", "flaky", "broken", "notify")
#: Each retry waits at least half of backoff ** n, with backoff 1.0.
SHORTEST_DELAY = 0.5


def runs_of(project: Project) -> dict[str, Counter[str]]:
    """Per event id, how many times each handler ran."""
    runs: dict[str, Counter[str]] = {}
    for event_id, handler in project.records.query("select event_id, handler from runs"):
        runs.setdefault(event_id, Counter())[handler] += 1
    return runs


def log_refunds(project: Project) -> list[str]:
    project.configure_here()
    return [eventlib.log("shop.Refund", {"order_id": n, "tags": ("a", n)}) for n in range(EVENTS)]


def settle(project: Project, ids: list[str]) -> list[deadletters.DeadLetter]:
    """Wait until every event has its dead letter and every retry ran."""
    expected = {event_id: Counter(ledger=1, flaky=3, broken=2, notify=1) for event_id in ids}
    wait_for(lambda: runs_of(project) == expected, 90, f"the handlers to run as {expected}")
    return wait_for(
        lambda: (letters := deadletters.list_dead_letters()) and len(letters) == EVENTS and letters,
        30,
        f"{EVENTS} dead letters",
    )


def eventlib_command(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """``eventlib *args`` in a process of its own, with the workers' settings."""
    return subprocess.run(
        [sys.executable, "-m", "eventlib", *args],
        env=project.environment(),
        cwd=project.tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def counters_at_exit(log: str) -> Counter[str]:
    """The sum of the counters each pool process logged when it exited."""
    total: Counter[str] = Counter()
    for line in re.findall(r"eventlib counters: (.*)", log):
        for pair in line.split():
            name, _, value = pair.partition("=")
            total[name] += int(value)
    return total


def test_a_failing_handler_is_retried_alone_then_becomes_one_dead_letter(project):
    worker = project.start_worker()

    ids = log_refunds(project)
    letters = settle(project, ids)

    # One dead letter per event, for the handler that never succeeded.
    assert sorted(letter.event_id for letter in letters) == sorted(ids)
    for letter in letters:
        assert letter.event_name == "shop.Refund"
        assert letter.handler == "shop.events.Refund.broken"
        assert letter.attempts == 2
        assert letter.reason == f"RuntimeError: broken for {letter.event_id}"
        assert "Traceback (most recent call last)" in letter.traceback
        assert 'raise RuntimeError(f"broken for {self.id}")' in letter.traceback
        assert letter.traceback.rstrip().endswith(letter.reason)
    data = {letter.event_id: letter.data for letter in letters}
    assert data == {event_id: {"order_id": n, "tags": ["a", n]} for n, event_id in enumerate(ids)}

    # Each retry waited its delay: at least half of backoff ** n.
    for event_id in ids:
        times = [
            at
            for (at,) in project.records.query(
                "select at from runs where event_id = ? and handler = 'flaky' order by at",
                event_id,
            )
        ]
        assert times[1] - times[0] >= SHORTEST_DELAY, times
        assert times[2] - times[1] >= SHORTEST_DELAY, times

    worker.stop()  # warm shutdown: each pool process logs its counters
    assert counters_at_exit(worker.log) == Counter(
        logged=0,
        spooled=0,
        published_from_spool=0,
        processed=EVENTS,
        handler_failures=EVENTS * 4,  # flaky twice, broken twice
        retries=EVENTS * 3,  # flaky twice, broken once
        dead_letters=EVENTS,
    )
    # Nothing ran again while the worker finished.
    assert runs_of(project) == {
        event_id: Counter(ledger=1, flaky=3, broken=2, notify=1) for event_id in ids
    }


def test_eventlib_dead_retry_runs_only_the_failed_handler(project):
    project.start_worker()
    ids = log_refunds(project)
    first, *_ = settle(project, ids)

    # Still broken: the dead letter stays, with one more attempt.
    result = eventlib_command(project, "dead", "retry", str(first.id))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sent    {first.id}  shop.Refund  shop.events.Refund.broken\n"
    wait_for(lambda: deadletters.get(first.id).attempts == 3, 60, "the retry to fail in the worker")
    assert runs_of(project)[first.event_id] == Counter(ledger=1, flaky=3, broken=3, notify=1)
    assert "RuntimeError: broken for" in deadletters.get(first.id).traceback

    # Fixed: every dead letter is retried, succeeds and is removed.
    (project.records.path.parent / (project.records.path.name + ".fixed")).touch()
    result = eventlib_command(project, "dead", "retry", "--all")

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == EVENTS
    wait_for(lambda: deadletters.list_dead_letters() == [], 60, "every dead letter to succeed")
    runs = runs_of(project)
    assert runs[first.event_id] == Counter(ledger=1, flaky=3, broken=4, notify=1)
    for event_id in set(ids) - {first.event_id}:
        assert runs[event_id] == Counter(ledger=1, flaky=3, broken=3, notify=1)
    listed = eventlib_command(project, "dead", "list")
    assert (listed.returncode, listed.stdout) == (
        0,
        f"dead letters: {project.dead_letter_url}\nno dead letters\n",
    )
