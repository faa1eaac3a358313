"""eventlib's settings: ``configure()`` in code, ``EVENTLIB_<NAME>`` in the
environment.

A value given to :func:`configure` wins over the environment, which wins over
the default.  The environment is read once, the first time a setting is used;
:func:`configure` (with or without arguments) reads it again.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .exceptions import ConfigurationError

ENV_PREFIX = "EVENTLIB_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """The settings in force.  Read them with :func:`get_settings`,
    change them with :func:`configure`."""

    #: Run handlers in the calling process, through the same serialization
    #: round trip a worker would see, instead of sending to a broker.
    always_eager: bool = False
    #: Raise a ``ValidationError`` from ``log()`` instead of logging it.
    #: ``None`` means "the same as ``always_eager``".
    raise_errors: bool | None = None
    #: Packages whose ``events`` module :func:`eventlib.autodiscover` imports.
    apps: tuple[str, ...] = ()
    #: Broker of the Celery app eventlib creates when no ``celery_app`` is given.
    broker_url: str | None = None
    #: The Celery queue events are sent to.
    queue: str = "eventlib"
    #: Seconds ``log()`` may wait for the broker (connecting, then each
    #: socket operation) before it keeps the event in the spool instead.
    broker_timeout: float = 2.0
    #: Extra ``broker_transport_options`` for eventlib's own Celery app (for
    #: Redis, ``visibility_timeout``); JSON in the environment.
    broker_transport_options: Mapping[str, Any] = field(default_factory=dict)
    #: Make ``log()`` wait for the current database transaction to commit
    #: before sending (needs a transaction hook, see ``eventlib.contrib.django``).
    on_commit: bool = False
    #: The SQLite file ``log()`` keeps events in while the broker cannot take
    #: them (relative paths are from the working directory).
    spool_path: str = "eventlib-spool.sqlite"
    #: While the broker is known to be down, ``log()`` tries it again at most
    #: this often, in seconds; between tries events go straight to the spool.
    spool_probe_interval: float = 5.0
    #: SQLAlchemy URL of the database that keeps dead letters.
    dead_letter_url: str = "sqlite:///eventlib-dead-letters.sqlite"
    #: How ``log()`` hands events to the broker: ``"background"`` (a buffer
    #: in memory, published by a thread), ``"spool"`` (the spool file,
    #: published by a thread) or ``"direct"`` (published in the caller); see
    #: :mod:`eventlib.sending`.
    dispatch: str = "background"
    #: How many events the buffer of the ``background`` mode holds at most;
    #: when it is full, ``log()`` writes to the spool instead.
    buffer_size: int = 10_000
    #: How many events one broker message carries at most.
    batch_size: int = 100
    #: How many bytes of payload one broker message carries at most (a
    #: larger event goes alone).
    batch_bytes: int = 512 * 1024
    #: A Celery app of the user's; when ``None`` eventlib creates its own.
    #: ``configure()`` and ``EVENTLIB_CELERY_APP`` also take its import path,
    #: ``"proj.celery.app"`` or ``"proj.celery:app"`` (see
    #: :func:`import_celery_app`).
    celery_app: Any = field(default=None, compare=False)

    @property
    def should_raise(self) -> bool:
        """Whether ``log()`` raises validation errors (``raise_errors``,
        defaulting to ``always_eager``)."""
        return self.always_eager if self.raise_errors is None else self.raise_errors


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(
        f"{ENV_PREFIX}{name.upper()}={text!r} is not a boolean: use one of "
        f"{', '.join(sorted(_TRUE | _FALSE - {''}))}"
    )


def _parse_optional_bool(name: str, text: str) -> bool | None:
    return None if text.strip() == "" else _parse_bool(name, text)


def _parse_apps(name: str, text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_text(name: str, text: str) -> str:
    return text.strip()


def _parse_json_object(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={text!r} is not a JSON object")
    return value


def _parse_seconds(name: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigurationError(
            f"{ENV_PREFIX}{name.upper()}={text!r} is not a positive number of seconds"
        )
    return seconds


DISPATCH_MODES = ("background", "spool", "direct")


def _parse_dispatch(name: str, text: str) -> str:
    mode = text.strip().lower()
    if mode not in DISPATCH_MODES:
        raise ConfigurationError(
            f"{ENV_PREFIX}{name.upper()}={text!r} is not a dispatch mode: use one of "
            f"{', '.join(DISPATCH_MODES)}"
        )
    return mode


def _parse_count(name: str, text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={text!r} is not a positive integer")
    return count


def import_celery_app(path: str, setting: str) -> Any:
    """Import and return the Celery app at ``path``: ``"proj.celery.app"``
    (the attribute is what follows the last dot) or ``"proj.celery:app"``
    (the attribute, which may be dotted, is what follows the colon).

    Raises :class:`ConfigurationError`, whose message starts with ``setting``
    (where the path came from, such as ``EVENTLIB_CELERY_APP='proj.celery.app'``),
    when ``path`` is not of either form, when the module or the attribute
    cannot be imported (``... does not import: No module named 'proj'``) or
    when the object found is not a ``celery.Celery``.  Any other error the
    module raises while it is imported propagates unchanged, so that a broken
    module is reported as itself.
    """
    from celery import Celery

    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"{setting} is not the import path of a Celery app: "
            "use 'package.module.app' or 'package.module:app'"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"{setting} does not import: {error}") from error
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as error:
            raise ConfigurationError(f"{setting} does not import: {error}") from error
    if not isinstance(found, Celery):
        raise ConfigurationError(f"{setting} is not a Celery app but {found!r}")
    return found


def _parse_celery_app(name: str, text: str) -> Any:
    return import_celery_app(text.strip(), f"{ENV_PREFIX}{name.upper()}={text!r}")


_FROM_ENV: dict[str, Callable[[str, str], Any]] = {
    "always_eager": _parse_bool,
    "raise_errors": _parse_optional_bool,
    "apps": _parse_apps,
    "broker_url": _parse_text,
    "queue": _parse_text,
    "broker_timeout": _parse_seconds,
    "broker_transport_options": _parse_json_object,
    "on_commit": _parse_bool,
    "spool_path": _parse_text,
    "spool_probe_interval": _parse_seconds,
    "dead_letter_url": _parse_text,
    "dispatch": _parse_dispatch,
    "buffer_size": _parse_count,
    "batch_size": _parse_count,
    "batch_bytes": _parse_count,
    "celery_app": _parse_celery_app,
}

_NAMES = frozenset(f.name for f in fields(Settings))


def _check(name: str, value: Any) -> Any:
    """Normalise a value given to ``configure()``, refusing what cannot work."""
    if name in ("always_eager", "on_commit") and not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    if name == "raise_errors" and value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"raise_errors must be True, False or None, not {value!r}")
    if name == "apps":
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ConfigurationError(f"apps must be a list of package names, not {value!r}")
        value = tuple(value)
        for app in value:
            if not isinstance(app, str) or not app:
                raise ConfigurationError(f"apps must hold package names, not {app!r}")
    if name == "queue" and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"queue must be a non-empty string, not {value!r}")
    if name == "broker_url" and value is not None and not isinstance(value, str):
        raise ConfigurationError(f"broker_url must be a string, not {value!r}")
    if name == "broker_transport_options":
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"broker_transport_options must be a dict, not {value!r}")
        value = dict(value)
    if name in ("broker_timeout", "spool_probe_interval"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
        value = float(value)
    if name in ("spool_path", "dead_letter_url") and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"{name} must be a non-empty string, not {value!r}")
    if name == "dispatch" and value not in DISPATCH_MODES:
        raise ConfigurationError(
            f"dispatch must be one of {', '.join(map(repr, DISPATCH_MODES))}, not {value!r}"
        )
    if name in ("buffer_size", "batch_size", "batch_bytes") and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    if name == "celery_app" and isinstance(value, str):
        value = import_celery_app(value, f"celery_app={value!r}")
    return value


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the defaults and ``EVENTLIB_<NAME>`` variables.

    ``EVENTLIB_CELERY_APP``, the import path of a Celery app, is imported
    here (:func:`import_celery_app`).  Raises :class:`ConfigurationError`
    naming the variable when one does not parse or, for that one, import.
    """
    environ = os.environ if environ is None else environ
    values = {}
    for name, parse in _FROM_ENV.items():
        key = ENV_PREFIX + name.upper()
        if environ.get(key, "").strip():  # an empty variable means unset
            values[name] = parse(name, environ[key])
    return Settings(**values)


