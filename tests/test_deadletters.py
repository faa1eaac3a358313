"""Dead letters: their storage, retrying them, and ``eventlib dead``."""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

import eventlib
from eventlib import deadletters, metrics
from eventlib.cli import main
from eventlib.serialization import serialize_event

SHOP_EVENTS = """
    import os

    from eventlib import BaseEvent, handler

    RUNS = []


    def fixed():
        return os.environ.get('SHOP_FIXED') == '1'


    class Refund(BaseEvent):
        @handler
        def ledger(self):
            RUNS.append(('ledger', self.data))

        @handler
        def charge(self):
            RUNS.append(('charge', self.data))
            if not fixed():
                raise RuntimeError('card declined')

        @handler
        def notify(self):
            RUNS.append(('notify', self.data))
"""


@pytest.fixture
def shop(shop, monkeypatch):
    """The app ``shop``, whose handler ``charge`` fails until ``SHOP_FIXED=1``."""
    monkeypatch.delenv("SHOP_FIXED", raising=False)
    return shop


def handlers_run(shop) -> list[str]:
    return [name for name, _ in shop.RUNS]


def a_dead_letter(**fields) -> int:
    values = {
        "event_name": "shop.Refund",
        "event_id": "event-1",
        "payload": '{"id": "event-1", "created_at": "2026-01-01T00:00:00+00:00", "data": {}}',
        "handler": "shop.events.Refund.charge",
        "attempts": 1,
        "reason": "RuntimeError: card declined",
        "traceback": "Traceback (most recent call last):\n...\nRuntimeError: card declined\n",
    }
    return deadletters.record(**{**values, **fields})


def fail_a_refund(shop, data=None) -> deadletters.DeadLetter:
    """Process a refund whose ``charge`` fails: one dead letter."""
    event = shop.Refund({"order_id": 7} if data is None else data)
    eventlib.process("shop.Refund", serialize_event(event))
    [letter] = deadletters.list_dead_letters()
    shop.RUNS.clear()
    return letter


# --------------------------------------------------------------- storage ---


def test_a_dead_letter_keeps_everything_about_the_failure():
    before = datetime.now(UTC)

    new_id = a_dead_letter(attempts=3)

    letter = deadletters.get(new_id)
    assert letter == deadletters.DeadLetter(
        id=new_id,
        event_name="shop.Refund",
        event_id="event-1",
        payload='{"id": "event-1", "created_at": "2026-01-01T00:00:00+00:00", "data": {}}',
        handler="shop.events.Refund.charge",
        attempts=3,
        reason="RuntimeError: card declined",
        traceback="Traceback (most recent call last):\n...\nRuntimeError: card declined\n",
        failed_at=letter.failed_at,
    )
    assert letter.failed_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= letter.failed_at <= datetime.now(UTC)
    assert json.loads(json.dumps(letter.as_dict())) == {
        **letter.as_dict(),
        "failed_at": letter.failed_at.isoformat(),
    }


def test_the_data_comes_back_exactly(shop):
    data = {"amount": Decimal("12.50"), "at": datetime(2026, 1, 2, 3, 4, tzinfo=UTC), "n": (1, 2)}

    letter = fail_a_refund(shop, data)

    assert letter.data == {**data, "n": [1, 2]}
    assert type(letter.data["amount"]) is Decimal


def failed_at(dead_letter_id: int, when: datetime) -> None:
    """Pretend the dead letter last failed at ``when``."""
    with deadletters._database.engine().begin() as connection:
        connection.execute(
            update(deadletters.TABLE)
            .where(deadletters.TABLE.c.id == dead_letter_id)
            .values(failed_at=when)
        )


