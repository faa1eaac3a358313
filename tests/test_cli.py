"""The ``eventlib`` command, run as a real process (``python -m eventlib``).

Every test writes its apps under ``isolation.root``, puts that directory on
the child's ``PYTHONPATH`` and passes settings through a clean environment:
no ``EVENTLIB_*`` variable of the machine reaches the child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path

import pytest

from eventlib.conf import state_file
from eventlib.spool import LEASE_SECONDS, Destination, Spool

#: Handlers append a line to the file named by this variable, so a test can
#: see that they really ran in the child process.
HANDLER_LOG = "SHOP_HANDLER_LOG"

# Registration order is deliberately the reverse of call order: patterns,
# then a function, then the class and its methods.  The listing must still
# show methods, then functions, then patterns.
SHOP_EVENTS = """
    import json
    import os

    from eventlib import BaseEvent, ValidationError, handler


    def note(line):
        with open(os.environ['SHOP_HANDLER_LOG'], 'a') as log:
            log.write(line + '\\n')


    @handler('*')
    def audit_everything(event):
        note('audit_everything')


    @handler('shop.*')
    def audit_shop(event):
        note('audit_shop')


    @handler('shop.Refund')
    def notify(event):
        note('notify ' + event.id + ' ' + json.dumps(event.data, sort_keys=True))


    class Refund(BaseEvent):
        def clean(self):
            if 'order_id' not in self.data:
                raise ValidationError('a refund needs an order_id')

        @handler
        def record(self):
            note('record')

        @handler
        def charge(self):
            note('charge')


    class Signup(BaseEvent):
        @handler
        def welcome(self):
            note('welcome')

        @handler
        def explode(self):
            raise ValueError('boom')

        @handler
        def count(self):
            note('count')
"""

BILLING_EVENTS = """
    from eventlib import BaseEvent


    class Invoice(BaseEvent):
        pass
"""

REFUND_HANDLERS = [
    "shop.events.Refund.record",
    "shop.events.Refund.charge",
    "shop.events.notify",
    "shop.events.audit_everything",
    "shop.events.audit_shop",
]

UNREACHABLE_AMQP = "amqp://guest:secret@127.0.0.1:1//"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
#: kombu's Redis transport needs the redis client, an optional dependency.
UNREACHABLE_BROKERS = [UNREACHABLE_AMQP] + ([UNREACHABLE_REDIS] if find_spec("redis") else [])


@pytest.fixture
def apps(isolation):
    """The apps ``shop`` and ``billing``; returns the handlers' log file."""
    isolation.write("shop/events.py", SHOP_EVENTS)
    isolation.write("billing/events.py", BILLING_EVENTS)
    return isolation.root / "handlers.log"