class _SettingsHolder:
    """Holds the settings in force and the overrides given in code."""

    def __init__(self) -> None:
        self._overrides: dict[str, Any] = {}
        self._current: Settings | None = None
        self._listeners: list[Callable[[Settings], None]] = []

    @property
    def current(self) -> Settings:
        if self._current is None:
            self._current = replace(settings_from_env(), **self._overrides)
        return self._current

    def configure(self, values: Mapping[str, Any]) -> Settings:
        unknown = sorted(set(values) - _NAMES)
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s): {', '.join(unknown)}; "
                f"eventlib knows {', '.join(sorted(_NAMES))}"
            )
        checked = {name: _check(name, value) for name, value in values.items()}
        overrides = {**self._overrides, **checked}
        new = replace(settings_from_env(), **overrides)
        self._overrides = overrides
        self._current = new
        for listener in self._listeners:
            listener(new)
        return new

    def reset(self) -> None:
        self._overrides = {}
        self._current = None
        for listener in self._listeners:
            listener(self.current)

    def on_change(self, listener: Callable[[Settings], None]) -> None:
        self._listeners.append(listener)


_holder = _SettingsHolder()


def get_settings() -> Settings:
    """The settings in force."""
    return _holder.current


def configure(**values: Any) -> Settings:
    """Change settings in code and return the settings now in force.

    Accepts ``always_eager``, ``raise_errors``, ``apps``, ``broker_url``,
    ``queue``, ``broker_timeout``, ``broker_transport_options``,
    ``on_commit``, ``spool_path``, ``spool_probe_interval``,
    ``dead_letter_url``, ``dispatch``, ``buffer_size``, ``batch_size``,
    ``batch_bytes`` and ``celery_app`` (a Celery app or its import path,
    ``"proj.celery.app"``).  Settings not named keep the value they had
    (from an earlier call, the environment or the default); the environment is
    read again.  An unknown name or a value of the wrong type raises
    :class:`~eventlib.ConfigurationError` and changes nothing.
    """
    return _holder.configure(values)


def reset() -> None:
    """Forget every value given to :func:`configure` and read the environment
    again.  Meant for tests."""
    _holder.reset()


def on_change(listener: Callable[[Settings], None]) -> None:
    """Call ``listener(settings)`` whenever settings change (internal)."""
    _holder.on_change(listener)
