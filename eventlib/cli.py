"""The ``eventlib`` command: list events, log and process them, run a
worker or a listener of broadcast events, manage groups of listeners, dead
letters and the spool.

Exit codes scripts can rely on:

- ``0``: done;
- ``1``: the command ran but something failed (a handler, with ``process``;
  with ``spool flush``, spooled events another flusher holds);
- ``2``: bad usage or configuration (unknown option, no apps configured,
  unknown or invalid event, unknown broker scheme); one line on stderr;
- ``3``: the broker could not be reached (for ``log``: the event is kept in
  the spool and its id printed all the same, or, when the spool cannot be
  written either, nothing was sent);
- ``4``: the spool file cannot be used (unwritable, full, not a database),
  or, with ``spool flush``, it holds events of another broker or queue.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from celery.utils.imports import cwd_in_path

from . import conf
from .discovery import EVENTS_MODULE, autodiscover, find_event
from .exceptions import DispatchError, EventlibError, SpoolError
from .registry import HANDLER_REGISTRY, handler_name

if TYPE_CHECKING:
    from celery import Celery

    from .deadletters import DeadLetter

__all__ = ["EXIT_BROKER", "EXIT_FAILED", "EXIT_SPOOL", "EXIT_USAGE", "main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3
EXIT_SPOOL = 4


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"eventlib: {message}", err=True)
    sys.exit(code)


@contextmanager
def _errors_as_exit_codes() -> Iterator[None]:
    """Turn errors into one line and an exit code: whatever goes wrong while
    loading the user's apps is a configuration error, not a crash."""
    try:
        yield
    except SpoolError as error:
        _fail(str(error), EXIT_SPOOL)
    except DispatchError as error:
        _fail(str(error), EXIT_BROKER)
    except (EventlibError, ImportError) as error:
        _fail(" ".join([str(error), *(f"({note})" for note in getattr(error, "__notes__", ()))]))
    except Exception as error:  # an app's events module that raised while importing
        _fail(f"{type(error).__name__}: {error}")


def _require_apps() -> tuple[str, ...]:
    apps = conf.get_settings().apps
    if not apps:
        _fail("no apps configured: pass --apps shop,billing or set EVENTLIB_APPS")
    return apps


def _parse_data(pairs: Sequence[str], as_json: str | None) -> dict[str, Any]:
    if as_json is not None and pairs:
        _fail("give the data either as key=value pairs or with --json, not both")
    if as_json is not None:
        try:
            data = json.loads(as_json)
        except ValueError as error:
            _fail(f"--json is not valid JSON: {error}")
        if not isinstance(data, dict):
            _fail(f"--json must be a JSON object, not {type(data).__name__}")
        return data
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"expected key=value, got {pair!r}")
        parsed[key] = value
    return parsed


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_path",
    metavar="APP",
    help="Your Celery app, as for `celery -A`: proj, proj.celery or proj.celery:app "
    "[EVENTLIB_CELERY_APP].",
)
@click.option("--apps", help="Comma-separated apps whose events modules to load [EVENTLIB_APPS].")
@click.option("--broker-url", help="Broker URL [EVENTLIB_BROKER_URL].")
@click.option("--queue", help="Queue of eventlib's task [EVENTLIB_QUEUE].")
@click.version_option(package_name="eventlib", message="eventlib %(version)s")
@click.pass_context
def main(
    context: click.Context,
    app_path: str | None,
    apps: str | None,
    broker_url: str | None,
    queue: str | None,
) -> None:
    """Log and process eventlib events from the shell.

    Settings come from EVENTLIB_* environment variables, or in a Django
    project (DJANGO_SETTINGS_MODULE set) from its settings; the options below
    override them.  Modules are imported from the current directory first,
    as `celery` does.  Exit codes: 0 done, 1 something failed (a handler, or
    spooled events another flusher holds), 2 bad usage or configuration, 3
    broker unreachable (log: the event is kept in the spool).
    """
    context.with_resource(cwd_in_path())
    _warn_about_unknown_variables()
    values: dict[str, Any] = {}
    if app_path is not None:
        # Found before Django is set up, as `celery -A` does: the project's
        # celery module usually sets DJANGO_SETTINGS_MODULE.
        values["celery_app"] = _find_celery_app(app_path)
    with _errors_as_exit_codes():
        _set_django_up()
    if apps is not None:
        values["apps"] = [app.strip() for app in apps.split(",") if app.strip()]
    if broker_url is not None:
        values["broker_url"] = broker_url
    if queue is not None:
        values["queue"] = queue
    with _errors_as_exit_codes():
        conf.configure(**values)