def run_cli(
    isolation, *args: str, timeout: float = 60, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run ``python -m eventlib *args`` in a child process whose only eventlib
    settings are ``env`` (``EVENTLIB_APPS='shop'`` and so on), in ``cwd``
    (by default ``isolation.root``)."""
    child_env = {key: value for key, value in os.environ.items() if not key.startswith("EVENTLIB_")}
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(isolation.root), os.environ.get("PYTHONPATH")])
    )
    child_env[HANDLER_LOG] = str(isolation.root / "handlers.log")
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "eventlib", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        cwd=cwd or isolation.root,
    )


def spool_file() -> Path:
    """The spool of the children, which give it no path: the default, in the
    state folder of the test's environment (tests/conftest.py sets
    ``XDG_STATE_HOME``), whatever their working directory."""
    return state_file("spool.sqlite")


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single line the command wrote on stderr, checking there is no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eventlib: "), result.stderr
    return lines[0]


def handler_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# ----------------------------------------------------------------- help ---


@pytest.mark.parametrize(
    ("command", "described"),
    [
        ((), "Log and process eventlib events from the shell."),
        (("events",), "List every event of the configured apps with its handlers"),
        (("log",), "Log the event NAME and print its id."),
        (("process",), "Run the handlers of the event NAME here, in this process"),
        (("worker",), "Start a Celery worker for eventlib's queue."),
    ],
)
def test_help_describes_each_command(isolation, command, described):
    result = run_cli(isolation, *command, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: eventlib {' '.join(command)}".rstrip())
    assert described in result.stdout
    assert result.stderr == ""


# --------------------------------------------------------------- events ---


def test_events_lists_handlers_numbered_in_call_order(isolation, apps):
    result = run_cli(isolation, "--apps", "shop,billing", "events")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "billing.Invoice",
        "  1. shop.events.audit_everything",
        "shop.Refund",
        "  1. shop.events.Refund.record",
        "  2. shop.events.Refund.charge",
        "  3. shop.events.notify",
        "  4. shop.events.audit_everything",
        "  5. shop.events.audit_shop",
        "shop.Signup",
        "  1. shop.events.Signup.welcome",
        "  2. shop.events.Signup.explode",
        "  3. shop.events.Signup.count",
        "  4. shop.events.audit_everything",
        "  5. shop.events.audit_shop",
    ]


def test_events_json_lists_names_and_handlers_of_the_apps_in_the_environment(isolation, apps):
    result = run_cli(isolation, "events", "--json", EVENTLIB_APPS="billing")

    assert result.returncode == 0, result.stderr
    # shop is not configured: its '*' handler is not imported, and its events are not listed.
    assert json.loads(result.stdout) == [{"name": "billing.Invoice", "handlers": []}]


def test_events_text_says_when_an_event_has_no_handlers(isolation, apps):
    result = run_cli(isolation, "events", EVENTLIB_APPS="billing")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["billing.Invoice", "  (no handlers)"]


def test_events_without_apps_is_a_usage_error(isolation, apps):
    result = run_cli(isolation, "events")

    assert result.returncode == 2
    assert one_line_error(result).startswith("eventlib: no apps configured")
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [("events",), ("log", "broken.Anything"), ("process", "broken.Anything")],
    ids=["events", "log", "process"],
)
def test_an_events_module_that_fails_to_import_is_reported_on_one_line(isolation, command):
    # A RuntimeError is not an ImportError: it must not escape as a traceback.
    isolation.write("broken/events.py", "raise RuntimeError('broken')\n")

    result = run_cli(isolation, "--apps", "broken", *command, EVENTLIB_ALWAYS_EAGER="1")

    assert result.returncode != 0
    line = one_line_error(result)
    assert "broken" in line
    assert result.stdout == ""


# ------------------------------------------------------------------ log ---


def test_log_eager_prints_the_event_id_and_runs_the_handlers(isolation, apps):
    result = run_cli(
        isolation, "log", "shop.Refund", "order_id=42", "note=a=b", EVENTLIB_ALWAYS_EAGER="1"
    )

    assert result.returncode == 0, result.stderr
    event_id = result.stdout.strip()
    assert result.stdout == event_id + "\n"
    assert str(uuid.UUID(event_id)) == event_id
    # Values given as key=value are strings; only the first '=' splits.
    assert handler_lines(apps) == [
        "record",
        "charge",
        f'notify {event_id} {{"note": "a=b", "order_id": "42"}}',
        "audit_everything",
        "audit_shop",
    ]


def test_log_json_gives_typed_data(isolation, apps):
    result = run_cli(
        isolation,
        "log",
        "shop.Refund",
        "--json",
        '{"order_id": 1, "lines": [1.5, null], "gift": true}',
        EVENTLIB_ALWAYS_EAGER="1",
    )

    assert result.returncode == 0, result.stderr
    event_id = result.stdout.strip()
    notified = [line for line in handler_lines(apps) if line.startswith("notify")]
    assert notified == [f'notify {event_id} {{"gift": true, "lines": [1.5, null], "order_id": 1}}']


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("order_id=1", "--json", '{"order_id": 1}'),
            "eventlib: give the data either as key=value pairs or with --json, not both",
        ),
        (("order_id=1", "oops"), "eventlib: expected key=value, got 'oops'"),
        (("=1",), "eventlib: expected key=value, got '=1'"),
        (
            ("--json", "{order_id: 1}"),
            "eventlib: --json is not valid JSON: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        (("--json", "[1, 2]"), "eventlib: --json must be a JSON object, not list"),
    ],
    ids=["pairs-and-json", "no-equals", "empty-key", "invalid-json", "json-not-object"],
)
def test_log_refuses_malformed_data(isolation, apps, args, message):
    result = run_cli(isolation, "log", "shop.Refund", *args, EVENTLIB_ALWAYS_EAGER="1")

    assert result.returncode == 2
    assert one_line_error(result) == message
    assert result.stdout == ""
    assert handler_lines(apps) == []


def test_log_unknown_event_is_a_usage_error(isolation, apps):
    result = run_cli(isolation, "log", "shop.Nope", "order_id=1", EVENTLIB_ALWAYS_EAGER="1")

    assert result.returncode == 2
    assert one_line_error(result) == "eventlib: There is no event named Nope in the shop app"
    assert result.stdout == ""


def test_log_invalid_data_names_the_error_and_the_event(isolation, apps):
    result = run_cli(isolation, "log", "shop.Refund", "amount=3", EVENTLIB_ALWAYS_EAGER="1")

    assert result.returncode == 2
    line = one_line_error(result)
    assert "a refund needs an order_id" in line
    assert "shop.Refund" in line
    assert result.stdout == ""
    assert handler_lines(apps) == []


@pytest.mark.parametrize("broker_url", UNREACHABLE_BROKERS)
def test_log_to_an_unreachable_broker_spools_the_event_and_exits_3(isolation, apps, broker_url):
    # The timeout is the bound: a hanging connection would raise TimeoutExpired.
    result = run_cli(
        isolation, "--broker-url", broker_url, "log", "shop.Refund", "order_id=1", timeout=20
    )

    assert result.returncode == 3, result.stderr
    event_id = result.stdout.strip()
    assert result.stdout == event_id + "\n"
    assert uuid.UUID(event_id)
    assert "Traceback" not in result.stderr
    # The library's warning (with the cause), then the command's own line.
    assert "spooling them in" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"eventlib: the broker {broker_url.replace('secret', '**')} is unreachable: the event "
        f"is kept in the spool {spool_file()}; "
        "`eventlib spool flush` will send it"
    )
    assert "secret" not in result.stderr  # the password is masked
    spool = sqlite3.connect(spool_file())
    try:
        assert spool.execute("select event_id, name from spool").fetchall() == [
            (event_id, "shop.Refund")
        ]
    finally:
        spool.close()
    assert handler_lines(apps) == []


@pytest.mark.parametrize("broker_url", UNREACHABLE_BROKERS)
def test_log_exits_3_when_neither_the_broker_nor_the_spool_takes_the_event(
    isolation, apps, broker_url
):
    result = run_cli(
        isolation,
        "--broker-url",
        broker_url,
        "log",
        "shop.Refund",
        "order_id=1",
        timeout=20,
        EVENTLIB_SPOOL_PATH=str(isolation.root / "missing" / "spool.sqlite"),
    )

    assert result.returncode == 3
    line = result.stderr.splitlines()[-1]
    assert line.startswith("eventlib: could not send the event shop.Refund")
    assert "127.0.0.1:1" in line
    assert "nor keep it in the spool" in line
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_log_to_a_reachable_broker_sends_the_event_and_exits_0(isolation, apps):
    # kombu's in-memory broker lives in the child process: always reachable.
    result = run_cli(isolation, "--broker-url", "memory://", "log", "shop.Refund", "order_id=1")

    assert result.returncode == 0, result.stderr
    assert uuid.UUID(result.stdout.strip())
    assert result.stderr == ""
    assert not spool_file().exists()
    assert handler_lines(apps) == []  # sent, not run: no worker


def test_log_to_an_unknown_broker_scheme_fails_on_one_line(isolation, apps):
    result = run_cli(isolation, "--broker-url", "foo://x", "log", "shop.Refund", "order_id=1")

    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith("eventlib: unknown broker URL scheme in foo://x")
    assert "No such transport: foo" in line
    assert result.stdout == ""


# -------------------------------------------------------------- process ---


def test_process_runs_every_handler_here_and_exits_0(isolation, apps):
    result = run_cli(
        isolation, "--apps", "shop", "process", "shop.Refund", "--json", '{"order_id": 7}'
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ok      {name}" for name in REFUND_HANDLERS]
    lines = handler_lines(apps)
    assert lines[:2] == ["record", "charge"]
    assert lines[2].startswith("notify ")
    assert lines[2].endswith(' {"order_id": 7}')
    assert lines[3:] == ["audit_everything", "audit_shop"]


def test_process_reports_a_failed_handler_and_exits_1(isolation, apps):
    result = run_cli(isolation, "--apps", "shop", "process", "shop.Signup")

    assert result.returncode == 1
    output = result.stdout.splitlines()
    assert [line for line in output if line.startswith("ok ")] == [
        "ok      shop.events.Signup.welcome",
        "ok      shop.events.Signup.count",
        "ok      shop.events.audit_everything",
        "ok      shop.events.audit_shop",
    ]
    assert [line for line in output if not line.startswith("ok ")] == [
        "FAILED  shop.events.Signup.explode: ValueError('boom')"
    ]
    # The next handlers still ran after the one that raised.
    assert handler_lines(apps) == ["welcome", "count", "audit_everything", "audit_shop"]


def test_process_invalid_data_exits_1_with_the_message(isolation, apps):
    result = run_cli(
        isolation, "--apps", "shop", "process", "shop.Refund", "--json", '{"amount": 3}'
    )

    assert result.returncode == 1
    assert (
        "eventlib: shop.Refund has invalid data: a refund needs an order_id"
        in result.stderr.splitlines()
    )
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert handler_lines(apps) == []


# --------------------------------------------------------------- worker ---


def test_worker_without_apps_is_a_usage_error(isolation, apps):
    result = run_cli(isolation, "--broker-url", UNREACHABLE_AMQP, "worker")

    assert result.returncode == 2
    assert one_line_error(result).startswith("eventlib: no apps configured")


def test_worker_with_an_unreachable_broker_exits_3_on_one_line(isolation, apps):
    result = run_cli(
        isolation, "worker", timeout=20, EVENTLIB_APPS="shop", EVENTLIB_BROKER_URL=UNREACHABLE_AMQP
    )

    assert result.returncode == 3
    assert one_line_error(result).startswith(
        "eventlib: cannot reach the broker amqp://guest:**@127.0.0.1:1//: "
    )


def test_worker_with_an_unknown_broker_scheme_is_a_usage_error(isolation, apps):
    result = run_cli(isolation, "--apps", "shop", "--broker-url", "foo://x", "worker")

    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith("eventlib: unknown broker URL scheme in foo://x")


# ---------------------------------------------------------------- spool ---

#: Fast failures: the broker refuses at once, and nothing waits longer.
SPOOL_ENV = {"EVENTLIB_BROKER_TIMEOUT": "0.5"}


def spool_rows(isolation) -> list[tuple[str, str]]:
    connection = sqlite3.connect(spool_file())
    try:
        return connection.execute("select event_id, name from spool order by seq").fetchall()
    finally:
        connection.close()


def log_while_the_broker_is_down(isolation, count: int) -> list[str]:
    ids = []
    for order_id in range(count):
        result = run_cli(
            isolation,
            "--broker-url",
            UNREACHABLE_AMQP,
            "log",
            "shop.Refund",
            f"order_id={order_id}",
            timeout=20,
            **SPOOL_ENV,
        )
        assert result.returncode == 3, result.stderr
        ids.append(result.stdout.strip())
    return ids


def test_spool_status_of_an_empty_spool(isolation, apps):
    text = run_cli(isolation, "spool", "status")
    as_json = run_cli(isolation, "spool", "status", "--json")

    assert (text.returncode, text.stderr) == (0, "")
    assert text.stdout == f"spool: {spool_file()}\nthe spool is empty\n"
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "count": 0,
        "oldest_age": None,
        "held_until": None,
        "path": str(spool_file()),
        "elsewhere": [],
    }


def test_spool_status_then_flush_while_the_broker_is_down_then_back(isolation, apps):
    ids = log_while_the_broker_is_down(isolation, 2)

    text = run_cli(isolation, "--broker-url", UNREACHABLE_AMQP, "spool", "status")
    as_json = run_cli(isolation, "--broker-url", UNREACHABLE_AMQP, "spool", "status", "--json")
    elsewhere = run_cli(isolation, "spool", "status")  # the default, embedded broker
    down = run_cli(
        isolation, "--broker-url", UNREACHABLE_AMQP, "spool", "flush", timeout=20, **SPOOL_ENV
    )

    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"spool: {spool_file()}\n"), text.stdout
    assert re.fullmatch(r"2 events, the oldest spooled \d+ s ago\n", text.stdout.split("\n", 1)[1])
    status = json.loads(as_json.stdout)
    assert (status["count"], status["held_until"], status["elsewhere"]) == (2, None, [])
    assert 0 <= status["oldest_age"] < 60
    assert elsewhere.stdout == (
        f"spool: {spool_file()}\n"
        "the spool is empty\n"
        "2 other events wait for the queue eventlib of the broker amqp://guest:**@127.0.0.1:1//\n"
    )
    # The broker is still down: exit 3, one line naming it, nothing lost.
    assert down.returncode == 3
    line = one_line_error(down)
    assert line.startswith(
        "eventlib: the broker amqp://guest:**@127.0.0.1:1// cannot take the spooled events: "
    )
    assert down.stdout == ""
    assert spool_rows(isolation) == [(event_id, "shop.Refund") for event_id in ids]

    # Another broker leaves them where they are, and says so.
    moved = run_cli(isolation, "--broker-url", "memory://", "spool", "flush", **SPOOL_ENV)

    assert moved.returncode == 4
    assert moved.stdout == "published 0 spooled events\n"
    assert one_line_error(moved) == (
        "eventlib: the spool also holds events logged for other destinations, left there: "
        "2 for the queue eventlib of the broker amqp://guest:**@127.0.0.1:1//"
    )
    assert spool_rows(isolation) == [(event_id, "shop.Refund") for event_id in ids]

    # Sent to that broker once it answers (here: its events rewritten for another).
    retarget(spool_file(), "memory:///")
    up = run_cli(isolation, "--broker-url", "memory://", "spool", "flush", **SPOOL_ENV)

    assert up.returncode == 0, up.stderr
    assert up.stdout == "published 2 spooled events\n"
    assert up.stderr == ""
    assert spool_rows(isolation) == []


def retarget(path: Path, broker: str) -> None:
    """Rewrite the broker every spooled event was logged for."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute("update spool set broker = ?", (broker,))
    finally:
        connection.close()


