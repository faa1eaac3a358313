"""The ``eventlib`` command: list events, log and process them, run a worker.

Exit codes scripts can rely on:

- ``0``: done;
- ``1``: the command ran but something failed (a handler, with ``process``);
- ``2``: bad usage or configuration (unknown option, no apps configured,
  unknown or invalid event, unknown broker scheme); one line on stderr;
- ``3``: the broker could not be reached.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from . import conf
from .discovery import EVENTS_MODULE, autodiscover, find_event
from .exceptions import DispatchError, EventlibError
from .registry import HANDLER_REGISTRY, handler_name

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"eventlib: {message}", err=True)
    sys.exit(code)


@contextmanager
def _errors_as_exit_codes() -> Iterator[None]:
    """Turn errors into one line and an exit code: whatever goes wrong while
    loading the user's apps is a configuration error, not a crash."""
    try:
        yield
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
@click.option("--apps", help="Comma-separated apps whose events modules to load [EVENTLIB_APPS].")
@click.option("--broker-url", help="Broker URL [EVENTLIB_BROKER_URL].")
@click.option("--queue", help="Queue of eventlib's task [EVENTLIB_QUEUE].")
def main(apps: str | None, broker_url: str | None, queue: str | None) -> None:
    """Log and process eventlib events from the shell.

    Settings come from EVENTLIB_* environment variables; the options above
    override them.  Exit codes: 0 done, 1 a handler failed, 2 bad usage or
    configuration, 3 broker unreachable.
    """
    values: dict[str, Any] = {}
    if apps is not None:
        values["apps"] = [app.strip() for app in apps.split(",") if app.strip()]
    if broker_url is not None:
        values["broker_url"] = broker_url
    if queue is not None:
        values["queue"] = queue
    with _errors_as_exit_codes():
        conf.configure(**values)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def events(as_json: bool) -> None:
    """List every event of the configured apps with its handlers, in call order."""
    apps = _require_apps()
    with _errors_as_exit_codes():
        autodiscover(apps)
    listing = [
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


@main.command(name="log")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--json", "as_json", metavar="OBJECT", help="The data as a JSON object.")
def log_command(name: str, pairs: tuple[str, ...], as_json: str | None) -> None:
    """Log the event NAME and print its id.

    Values given as KEY=VALUE are strings; use --json for numbers, lists and
    nested objects.
    """
    from .dispatch import log

    data = _parse_data(pairs, as_json)
    with _errors_as_exit_codes():
        conf.configure(raise_errors=True)
        click.echo(log(name, data))


@main.command()
@click.argument("name")
@click.option("--json", "as_json", metavar="OBJECT", default="{}", help="The data as JSON.")
def process(name: str, as_json: str) -> None:
    """Run the handlers of the event NAME here, in this process (debugging).

    Prints each handler's outcome; exits 1 when one failed or the data is
    invalid.
    """
    from .processing import process as process_event
    from .serialization import serialize_event

    data = _parse_data((), as_json)
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
    --pool, ...).  With a Celery app of your own, run
    `celery -A yourproject worker -Q eventlib` instead.
    """
    from .dispatch import celery_app, check_broker

    apps = _require_apps()
    with _errors_as_exit_codes():
        autodiscover(apps)
        app = celery_app()
        check_broker(app)
    argv = ["worker", "--queues", conf.get_settings().queue, *celery_args]
    app.worker_main(argv)