def _warn_about_unknown_variables() -> None:
    """One line on stderr for each ``EVENTLIB_*`` environment variable that
    is not a setting but close to one, most likely a typo that would
    otherwise be ignored, naming that setting.  Variables close to no
    setting are left alone: they may be the project's own."""
    names = [field.name.upper() for field in dataclasses.fields(conf.Settings)]
    for variable in sorted(os.environ):
        name = variable.removeprefix(conf.ENV_PREFIX)
        if name == variable or name in names:
            continue
        for close in difflib.get_close_matches(name, names, n=1):
            click.echo(
                f"eventlib: warning: {variable} is not an eventlib setting and is ignored; "
                f"did you mean {conf.ENV_PREFIX}{close}?",
                err=True,
            )


def _find_celery_app(path: str) -> Celery:
    """The Celery app ``-A path`` names, found as ``celery -A`` finds it
    (``proj`` is ``proj.app``, ``proj.celery``, or the module ``proj.celery``'s
    app); exits 2 with one line when there is none."""
    from celery import Celery
    from celery.app.utils import find_app

    try:
        found = find_app(path)
    except (ImportError, AttributeError) as error:
        _fail(f"-A {path}: no Celery app there: {error}")
    except Exception as error:  # the module raised while importing
        _fail(f"-A {path}: {type(error).__name__}: {error}")
    if not isinstance(found, Celery):
        _fail(f"-A {path} is not a Celery app but {found!r}")
    return found


def _set_django_up() -> None:
    """In a Django project (``DJANGO_SETTINGS_MODULE`` set), set Django up
    first, as ``manage.py`` does: ``eventlib.contrib.django`` then reads the
    ``EVENTLIB_*`` Django settings and imports the events modules, which may
    use the ORM.  The options of ``eventlib`` still override those settings."""
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        import django

        django.setup()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def events(as_json: bool) -> None:
    """List every event of the configured apps with its handlers, in call order."""
    apps = _require_apps()
    with _errors_as_exit_codes():
        autodiscover(apps)
    listing: list[dict[str, Any]] = [
        {"name": event.name, "handlers": [handler_name(h) for h in HANDLER_REGISTRY[event]]}
        for event in HANDLER_REGISTRY
        if event.__module__ in {f"{app}.{EVENTS_MODULE}" for app in apps}
    ]
    listing.sort(key=lambda item: item["name"])
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for item in listing:
        click.echo(item["name"])
        for position, name in enumerate(item["handlers"], 1):
            click.echo(f"  {position}. {name}")
        if not item["handlers"]:
            click.echo("  (no handlers)")


_Command = TypeVar("_Command", bound=Callable[..., Any])


def _event_arguments(command: _Command) -> _Command:
    """NAME, then the data as KEY=VALUE pairs or ``--json OBJECT``."""
    command = click.option(
        "--json", "as_json", metavar="OBJECT", help="The data as a JSON object."
    )(command)
    command = click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")(command)
    return click.argument("name")(command)


@main.command(name="log")
@_event_arguments
def log_command(name: str, pairs: tuple[str, ...], as_json: str | None) -> None:
    """Log the event NAME and print its id.

    Values given as KEY=VALUE are strings; use --json for numbers, lists and
    nested objects.  When the broker cannot take the event, it is kept in the
    spool: the id is printed all the same, one line on stderr says so, and
    the command exits 3; `eventlib spool flush` sends it later.
    """
    from .brokers import broker_name
    from .dispatch import log
    from .sending import celery_app, flush

    data = _parse_data(pairs, as_json)
    with _errors_as_exit_codes():
        # Published here and now: the command says whether the broker took it.
        conf.configure(raise_errors=True, dispatch="direct")
        click.echo(log(name, data))
        if not flush(timeout=3 * conf.get_settings().broker_timeout):
            spool_path = Path(conf.get_settings().spool_path).resolve()
            _fail(
                f"the broker {broker_name(celery_app())} is unreachable: the event is kept "
                f"in the spool {spool_path}; `eventlib spool flush` will send it",
                EXIT_BROKER,
            )