def test_listing_is_by_last_failure_oldest_first():
    ids = [a_dead_letter(event_id=f"event-{n}") for n in range(3)]
    assert [letter.id for letter in deadletters.list_dead_letters()] == ids

    # The first fails again: it is now the one that failed last.
    deadletters.failed_again(ids[0], reason="RuntimeError: again", traceback="")
    assert [letter.id for letter in deadletters.list_dead_letters()] == [ids[1], ids[2], ids[0]]

    failed_at(ids[2], datetime(2020, 1, 1, tzinfo=UTC))
    assert [letter.id for letter in deadletters.list_dead_letters()] == [ids[2], ids[1], ids[0]]
    assert deadletters.get(max(ids) + 1) is None


def test_listing_filters_by_event_handler_and_time():
    charge = a_dead_letter(handler="shop.events.Refund.charge")
    notify = a_dead_letter(handler="shop.events.Refund.notify")
    whole = a_dead_letter(event_name="shop.Nope", handler=None)
    failed_at(charge, datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    failed_at(notify, datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    failed_at(whole, datetime(2026, 3, 3, 12, 0, tzinfo=UTC))

    def listed(**filters) -> list[int]:
        return [letter.id for letter in deadletters.list_dead_letters(**filters)]

    assert listed(event="shop.Refund") == [charge, notify]
    assert listed(event="shop.Nope") == [whole]
    assert listed(event="shop") == []
    # The qualified name, or its end after a dot.
    assert listed(handler="shop.events.Refund.charge") == [charge]
    assert listed(handler="Refund.charge") == [charge]
    assert listed(handler="charge") == [charge]
    assert listed(handler="harge") == []
    # SQL's wildcards are plain characters.
    assert listed(handler="_harge") == []
    assert listed(handler="%") == []
    # At or after; a time without a zone is UTC.
    assert listed(since=datetime(2026, 3, 2, 12, 0, tzinfo=UTC)) == [notify, whole]
    assert listed(since=datetime(2026, 3, 2, 12, 0)) == [notify, whole]
    assert listed(since=datetime(2026, 3, 2, 13, 30, tzinfo=timezone(timedelta(hours=2)))) == [
        notify,
        whole,
    ]
    assert listed(since=datetime(2026, 3, 2, 12, 0, 1, tzinfo=UTC)) == [whole]
    assert listed(event="shop.Refund", handler="notify", since=datetime(2026, 3, 1)) == [notify]


def test_purge_takes_the_same_filters():
    charge = a_dead_letter(handler="shop.events.Refund.charge")
    a_dead_letter(handler="shop.events.Refund.notify")
    a_dead_letter(event_name="shop.Nope", handler=None)
    failed_at(charge, datetime(2026, 3, 1, tzinfo=UTC))

    assert deadletters.purge(handler="notify") == 1
    assert deadletters.purge(event="shop.Refund", since=datetime(2026, 3, 2)) == 0
    assert deadletters.purge(event="shop.Nope") == 1
    assert [letter.id for letter in deadletters.list_dead_letters()] == [charge]


def test_purge_deletes_everything_and_ids_are_never_reused():
    first = a_dead_letter()
    second = a_dead_letter()

    assert deadletters.purge() == 2
    assert deadletters.list_dead_letters() == []
    assert a_dead_letter() > second > first
    assert deadletters.purge() == 1
    assert deadletters.purge() == 0


def test_the_table_is_created_on_first_use(tmp_path):
    path = tmp_path / "new" / "dead.sqlite"
    path.parent.mkdir()
    eventlib.configure(dead_letter_url=f"sqlite:///{path}")
    assert not path.exists()

    assert deadletters.list_dead_letters() == []

    db = sqlite3.connect(path)
    try:
        columns = [row[1] for row in db.execute("pragma table_info(eventlib_dead_letters)")]
        journal = db.execute("pragma journal_mode").fetchone()[0]
    finally:
        db.close()
    assert columns == [
        "id",
        "event_name",
        "event_id",
        "payload",
        "handler",
        "attempts",
        "reason",
        "traceback",
        "failed_at",
    ]
    assert journal == "wal"


def test_changing_the_setting_changes_the_database(tmp_path):
    eventlib.configure(dead_letter_url=f"sqlite:///{tmp_path / 'one.sqlite'}")
    a_dead_letter(event_id="in-one")
    eventlib.configure(dead_letter_url=f"sqlite:///{tmp_path / 'two.sqlite'}")

    assert deadletters.list_dead_letters() == []
    a_dead_letter(event_id="in-two")
    eventlib.configure(dead_letter_url=f"sqlite:///{tmp_path / 'one.sqlite'}")
    assert [letter.event_id for letter in deadletters.list_dead_letters()] == ["in-one"]


def test_a_url_sqlalchemy_cannot_use_is_a_configuration_error():
    eventlib.configure(dead_letter_url="nosuchdb://host/name")

    with pytest.raises(eventlib.ConfigurationError, match="dead_letter_url 'nosuchdb://host/name'"):
        deadletters.list_dead_letters()


def test_a_database_that_cannot_be_opened_raises_sqlalchemy_s_error(tmp_path):
    eventlib.configure(dead_letter_url=f"sqlite:///{tmp_path / 'missing' / 'dead.sqlite'}")

    with pytest.raises(SQLAlchemyError):
        a_dead_letter()


WRITER = """
import sys
import eventlib
from eventlib import deadletters

eventlib.configure(dead_letter_url=sys.argv[1])
for n in range(int(sys.argv[3])):
    deadletters.record(
        event_name="shop.Refund", event_id=f"{sys.argv[2]}-{n}", payload="{}",
        handler=None, attempts=1, reason="r", traceback="",
    )
"""


def test_several_processes_may_record_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'dead.sqlite'}"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, f"writer{n}", "100"]) for n in range(4)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0, 0]

    eventlib.configure(dead_letter_url=url)
    letters = deadletters.list_dead_letters()
    assert len(letters) == 400
    assert Counter(letter.event_id.partition("-")[0] for letter in letters) == {
        f"writer{n}": 100 for n in range(4)
    }
    assert len({letter.id for letter in letters}) == 400


def test_recording_counts_dead_letters():
    metrics.reset()
    a_dead_letter()
    a_dead_letter()

    assert metrics.snapshot()["dead_letters"] == 2
    metrics.reset()


# -------------------------------------------------------------- retrying ---


def test_retry_here_runs_only_the_failed_handler_and_keeps_it_when_it_fails(shop):
    letter = fail_a_refund(shop)

    result = deadletters.retry(letter.id, here=True)

    assert handlers_run(shop) == ["charge"]
    assert result.failed[0].handler == "shop.events.Refund.charge"
    kept = deadletters.get(letter.id)
    assert kept.attempts == letter.attempts + 1 == 2
    assert kept.reason == "RuntimeError: card declined"
    assert kept.failed_at > letter.failed_at
    assert len(deadletters.list_dead_letters()) == 1


def test_retry_here_removes_the_dead_letter_when_it_succeeds(shop, monkeypatch):
    letter = fail_a_refund(shop, {"order_id": 7, "amount": Decimal("1.10")})
    monkeypatch.setenv("SHOP_FIXED", "1")

    result = deadletters.retry(letter.id, here=True)

    runs = shop.RUNS
    assert runs == [("charge", {"order_id": 7, "amount": Decimal("1.10")})]
    assert result.succeeded == ("shop.events.Refund.charge",)
    assert result.ok
    assert deadletters.list_dead_letters() == []


def test_a_retried_dead_letter_is_not_retried_automatically(shop):
    class_retries = shop.Refund.retries
    shop.Refund.retries = 5
    try:
        eventlib.configure(always_eager=True)
        letter = fail_a_refund(shop)  # 6 runs: the first and 5 retries
        assert letter.attempts == 6

        deadletters.retry(letter.id, here=True)
    finally:
        shop.Refund.retries = class_retries

    assert handlers_run(shop) == ["charge"]
    assert deadletters.get(letter.id).attempts == 7


def test_retry_sends_the_handler_to_the_workers(shop, memory_app):
    letter = fail_a_refund(shop)
    eventlib.configure(celery_app=memory_app, always_eager=False)

    assert deadletters.retry(letter.id) is None

    with memory_app.connection_for_read() as connection:
        queue = connection.SimpleQueue("eventlib")
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.headers["task"] == "eventlib.retry_handler"
    args, kwargs, _ = message.decode()
    assert args == ["shop.Refund", letter.payload, "shop.events.Refund.charge", 2]
    assert kwargs == {"dead_letter": letter.id}
    assert handlers_run(shop) == []

    # What the worker does with it.
    memory_app.tasks["eventlib.retry_handler"].apply(args=args, kwargs=kwargs)

    assert handlers_run(shop) == ["charge"]
    assert deadletters.get(letter.id).attempts == 2


def test_retry_in_eager_mode_runs_at_once(shop, monkeypatch):
    letter = fail_a_refund(shop)
    eventlib.configure(always_eager=True)
    monkeypatch.setenv("SHOP_FIXED", "1")

    assert deadletters.retry(letter.id) is None

    assert handlers_run(shop) == ["charge"]
    assert deadletters.list_dead_letters() == []


def test_retry_to_an_unreachable_broker_raises_dispatch_error(shop):
    letter = fail_a_refund(shop)
    eventlib.configure(broker_url="amqp://guest:secret@127.0.0.1:1//", broker_timeout=0.5)

    with pytest.raises(
        eventlib.DispatchError, match=r"could not send dead letter \d+ to the broker"
    ):
        deadletters.retry(letter.id)

    assert deadletters.get(letter.id) == letter


def test_retry_of_an_unknown_dead_letter():
    with pytest.raises(LookupError, match="there is no dead letter 42"):
        deadletters.retry(42)


def test_a_whole_event_dead_letter_runs_every_handler_once_the_event_exists(shop, isolation):
    payload = serialize_event(shop.Refund({"order_id": 1}))
    with pytest.raises(eventlib.EventNotFound):
        eventlib.process("shop.Deleted", payload)
    [letter] = deadletters.list_dead_letters()
    assert (letter.handler, letter.attempts) == (None, 1)

    # Still missing: kept, one more attempt.
    with pytest.raises(eventlib.EventNotFound):
        deadletters.retry(letter.id, here=True)
    assert deadletters.get(letter.id).attempts == 2

    # Deployed again: every handler runs, the dead letter goes; the failing
    # handler is a dead letter of its own.
    isolation.write("shop/events.py", SHOP_EVENTS + "\n    class Deleted(Refund):\n        pass\n")
    shop = importlib.import_module("shop.events")
    result = deadletters.retry(letter.id, here=True)

    assert handlers_run(shop) == ["ledger", "charge", "notify"]
    assert result.failed[0].handler == "shop.events.Refund.charge"
    assert [(d.event_name, d.handler) for d in deadletters.list_dead_letters()] == [
        ("shop.Deleted", "shop.events.Refund.charge")
    ]


def test_retry_all_retries_every_dead_letter_oldest_first(shop, monkeypatch):
    fail_a_refund(shop, {"order_id": 1})
    eventlib.process("shop.Refund", serialize_event(shop.Refund({"order_id": 2})))
    with pytest.raises(eventlib.EventNotFound):
        eventlib.process("shop.Nope", serialize_event(shop.Refund({"order_id": 3})))
    ids = [letter.id for letter in deadletters.list_dead_letters()]
    shop.RUNS.clear()
    monkeypatch.setenv("SHOP_FIXED", "1")

    assert deadletters.retry_all(here=True) == ids

    assert shop.RUNS == [("charge", {"order_id": 1}), ("charge", {"order_id": 2})]
    [left] = deadletters.list_dead_letters()  # the event that still does not exist
    assert (left.id, left.event_name, left.attempts) == (ids[2], "shop.Nope", 2)


# ------------------------------------------------------------------- CLI ---


def eventlib_command(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, input=input)
    assert not isinstance(result.exception, AssertionError), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_dead_list_shows_a_table(shop):
    letter = fail_a_refund(shop)
    whole = a_dead_letter(handler=None, reason="EventNotFound: " + "x" * 100)

    code, out, err = eventlib_command("dead", "list")

    assert (code, err) == (0, "")
    when = letter.failed_at.strftime("%Y-%m-%d %H:%M:%S")
    database, *lines = out.splitlines()
    assert database == f"dead letters: {deadletters.database_name()}"
    assert lines[0].split() == [
        "ID",
        "FAILED",
        "AT",
        "(UTC)",
        "EVENT",
        "HANDLER",
        "ATTEMPTS",
        "REASON",
    ]
    assert lines[1].split() == [
        str(letter.id),
        *when.split(),
        "shop.Refund",
        "shop.events.Refund.charge",
        "1",
        "RuntimeError:",
        "card",
        "declined",
    ]
    assert lines[2].startswith(f"{whole}   ")
    assert "(the whole event)" in lines[2]
    assert lines[2].endswith("x…")
    assert len(lines) == 3
    assert lines[0].index("HANDLER") == lines[1].index("shop.events") == lines[2].index("(the")


def test_dead_list_json_has_every_field(shop):
    letter = fail_a_refund(shop)

    code, out, _ = eventlib_command("dead", "list", "--json")

    assert code == 0
    assert json.loads(out) == [letter.as_dict()]


def test_dead_list_when_there_are_none():
    database = f"dead letters: {deadletters.database_name()}\n"
    assert eventlib_command("dead", "list") == (0, database + "no dead letters\n", "")
    assert eventlib_command("dead", "list", "--json") == (0, "[]\n", "")


def test_dead_list_orders_by_last_failure_and_filters():
    charge = a_dead_letter(handler="shop.events.Refund.charge")
    notify = a_dead_letter(handler="shop.events.Refund.notify")
    whole = a_dead_letter(event_name="shop.Nope", handler=None)
    failed_at(charge, datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    failed_at(notify, datetime.now(UTC) - timedelta(minutes=10))
    failed_at(whole, datetime(2026, 2, 1, tzinfo=UTC))

    def ids(*args: str) -> list[int]:
        code, out, err = eventlib_command("dead", "list", "--json", *args)
        assert (code, err) == (0, ""), err
        return [letter["id"] for letter in json.loads(out)]

    assert ids() == [whole, charge, notify]
    assert ids("--event", "shop.Refund") == [charge, notify]
    assert ids("--handler", "charge") == [charge]
    assert ids("--since", "2026-03-01 12:00") == [charge, notify]
    assert ids("--since", "2026-03-01T13:00+01:00") == [charge, notify]
    assert ids("--since", "2026-03-02") == [notify]
    assert ids("--since", "1h") == [notify]
    assert ids("--since", "5m") == []
    assert eventlib_command(
        "dead", "list", "--event", "shop.Refund", "--handler", "charge", "--since", "2030-01-01"
    ) == (
        0,
        f"dead letters: {deadletters.database_name()}\n"
        "no dead letters of shop.Refund of handler charge since 2030-01-01 00:00:00 UTC\n",
        "",
    )


def test_dead_list_refuses_a_time_it_cannot_read():
    code, _, err = eventlib_command("dead", "list", "--since", "yesterday")

    assert code == 2
    assert "Invalid value for '--since': 'yesterday' is neither a time" in err


def test_dead_show_prints_everything(shop):
    letter = fail_a_refund(shop, {"order_id": 7, "amount": Decimal("1.10")})

    code, out, _ = eventlib_command("dead", "show", str(letter.id))

    assert code == 0
    head, _, traceback = out.partition("traceback:\n")
    assert head.splitlines() == [
        f"id:        {letter.id}",
        "event:     shop.Refund",
        f"event id:  {letter.event_id}",
        "handler:   shop.events.Refund.charge",
        "attempts:  1",
        f"failed at: {letter.failed_at.isoformat()}",
        "reason:    RuntimeError: card declined",
        "data:",
        "  {",
        '    "amount": {',
        '      "__eventlib__": "decimal",',
        '      "value": "1.10"',
        "    },",
        '    "order_id": 7',
        "  }",
    ]
    assert traceback.startswith("  Traceback (most recent call last):\n")
    assert "    raise RuntimeError('card declined')\n" in traceback
    assert traceback.endswith("  RuntimeError: card declined\n")


def test_dead_show_json_and_unknown_ids(shop):
    letter = fail_a_refund(shop)

    code, out, _ = eventlib_command("dead", "show", str(letter.id), "--json")
    assert (code, json.loads(out)) == (0, letter.as_dict())
    assert eventlib_command("dead", "show", "99") == (
        2,
        "",
        "eventlib: there is no dead letter 99\n",
    )
    code, _, err = eventlib_command("dead", "show", "x")
    assert code == 2
    assert "'x' is not a valid integer" in err


def test_dead_retry_here_prints_the_outcome_and_exits_1_when_it_fails_again(shop, monkeypatch):
    letter = fail_a_refund(shop)

    failed = eventlib_command("dead", "retry", str(letter.id), "--here")
    monkeypatch.setenv("SHOP_FIXED", "1")
    fixed = eventlib_command("dead", "retry", str(letter.id), "--here")

    assert failed[:2] == (
        1,
        f"FAILED  {letter.id}  shop.Refund  shop.events.Refund.charge: "
        "RuntimeError('card declined')\n",
    )
    assert fixed == (0, f"ok      {letter.id}  shop.Refund  shop.events.Refund.charge\n", "")
    assert handlers_run(shop) == ["charge", "charge"]
    assert deadletters.list_dead_letters() == []


def test_dead_retry_all_here_names_each_dead_letter(shop, monkeypatch):
    first = fail_a_refund(shop, {"order_id": 1})
    with pytest.raises(eventlib.EventNotFound):
        eventlib.process("shop.Nope", serialize_event(shop.Refund({"order_id": 2})))
    second = deadletters.list_dead_letters()[1]
    monkeypatch.setenv("SHOP_FIXED", "1")

    code, out, _ = eventlib_command("dead", "retry", "--all", "--here")

    assert code == 1
    assert out.splitlines() == [
        f"ok      {first.id}  shop.Refund  shop.events.Refund.charge",
        f"FAILED  {second.id}  shop.Nope  (the whole event): "
        "EventNotFound: There is no event named Nope in the shop app",
    ]


def test_dead_retry_sends_to_the_workers_by_default(shop, memory_app):
    letter = fail_a_refund(shop)
    eventlib.configure(celery_app=memory_app)

    code, out, _ = eventlib_command("dead", "retry", "--all")

    assert (code, out) == (0, f"sent    {letter.id}  shop.Refund  shop.events.Refund.charge\n")
    assert handlers_run(shop) == []
    with memory_app.connection_for_read() as connection:
        queue = connection.SimpleQueue("eventlib")
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.decode()[1] == {"dead_letter": letter.id}


def test_dead_retry_usage_errors(shop):
    assert eventlib_command("dead", "retry") == (
        2,
        "",
        "eventlib: give a dead letter ID or --all (one of them)\n",
    )
    assert eventlib_command("dead", "retry", "3", "--all")[0] == 2
    assert eventlib_command("dead", "retry", "3") == (
        2,
        "",
        "eventlib: there is no dead letter 3\n",
    )
    assert eventlib_command("dead", "retry", "--all") == (0, "no dead letters\n", "")


def test_dead_retry_with_the_broker_down_exits_3(shop):
    letter = fail_a_refund(shop)

    code, out, err = eventlib_command(
        "--broker-url", "amqp://guest:secret@127.0.0.1:1//", "dead", "retry", str(letter.id)
    )

    assert (code, out) == (3, "")
    assert err.startswith(f"eventlib: could not send dead letter {letter.id} to the broker amqp://")
    assert "secret" not in err
    assert deadletters.get(letter.id) == letter


def test_dead_purge_asks_first(shop):
    fail_a_refund(shop)
    url = eventlib.conf.get_settings().dead_letter_url

    code, out, _ = eventlib_command("dead", "purge", input="n\n")
    assert code == 1
    assert out.startswith(f"Delete 1 dead letter from {url}? [y/N]: ")
    assert len(deadletters.list_dead_letters()) == 1

    code, out, _ = eventlib_command("dead", "purge", input="y\n")
    assert code == 0
    assert out.endswith("purged 1 dead letter\n")
    assert deadletters.list_dead_letters() == []


def test_dead_purge_yes_does_not_ask():
    a_dead_letter()
    a_dead_letter()

    assert eventlib_command("dead", "purge", "--yes") == (0, "purged 2 dead letters\n", "")
    assert eventlib_command("dead", "purge") == (0, "no dead letters\n", "")


def test_dead_purge_takes_the_filters_of_dead_list():
    charge = a_dead_letter(handler="shop.events.Refund.charge")
    a_dead_letter(handler="shop.events.Refund.notify")
    a_dead_letter(event_name="shop.Nope", handler=None)
    url = eventlib.conf.get_settings().dead_letter_url

    code, out, _ = eventlib_command("dead", "purge", "--event", "shop.Refund", input="n\n")
    assert code == 1
    assert out.startswith(f"Delete 2 dead letters of shop.Refund from {url}? [y/N]: ")

    assert eventlib_command("dead", "purge", "--handler", "notify", "--yes") == (
        0,
        "purged 1 dead letter of handler notify\n",
        "",
    )
    assert eventlib_command("dead", "purge", "--event", "shop.Nope", "--since", "1h", "--yes")[
        1
    ].startswith("purged 1 dead letter of shop.Nope since ")
    assert eventlib_command("dead", "purge", "--event", "shop.Nope") == (
        0,
        "no dead letters of shop.Nope\n",
        "",
    )
    assert [letter.id for letter in deadletters.list_dead_letters()] == [charge]


def test_dead_commands_with_an_unusable_database_exit_2(tmp_path):
    eventlib.configure(dead_letter_url=f"sqlite:///{tmp_path / 'missing' / 'dead.sqlite'}")

    code, out, err = eventlib_command("dead", "list")

    assert (code, out) == (2, "")
    assert err == (
        f"eventlib: cannot use the dead-letter database sqlite:///{tmp_path}/missing/dead.sqlite: "
        "(sqlite3.OperationalError) unable to open database file\n"
    )


def test_dead_help_describes_each_command():
    for command, described in [
        ((), "List, show, retry and purge dead letters."),
        (("list",), "List the dead letters by the time of their last failure, oldest"),
        (("show",), "Show everything about the dead letter ID"),
        (("retry",), "Run the dead letter ID (or --all of them, or all those --event"),
        (("purge",), "Delete every dead letter, or those the options keep"),
    ]:
        code, out, _ = eventlib_command("dead", *command, "--help")
        assert code == 0
        assert out.startswith(f"Usage: main dead {' '.join(command)}".rstrip())
        assert described in out


def test_dead_retry_as_a_process_with_settings_from_the_environment(shop, isolation, tmp_path):
    letter = fail_a_refund(shop)
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(isolation.root), env.get("PYTHONPATH")])),
        EVENTLIB_DEAD_LETTER_URL=eventlib.conf.get_settings().dead_letter_url,
        EVENTLIB_ALWAYS_EAGER="1",
        SHOP_FIXED="1",
    )

    result = subprocess.run(
        [sys.executable, "-m", "eventlib", "dead", "retry", str(letter.id)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sent    {letter.id}  shop.Refund  shop.events.Refund.charge\n"
    assert deadletters.list_dead_letters() == []
    assert not (eventlib.conf.state_directory() / "dead-letters.sqlite").exists()  # the default