def test_spool_flush_exits_1_while_another_flusher_holds_the_events(isolation, apps):
    ids = log_while_the_broker_is_down(isolation, 3)
    holder = hold_while_flushing(spool_file())
    try:
        held = json.loads(
            run_cli(isolation, "--broker-url", UNREACHABLE_AMQP, "spool", "status", "--json").stdout
        )
        # The live flusher holds the batch for LEASE_SECONDS.
        assert held["count"] == 3
        assert time.time() + LEASE_SECONDS - 30 < held["held_until"] <= time.time() + LEASE_SECONDS

        text = run_cli(isolation, "--broker-url", UNREACHABLE_AMQP, "spool", "status")
        retarget(spool_file(), "memory:///")
        result = run_cli(isolation, "--broker-url", "memory://", "spool", "flush", **SPOOL_ENV)
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)

    until = datetime.fromtimestamp(held["held_until"]).astimezone()
    shown = until.strftime("%Y-%m-%d %H:%M:%S %z")
    assert text.stdout.endswith(f"; a flusher holds them until {shown}\n"), text.stdout
    assert result.returncode == 1
    assert result.stdout == "published 0 spooled events\n"
    assert one_line_error(result) == (
        f"eventlib: 3 spooled events remain: another flusher holds them until {shown}"
    )
    assert spool_rows(isolation) == [(event_id, "shop.Refund") for event_id in ids]

    # Its process is gone: the next flush takes its claim over at once.
    result = run_cli(isolation, "--broker-url", "memory://", "spool", "flush", **SPOOL_ENV)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "published 3 spooled events\n"
    assert spool_rows(isolation) == []


def hold_while_flushing(path: Path) -> int:
    """A process that claims a batch and stays in the middle of its flush
    until it is killed; return its pid once the claim is written."""
    ready, tell = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(ready)
            destination = Destination("amqp://guest:**@127.0.0.1:1//", "eventlib")

            def hold(batch):
                os.write(tell, b"held")
                time.sleep(600)

            Spool(path, destination).flush(hold)
        finally:
            os._exit(1)
    os.close(tell)
    try:
        assert os.read(ready, 16) == b"held"
    finally:
        os.close(ready)
    return pid


@pytest.mark.parametrize("command", ["status", "flush"])
def test_a_spool_file_that_is_not_a_database_exits_4_naming_the_file(isolation, command):
    spool = spool_file()
    spool.write_bytes(b"not a database, only text " * 200)

    result = run_cli(isolation, "--broker-url", "memory://", "spool", command)

    assert result.returncode == 4
    assert one_line_error(result) == (
        f"eventlib: the spool file {spool} cannot be read: file is not a database"
    )
    assert spool.read_bytes() == b"not a database, only text " * 200  # left as it was