@main.command()
@_event_arguments
def process(name: str, pairs: tuple[str, ...], as_json: str | None) -> None:
    """Run the handlers of the event NAME here, in this process (debugging).

    The data is given as for `eventlib log`: KEY=VALUE pairs (strings) or
    --json.  Prints each handler's outcome; exits 1 when one failed or the
    data is invalid.
    """
    from .processing import process as process_event
    from .serialization import serialize_event

    data = _parse_data(pairs, as_json)
    with _errors_as_exit_codes():
        payload = serialize_event(find_event(name)(data))
        result = process_event(name, payload)
    if result.invalid is not None:
        _fail(f"{name} has invalid data: {result.invalid}", EXIT_FAILED)
    for succeeded in result.succeeded:
        click.echo(f"ok      {succeeded}")
    for failure in result.failed:
        click.echo(f"FAILED  {failure.handler}: {failure.error}")
    if result.failed:
        sys.exit(EXIT_FAILED)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Start a Celery worker for eventlib's queue.

    Every other option goes to Celery's worker (--concurrency, --loglevel,
    --pool, ...).  With a Celery app of your own, name it with -A
    (`eventlib -A proj worker`), or run `celery -A proj worker -Q eventlib`.
    """
    from .brokers import check_broker
    from .sending import celery_app

    apps = _require_apps()
    with _errors_as_exit_codes():
        autodiscover(apps)
        app = celery_app()
        check_broker(app)
    argv = ["worker", "--queues", conf.get_settings().queue, *celery_args]
    sys.exit(_run_celery(app, argv))


def _run_celery(app: Celery, argv: list[str]) -> int:
    """Run Celery's command line on ``app`` and return its exit status, as
    ``app.start()`` does but for the status, which it drops: a supervisor
    that restarts only failed workers must see an unrecoverable error."""
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app
    try:
        status = celery_command.main(args=argv, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return status if isinstance(status, int) else 0


# ------------------------------------------------------------ broadcast ---


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--group", "-g", required=True, help="The group of listeners this one joins.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def listen(group: str, celery_args: tuple[str, ...]) -> None:
    """Run the external handlers of broadcast events, as a listener of GROUP.

    It imports the events modules of the configured apps, where
    @external_handler functions are declared, creates the group on the
    broker if it is new (from then on it keeps every broadcast event until
    a listener takes it), then starts a Celery worker on the group's queue.
    Listeners of one group share its events; every group gets every event.
    Every other option goes to Celery's worker (--concurrency, --loglevel,
    ...); its node name is listen-GROUP-PID@HOST unless -n gives one.
    """
    from .broadcast import check_group_name, register_group, set_listening_group
    from .brokers import check_broker
    from .registry import EXTERNAL_HANDLER_REGISTRY
    from .sending import celery_app

    apps = _require_apps()
    with _errors_as_exit_codes():
        check_group_name(group)
        autodiscover(apps)
        app = celery_app()
        check_broker(app)
        queue = register_group(group, app)
    if not len(EXTERNAL_HANDLER_REGISTRY):
        click.echo(
            f"eventlib: no @external_handler is declared in the events modules of "
            f"{', '.join(apps)}: this listener takes events and runs nothing",
            err=True,
        )
    set_listening_group(group)
    app.amqp.queues.select_add(queue)
    argv = ["worker", "--queues", queue.name, *celery_args]
    if not any(arg in ("-n", "--hostname") or arg.startswith("--hostname=") for arg in celery_args):
        # A node name of its own: beside a worker (or another listener) on this
        # host, Celery's default one would collide on RabbitMQ.
        argv += ["--hostname", f"listen-{group}-{os.getpid()}@%h"]
    sys.exit(_run_celery(app, argv))


@main.group(name="groups")
def groups_command() -> None:
    """The groups of listeners of broadcast events on the broker."""


@groups_command.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def groups_list(as_json: bool) -> None:
    """Every group, with the events waiting in its queue (its backlog) and,
    on RabbitMQ, how many listeners consume it now.  JSON: a list of
    {"name", "queue", "backlog", "listeners" (null on Redis)}."""
    from .broadcast import groups

    with _errors_as_exit_codes():
        found = groups()
    if as_json:
        click.echo(json.dumps([group._asdict() for group in found]))
        return
    if not found:
        click.echo("no group of listeners")
        return
    for group in found:
        listeners = "" if group.listeners is None else f", {group.listeners} listening"
        click.echo(f"{group.name}: {group.backlog} events waiting{listeners} ({group.queue})")


@groups_command.command(name="create")
@click.argument("name")
def groups_create(name: str) -> None:
    """Create the group NAME before its first listener starts: it keeps
    every broadcast event from now on."""
    from .broadcast import register_group

    with _errors_as_exit_codes():
        queue = register_group(name)
    click.echo(f"group {name} keeps broadcast events in {queue.name}")


@groups_command.command(name="delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def groups_delete(name: str, yes: bool) -> None:
    """Delete the group NAME, with the events waiting in its queue.  A
    listener of it that still runs creates it again."""
    from .broadcast import delete_group

    if not yes:
        click.confirm(f"Delete the group {name} and the events waiting for it?", abort=True)
    with _errors_as_exit_codes():  # NoSuchGroup: exit 2, saying so
        dropped = delete_group(name)
    click.echo(f"deleted the group {name} and {dropped} events waiting for it")


# --------------------------------------------------------- dead letters ---


@contextmanager
def _dead_letter_errors() -> Iterator[None]:
    """Exit 2 with one line when the dead-letter database cannot be used."""
    from sqlalchemy.exc import SQLAlchemyError

    from .deadletters import database_name

    with _errors_as_exit_codes():
        try:
            yield
        except SQLAlchemyError as error:
            reason = str(error).splitlines()[0]
            _fail(f"cannot use the dead-letter database {database_name()}: {reason}")


def _dead_letter(dead_letter_id: int) -> DeadLetter:
    from .deadletters import get

    with _dead_letter_errors():
        letter = get(dead_letter_id)
    if letter is None:
        _fail(f"there is no dead letter {dead_letter_id}")
    return letter


def _what(letter: DeadLetter) -> str:
    return f"{letter.event_name}  {letter.handler or '(the whole event)'}"


@main.group()
def dead() -> None:
    """List, show, retry and purge dead letters.

    A dead letter is a handler's failure that no retry fixed, or an event a
    worker could not process at all.  They are kept in the database of the
    dead_letter_url setting [EVENTLIB_DEAD_LETTER_URL].  Exit codes: 0 done,
    1 a retry run here failed again, 2 bad usage, unknown dead letter or
    unusable database, 3 broker unreachable.
    """


_AGE = re.compile(r"(\d+)\s*([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class _Since(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.5 on
    """A time: ISO 8601 (``2025-03-01``, ``2025-03-01 14:00``, UTC unless it
    has an offset) or an age (``30m``, ``2h``, ``7d``: that long ago)."""

    name = "WHEN"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        age = _AGE.fullmatch(text)
        if age:
            return datetime.now(UTC) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is neither a time (2025-03-01, 2025-03-01 14:00, "
                "2025-03-01T14:00+01:00) nor an age (90s, 30m, 2h, 7d, 1w)",
                param,
                ctx,
            )
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _dead_letter_filters(command: _Command) -> _Command:
    """--event, --handler and --since, as :func:`eventlib.deadletters.list_dead_letters`
    takes them."""
    for option in reversed(
        [
            click.option("--event", metavar="NAME", help="Only those of this event (shop.Refund)."),
            click.option(
                "--handler",
                metavar="NAME",
                help="Only those of this handler: its qualified name or its end (charge).",
            ),
            click.option(
                "--since",
                type=_Since(),
                help="Only those that last failed at or after this time (UTC unless it has an "
                "offset) or within this age: 2025-03-01, '2025-03-01 14:00', 30m, 2h, 7d.",
            ),
        ]
    ):
        command = option(command)
    return command


@dead.command(name="list")
@_dead_letter_filters
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (every field) instead of a table."
)
def dead_list(
    event: str | None, handler: str | None, since: datetime | None, as_json: bool
) -> None:
    """List the dead letters by the time of their last failure, oldest
    first: all of them, or those the options keep.  The first line names
    the database (the dead_letter_url setting, password masked)."""
    from .deadletters import database_name, list_dead_letters

    with _dead_letter_errors():
        letters = list_dead_letters(event=event, handler=handler, since=since)
    if as_json:
        click.echo(json.dumps([letter.as_dict() for letter in letters], indent=2))
        return
    click.echo(f"dead letters: {database_name()}")
    if not letters:
        click.echo("no dead letters" + _kept_by(event, handler, since))
        return
    rows = [("ID", "FAILED AT (UTC)", "EVENT", "HANDLER", "ATTEMPTS", "REASON")]
    for letter in letters:
        reason = " ".join(letter.reason.split())
        rows.append(
            (
                str(letter.id),
                letter.failed_at.strftime("%Y-%m-%d %H:%M:%S"),
                letter.event_name,
                letter.handler or "(the whole event)",
                str(letter.attempts),
                reason if len(reason) <= 70 else reason[:69] + "…",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def _kept_by(event: str | None, handler: str | None, since: datetime | None) -> str:
    """`` of shop.Refund, of handler charge, since ...``: what the filters
    keep, for messages; empty without filters."""
    words = []
    if event is not None:
        words.append(f"of {event}")
    if handler is not None:
        words.append(f"of handler {handler}")
    if since is not None:
        words.append(f"since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    return "".join(" " + word for word in words)


@dead.command(name="show")
@click.argument("dead_letter_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def dead_show(dead_letter_id: int, as_json: bool) -> None:
    """Show everything about the dead letter ID: its event, data and traceback."""
    letter = _dead_letter(dead_letter_id)
    if as_json:
        click.echo(json.dumps(letter.as_dict(), indent=2))
        return
    try:
        data = json.dumps(json.loads(letter.payload)["data"], indent=2, sort_keys=True)
    except (ValueError, TypeError, KeyError):
        data = letter.payload  # not an eventlib payload: shown as it came
    for label, value in [
        ("id", letter.id),
        ("event", letter.event_name),
        ("event id", letter.event_id),
        ("handler", letter.handler or "(the whole event)"),
        ("attempts", letter.attempts),
        ("failed at", letter.failed_at.isoformat()),
        ("reason", letter.reason),
    ]:
        click.echo(f"{label + ':':<11}{value}")
    click.echo("data:")
    click.echo(_indent(data))
    click.echo("traceback:")
    click.echo(_indent(letter.traceback.rstrip() or "(none)"))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


@dead.command(name="retry")
@click.argument("dead_letter_id", metavar="[ID]", type=int, required=False)
@click.option(
    "--all", "retry_every", is_flag=True, help="Retry every dead letter (that the filters keep)."
)
@_dead_letter_filters
@click.option(
    "--here",
    is_flag=True,
    help="Run the handler in this process instead of sending it to a worker.",
)
def dead_retry(
    dead_letter_id: int | None,
    retry_every: bool,
    event: str | None,
    handler: str | None,
    since: datetime | None,
    here: bool,
) -> None:
    """Run the dead letter ID (or --all of them, or all those --event,
    --handler and --since keep) again: only the handler that failed, or the
    whole event when the whole event failed.

    By default each is sent to the workers through the broker (an external
    handler's, to its group's listeners); with --here it runs in this
    process and prints the outcome.  A success removes the dead letter; a
    failure keeps it with one more attempt.  Exits 1 when a retry run here
    failed again.
    """
    from .deadletters import list_dead_letters, retry

    filtered = any(value is not None for value in (event, handler, since))
    if (dead_letter_id is None) == (not retry_every):
        _fail("give a dead letter ID or --all (one of them)")
    if filtered and not retry_every:
        _fail("--event, --handler and --since choose among --all, not with an ID")
    if retry_every:
        with _dead_letter_errors():
            letters = list_dead_letters(event=event, handler=handler, since=since)
        if not letters:
            click.echo("no dead letters")
            return
    else:
        letters = [_dead_letter(dead_letter_id)]  # type: ignore[arg-type]
    failures = 0
    for letter in letters:
        if not here:
            with _dead_letter_errors():
                retry(letter.id)
            click.echo(f"sent    {letter.id}  {_what(letter)}")
            continue
        with _dead_letter_errors():
            problem = _retry_here(letter)
        if problem is None:
            click.echo(f"ok      {letter.id}  {_what(letter)}")
        elif problem:
            failures += 1
            click.echo(f"FAILED  {letter.id}  {_what(letter)}: {problem}")
    if failures:
        sys.exit(EXIT_FAILED)


def _retry_here(letter: DeadLetter) -> str | None:
    """Retry a dead letter in this process: ``None`` when it succeeded, what
    failed otherwise, ``''`` when it was removed meanwhile."""
    from sqlalchemy.exc import SQLAlchemyError

    from .deadletters import retry

    try:
        result = retry(letter.id, here=True)
    except SQLAlchemyError:
        raise
    except Exception as error:  # the event still cannot be loaded
        if isinstance(error, LookupError) and not isinstance(error, EventlibError):
            return ""
        return f"{type(error).__name__}: {error}"
    assert result is not None
    if result.ok:
        return None
    if result.invalid is not None:
        return f"invalid data: {result.invalid}"
    return "; ".join(
        failure.error
        if failure.handler == letter.handler
        else f"{failure.handler}: {failure.error}"
        for failure in result.failed
    )


@dead.command(name="purge")
@_dead_letter_filters
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(event: str | None, handler: str | None, since: datetime | None, yes: bool) -> None:
    """Delete every dead letter, or those the options keep (the same as for
    `eventlib dead list`)."""
    from .deadletters import database_name, list_dead_letters, purge

    which = _kept_by(event, handler, since)
    if not yes:
        with _dead_letter_errors():
            count = len(list_dead_letters(event=event, handler=handler, since=since))
        if not count:
            click.echo("no dead letters" + which)
            return
        click.confirm(f"Delete {_letters(count)}{which} from {database_name()}?", abort=True)
    with _dead_letter_errors():
        purged = purge(event=event, handler=handler, since=since)
    click.echo(f"purged {_letters(purged)}{which}")


def _letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


@main.group()
def spool() -> None:
    """The events kept while the broker could not take them.

    `log()` writes an event to the spool (EVENTLIB_SPOOL_PATH) when the
    broker cannot take it; the process that spooled it publishes it once the
    broker is back.  These commands show and publish what is waiting.
    """


@spool.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def spool_status_command(as_json: bool) -> None:
    """Where the spool is (the first line), how many events wait in it, the
    oldest one's age, and until when a flusher holds them, if one does.

    Only the events of the configured broker and queue are counted; a
    line says how many wait for others.  JSON: {"count": ..., "oldest_age":
    seconds or null, "held_until": Unix time or null, "path": the file,
    "elsewhere": [{"broker": ..., "queue": ..., "count": ...}]}.
    """
    from .sending import spool_status

    with _errors_as_exit_codes():
        status = spool_status()
    path = Path(conf.get_settings().spool_path).resolve()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "count": status.count,
                    "oldest_age": status.oldest_age,
                    "held_until": status.held_until,
                    "path": str(path),
                    "elsewhere": [
                        {"broker": where.broker, "queue": where.queue, "count": count}
                        for where, count in status.elsewhere
                    ],
                }
            )
        )
        return
    click.echo(f"spool: {path}")
    if status.oldest_age is None:
        click.echo("the spool is empty")
    else:
        line = f"{status.count} events, the oldest spooled {status.oldest_age:.0f} s ago"
        if status.held_until is not None:
            line += f"; a flusher holds them until {_local_time(status.held_until)}"
        click.echo(line)
    for where, count in status.elsewhere:
        click.echo(f"{count} other events wait for {where}")


@spool.command(name="flush")
def spool_flush() -> None:
    """Publish the spooled events now, oldest first, and print how many.

    Only the events logged for the configured broker and queue are
    published.  Exits 3 (the events stay spooled) when the broker still
    cannot take them; 4 when the spool file cannot be used, or when it holds
    events of another broker or queue, which it names (run the command again
    with that broker and queue); 1 when events remain that another flusher
    holds (a process publishing them, or one that crashed while it did): one
    line on stderr says how many and until when; run the command again after
    that time.
    """
    from .sending import flush_spool, spool_status

    with _errors_as_exit_codes():
        published = flush_spool()
        status = spool_status()
    click.echo(f"published {published} spooled events")
    if status.elsewhere:
        others = "; ".join(f"{count} for {where}" for where, count in status.elsewhere)
        _fail(
            f"the spool also holds events logged for other destinations, left there: {others}",
            EXIT_SPOOL,
        )
    if status.count and status.held_until is not None:
        _fail(
            f"{status.count} spooled events remain: another flusher holds them until "
            f"{_local_time(status.held_until)}",
            EXIT_FAILED,
        )


def _local_time(timestamp: float) -> str:
    """``timestamp`` as local time with its UTC offset: 2025-03-01 14:02:07 +0100."""
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
