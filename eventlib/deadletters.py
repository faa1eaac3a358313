"""Dead letters: the failures no retry fixed, kept until someone deals with them.

A dead letter is recorded by the worker when a handler fails for the last time
(after its retries, or at once when it has none), and when an event cannot be
processed at all: its class no longer exists, its payload does not
deserialize, its data no longer passes ``clean()``.  It holds everything
needed to run the failure again: the event's name, id and payload (the JSON
``log()`` sent, so the data comes back exactly), the handler's qualified name
(``None`` when the whole event failed), how many times it was tried, the
reason, the traceback and the time of the last failure.

They live in one table, ``eventlib_dead_letters``, of the database the
``dead_letter_url`` setting names (an SQLAlchemy URL; by default the SQLite
file ``dead-letters.sqlite`` in :func:`eventlib.conf.state_directory`),
created on first use.  Every worker process writes to it, so production wants one
database all workers reach: PostgreSQL (``postgresql://...``), or an SQLite
file by absolute path when every worker runs on one machine.

:func:`list_dead_letters` lists them by the time of their last failure,
oldest first, all of them or those of one event, one handler, since a time;
:func:`purge` deletes the same.  :func:`retry` runs a dead letter again, only
the handler that failed: a success removes it; a new failure keeps it, with
one more attempt, the new reason and traceback.  ``eventlib dead`` does the
same from a shell.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql import ColumnElement

from . import _state, metrics
from ._sqlite import use_wal
from .broadcast import EXCHANGE, EXTERNAL_TASK, NoSuchGroup, check_group, group_of_key
from .brokers import broker_name
from .conf import get_settings
from .exceptions import ConfigurationError, DispatchError
from .sending import RETRY_TASK, sender
from .serialization import deserialize_event

if TYPE_CHECKING:
    from .processing import ProcessResult

__all__ = [
    "SQLITE_BUSY_TIMEOUT",
    "TABLE",
    "DeadLetter",
    "database_name",
    "failed_again",
    "get",
    "list_dead_letters",
    "purge",
    "record",
    "resolve",
    "retry",
    "retry_all",
]

logger = logging.getLogger("eventlib")

#: Seconds an SQLite writer waits for another process's write to finish.
SQLITE_BUSY_TIMEOUT = 30.0

_metadata = MetaData()

TABLE = Table(
    "eventlib_dead_letters",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_name", String(255), nullable=False),
    Column("event_id", String(255), nullable=True),
    Column("payload", Text, nullable=False),
    Column("handler", String(1000), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("traceback", Text, nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    # Ids are never reused, so a retry still on its way to a worker cannot
    # update a newer dead letter after a purge.
    sqlite_autoincrement=True,
)


@dataclass(frozen=True)
class DeadLetter:
    """One failure, as stored."""

    id: int
    event_name: str
    #: ``None`` when the payload could not be read.
    event_id: str | None
    #: The JSON text ``log()`` sent.
    payload: str
    #: The handler's qualified name; ``None`` when the whole event failed.
    handler: str | None
    #: How many times it ran and failed.
    attempts: int
    #: One line: the exception's type and message.
    reason: str
    traceback: str
    #: When it last failed (UTC).
    failed_at: datetime

    @property
    def data(self) -> dict[str, Any]:
        """The event's data, deserialized as a handler receives it.  Raises
        :class:`~eventlib.DeserializationError` when the payload cannot be
        read (or holds a type not registered in this process)."""
        return deserialize_event(self.payload).data

    def as_dict(self) -> dict[str, Any]:
        """Every field as JSON-able values (``failed_at`` in ISO 8601)."""
        fields = asdict(self)
        fields["failed_at"] = self.failed_at.isoformat()
        return fields


def record(
    *,
    event_name: str,
    event_id: str | None,
    payload: str,
    handler: str | None,
    attempts: int,
    reason: str,
    traceback: str,
) -> int:
    """Store a new dead letter and return its id.

    Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot be
    written, and :class:`~eventlib.ConfigurationError` when
    ``dead_letter_url`` is not a URL SQLAlchemy can use.
    """
    values = {
        "event_name": event_name,
        "event_id": event_id,
        "payload": payload,
        "handler": handler,
        "attempts": attempts,
        "reason": reason,
        "traceback": traceback,
        "failed_at": datetime.now(UTC),
    }
    with _database.engine().begin() as connection:
        inserted = connection.execute(insert(TABLE).values(values)).inserted_primary_key
    assert inserted is not None  # always set by an INSERT of one row
    metrics.increment("dead_letters")
    return int(inserted[0])


def list_dead_letters(
    *, event: str | None = None, handler: str | None = None, since: datetime | None = None
) -> list[DeadLetter]:
    """The dead letters, by the time of their last failure, oldest first
    (in the order they were recorded for the same time).

    Given, ``event``, ``handler`` and ``since`` keep only the dead letters
    of the event of that name (``shop.Refund``), of that handler, and those
    that last failed at or after that time.  ``handler`` is the qualified
    name (``shop.events.Refund.charge``) or its end after any dot
    (``charge``, ``Refund.charge``); the dead letter of a whole event has no
    handler, so it never matches.  ``since`` is taken as UTC when it has no
    time zone.
    """
    query = select(TABLE).where(*_matching(event=event, handler=handler, since=since))
    with _database.engine().connect() as connection:
        rows = connection.execute(query.order_by(TABLE.c.failed_at, TABLE.c.id)).all()
    return [_from_row(row) for row in rows]


def _matching(
    *, event: str | None = None, handler: str | None = None, since: datetime | None = None
) -> list[ColumnElement[bool]]:
    """The conditions of :func:`list_dead_letters`'s filters, for a query's
    ``where()``; none when no filter is given."""
    conditions: list[ColumnElement[bool]] = []
    if event is not None:
        conditions.append(TABLE.c.event_name == event)
    if handler is not None:
        end = TABLE.c.handler.endswith("." + handler, autoescape=True)
        conditions.append(or_(TABLE.c.handler == handler, end))
    if since is not None:
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
        conditions.append(TABLE.c.failed_at >= since)
    return conditions


def get(dead_letter_id: int) -> DeadLetter | None:
    """The dead letter ``dead_letter_id``, or ``None`` when there is none."""
    with _database.engine().connect() as connection:
        row = connection.execute(select(TABLE).where(TABLE.c.id == dead_letter_id)).first()
    return None if row is None else _from_row(row)


def retry(dead_letter_id: int, *, here: bool = False) -> ProcessResult | None:
    """Run the dead letter ``dead_letter_id`` again: only its handler, or the
    whole event when it was the whole event that failed.

    By default it is sent to the workers, as the task
    ``eventlib.retry_handler`` on eventlib's queue (in eager mode it runs at
    once), and ``None`` is returned; :class:`~eventlib.DispatchError` names
    the broker when it cannot take it.  With ``here=True`` it runs in this
    process and the :class:`~eventlib.ProcessResult` is returned; an event
    that still cannot be loaded raises what :func:`eventlib.process` raises.

    Either way, a success removes the dead letter and a failure keeps it with
    one more attempt, the new reason and traceback; a handler retried this
    way is not retried again automatically.  When a whole event can be
    processed again, its dead letter is removed and its handlers run as for a
    new event (with their retries).  Raises ``LookupError`` when there is no
    such dead letter, and :class:`~eventlib.broadcast.NoSuchGroup` when an
    external handler's group is no longer on the broker.
    """
    letter = get(dead_letter_id)
    if letter is None:
        raise LookupError(f"there is no dead letter {dead_letter_id}")
    return _retry(letter, here)


def retry_all(*, here: bool = False) -> list[int]:
    """:func:`retry` every dead letter, oldest first, and return their ids.

    With ``here=True``, a dead letter whose event still cannot be loaded is
    logged and kept, and the others still run.  Raises
    :class:`~eventlib.DispatchError` when the broker cannot take them (those
    sent before stay sent).
    """
    retried = []
    for letter in list_dead_letters():
        try:
            _retry(letter, here)
        except Exception:
            if not here:
                raise
            logger.exception(
                "Dead letter %d could not be retried", letter.id, extra=_context(letter)
            )
        retried.append(letter.id)
    return retried


def _retry(letter: DeadLetter, here: bool) -> ProcessResult | None:
    from . import processing

    external = group_of_key(letter.handler)
    if external is not None:
        group, handler = external
        if here:
            return processing.process_external(
                letter.event_name,
                letter.payload,
                group=group,
                handler=handler,
                attempt=letter.attempts + 1,
                dead_letter=letter.id,
            )
        _send_to_listeners(letter, group, handler)
        return None
    if here:
        return processing.retry_handler(
            letter.event_name,
            letter.payload,
            letter.handler,
            letter.attempts + 1,
            dead_letter=letter.id,
        )
    _send_to_workers(letter)
    return None


def purge(
    *, event: str | None = None, handler: str | None = None, since: datetime | None = None
) -> int:
    """Delete the dead letters and return how many there were: every one,
    or those ``event``, ``handler`` and ``since`` keep, as for
    :func:`list_dead_letters`."""
    query = delete(TABLE).where(*_matching(event=event, handler=handler, since=since))
    with _database.engine().begin() as connection:
        return int(connection.execute(query).rowcount)


def resolve(dead_letter_id: int) -> None:
    """Remove a dead letter whose retry succeeded (used by the worker)."""
    with _database.engine().begin() as connection:
        connection.execute(delete(TABLE).where(TABLE.c.id == dead_letter_id))


def failed_again(dead_letter_id: int, *, reason: str, traceback: str) -> None:
    """Count one more failed attempt of a dead letter, with its reason and
    traceback (used by the worker).  Nothing happens when it was purged."""
    values = {
        "attempts": TABLE.c.attempts + 1,
        "reason": reason,
        "traceback": traceback,
        "failed_at": datetime.now(UTC),
    }
    with _database.engine().begin() as connection:
        connection.execute(update(TABLE).where(TABLE.c.id == dead_letter_id).values(values))


def _send_to_workers(letter: DeadLetter) -> None:
    args = (letter.event_name, letter.payload, letter.handler, letter.attempts + 1)
    _send(letter, RETRY_TASK, args)


def _send_to_listeners(letter: DeadLetter, group: str | None, handler: str) -> None:
    """Send the dead letter of an external handler to its group's listeners.
    Raises :class:`~eventlib.broadcast.NoSuchGroup` when the group is no
    longer on the broker."""
    if group is None:
        raise DispatchError(
            f"dead letter {letter.id} was recorded in eager mode, by no group of listeners: "
            "retry it here"
        )
    try:
        check_group(group)
    except NoSuchGroup as error:
        raise NoSuchGroup(
            f"dead letter {letter.id} cannot be sent to its listeners: {error}"
        ) from None
    args = (letter.event_name, letter.payload, handler, letter.attempts + 1)
    _send(letter, EXTERNAL_TASK, args, exchange=EXCHANGE.name, routing_key=group)


def _send(letter: DeadLetter, task: str, args: tuple[Any, ...], **routing: Any) -> None:
    try:
        sender.send_task(
            task,
            args,
            {"dead_letter": letter.id},
            shadow=f"{letter.event_name} dead letter {letter.id}",
            **routing,
        )
    except DispatchError as error:
        raise DispatchError(
            f"could not send dead letter {letter.id} to the broker "
            f"{broker_name(sender.app())}: {error.__cause__!r}"
        ) from error.__cause__


def _context(letter: DeadLetter) -> dict[str, Any]:
    return {
        "eventlib_event": letter.event_name,
        "eventlib_event_id": letter.event_id,
        "eventlib_handler": letter.handler,
    }


def _from_row(row: Any) -> DeadLetter:
    failed_at = row.failed_at
    if failed_at.tzinfo is None:  # SQLite keeps no time zone; we store UTC
        failed_at = failed_at.replace(tzinfo=UTC)
    return DeadLetter(
        id=row.id,
        event_name=row.event_name,
        event_id=row.event_id,
        payload=row.payload,
        handler=row.handler,
        attempts=row.attempts,
        reason=row.reason,
        traceback=row.traceback,
        failed_at=failed_at,
    )


# ------------------------------------------------------------- database ---


class _Database:
    """The dead-letter database of this process: an engine per URL, created
    with the table on first use, and the lock that guards them.  A forked
    child opens its own connections; a change of settings closes them all,
    and the next use opens the database the settings now name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}
        #: The parent's engines, in a forked child: kept referenced and
        #: unused, rather than closed on the parent's behalf.
        self._inherited: list[Engine] = []

    def engine(self) -> Engine:
        """The engine of ``dead_letter_url``, with the table created."""
        url = get_settings().dead_letter_url
        engine = self._engines.get(url)
        if engine is None:
            with self._lock:
                engine = self._engines.get(url)
                if engine is None:
                    engine = self._engines[url] = _create_engine(url)
        return engine

    def reset(self) -> None:
        """Close the connections and forget the engines."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
            inherited, self._inherited = self._inherited, []
        for engine in engines:
            engine.dispose()
        for engine in inherited:
            # Another process's connections are only forgotten, never closed here.
            engine.dispose(close=False)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._inherited.extend(self._engines.values())
        self._engines = {}


_database = _Database()
_state.process_state(_database, built_from_settings=True)


def database_name() -> str:
    """The ``dead_letter_url`` setting, with its password masked."""
    url = get_settings().dead_letter_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
        engine = create_engine(parsed, **options)
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise ConfigurationError(f"dead_letter_url {url!r} cannot be used: {error}") from error
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda dbapi, _: use_wal(dbapi, SQLITE_BUSY_TIMEOUT))
    try:
        with engine.begin() as connection:
            connection.execute(CreateTable(TABLE, if_not_exists=True))
    except SQLAlchemyError:
        # Another process may have created it at the same moment.
        if not inspect(engine).has_table(TABLE.name):
            engine.dispose()
            raise
    return engine
