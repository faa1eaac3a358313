"""eventlib's settings: ``configure()`` in code, ``EVENTLIB_<NAME>`` in the
environment.

A value given to :func:`configure` wins over the environment, which wins over
the default.  The environment is read once, the first time a setting is used;
:func:`configure` (with or without arguments) reads it again.

Each setting is declared once, as a field of :class:`Settings`: its type, its
default, its kind (how its ``EVENTLIB_<NAME>`` variable is parsed and what
``configure()`` accepts) and one line of documentation.  The environment
parsing, the checks of ``configure()``, its docstring and the Django settings
(:mod:`eventlib.contrib.django`) all follow from the fields.

The files eventlib keeps by default, the spool, the dead letters and the
embedded broker, are in one folder per project and host,
:func:`state_directory`, whatever folder a process starts in.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

from .exceptions import ConfigurationError

__all__ = [
    "DISPATCH_MODES",
    "ENV_PREFIX",
    "Settings",
    "configure",
    "get_settings",
    "import_celery_app",
    "on_change",
    "reset",
    "settings_from_env",
]

ENV_PREFIX = "EVENTLIB_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

DISPATCH_MODES = ("background", "spool", "direct")

_T = TypeVar("_T")


class _Kind(NamedTuple):
    """How a setting is read from its ``EVENTLIB_<NAME>`` variable
    (``parse(name, text)``) and checked when given to :func:`configure`
    (``check(name, value)``, which returns the value to keep).  Both raise
    :class:`ConfigurationError`."""

    parse: Callable[[str, str], Any]
    check: Callable[[str, Any], Any]


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


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    return value


def _parse_optional_bool(name: str, text: str) -> bool | None:
    return None if text.strip() == "" else _parse_bool(name, text)


def _check_optional_bool(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True, False or None, not {value!r}")
    return value


def _parse_packages(name: str, text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _check_packages(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{name} must be a list of package names, not {value!r}")
    packages = tuple(value)
    for package in packages:
        if not isinstance(package, str) or not package:
            raise ConfigurationError(f"{name} must hold package names, not {package!r}")
    return packages


def _parse_text(name: str, text: str) -> str:
    return text.strip()


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _check_optional_text(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {value!r}")
    return value


def _parse_json_object(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={text!r} is not a JSON object")
    return value


def _check_mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a dict, not {value!r}")
    return dict(value)


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


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _parse_dispatch_mode(name: str, text: str) -> str:
    mode = text.strip().lower()
    if mode not in DISPATCH_MODES:
        raise ConfigurationError(
            f"{ENV_PREFIX}{name.upper()}={text!r} is not a dispatch mode: use one of "
            f"{', '.join(DISPATCH_MODES)}"
        )
    return mode


def _check_dispatch_mode(name: str, value: Any) -> str:
    if value not in DISPATCH_MODES:
        raise ConfigurationError(
            f"{name} must be one of {', '.join(map(repr, DISPATCH_MODES))}, not {value!r}"
        )
    return str(value)


def _parse_count(name: str, text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={text!r} is not a positive integer")
    return count


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return value


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


def _check_celery_app(name: str, value: Any) -> Any:
    if isinstance(value, str):
        return import_celery_app(value, f"{name}={value!r}")
    return value


#: ``true`` or ``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``).
_BOOLEAN = _Kind(_parse_bool, _check_bool)
#: A boolean, or ``None`` (an empty variable).
_OPTIONAL_BOOLEAN = _Kind(_parse_optional_bool, _check_optional_bool)
#: Package names: comma-separated in the environment, any iterable in code.
_PACKAGES = _Kind(_parse_packages, _check_packages)
#: A non-empty string.
_TEXT = _Kind(_parse_text, _check_text)
#: A string, or ``None``.
_OPTIONAL_TEXT = _Kind(_parse_text, _check_optional_text)
#: A mapping: a JSON object in the environment.
_JSON_OBJECT = _Kind(_parse_json_object, _check_mapping)
#: A positive number of seconds, kept as a float.
_SECONDS = _Kind(_parse_seconds, _check_seconds)
#: One of :data:`DISPATCH_MODES`.
_DISPATCH_MODE = _Kind(_parse_dispatch_mode, _check_dispatch_mode)
#: A positive integer.
_COUNT = _Kind(_parse_count, _check_count)
#: A Celery app, or its import path (imported, :func:`import_celery_app`).
_CELERY_APP = _Kind(_parse_celery_app, _check_celery_app)


# ---------------------------------------------------- the state folder ---

#: Stands for :func:`state_directory` where a default is written out, in
#: ``configure()``'s docstring and in docs/django.md's table of settings.
STATE = "<state>"


def state_directory(environ: Mapping[str, str] | None = None) -> Path:
    """The folder where eventlib keeps its files by default: the spool, the
    dead letters and the embedded broker of the project this process runs.

    It is ``$XDG_STATE_HOME/eventlib/<environment>``, with
    ``XDG_STATE_HOME`` (an absolute path) defaulting to ``~/.local/state``
    as the XDG Base Directory specification says, where ``<environment>``
    names the Python environment the process runs in (``sys.prefix``, a
    virtualenv's folder): its last two folder names and a hash of its whole
    path, such as ``shop-.venv-1a2b3c4d``.  Every process of a project on a host runs in
    the project's environment (the web server, the workers, the
    ``eventlib`` command, ``manage.py``), whatever folder it starts in, so
    they all find the same files; two projects with environments of their
    own keep theirs apart.  ``environ`` is read instead of ``os.environ``.

    Creates nothing (:func:`state_file` does).  Raises
    :class:`ConfigurationError` when there is neither ``XDG_STATE_HOME`` nor
    a home folder.
    """
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME", "").strip()
    if not os.path.isabs(base):
        home = environ.get("HOME", "").strip() or os.path.expanduser("~")
        if home == "~":
            raise ConfigurationError(
                "eventlib's files have no folder: there is no home folder; set XDG_STATE_HOME, "
                f"or {ENV_PREFIX}SPOOL_PATH, {ENV_PREFIX}DEAD_LETTER_URL and "
                f"{ENV_PREFIX}BROKER_URL"
            )
        base = os.path.join(home, ".local", "state")
    prefix = os.path.realpath(sys.prefix)
    digest = hashlib.sha256(os.fsencode(prefix)).hexdigest()[:8]
    words = [part for part in Path(prefix).parts[-2:] if part != Path(prefix).anchor]
    name = re.sub(r"[^\w.-]+", "_", "-".join([*words, digest]))
    return Path(base) / "eventlib" / name


def state_file(name: str) -> Path:
    """The file ``name`` in :func:`state_directory`, the folder created
    first when it is missing (readable by its user only).  A folder that
    cannot be created is left to whoever opens the file, whose error names
    it."""
    folder = state_directory()
    with contextlib.suppress(OSError):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / name


def _default_spool_path() -> str:
    return str(state_file("spool.sqlite"))


def _default_dead_letter_url() -> str:
    return f"sqlite:///{state_file('dead-letters.sqlite')}"


# ------------------------------------------------------------ settings ---


@overload
def _setting(default: _T, *, kind: _Kind, doc: str, compare: bool = True) -> _T: ...
@overload
def _setting(
    *, factory: Callable[[], _T], kind: _Kind, doc: str, shown: str | None = None
) -> _T: ...
def _setting(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    kind: _Kind,
    doc: str,
    compare: bool = True,
    shown: str | None = None,
) -> Any:
    """A field of :class:`Settings`: a setting, with its default (or the
    ``factory`` of its default), its kind and one line of documentation.
    ``shown`` is how the documentation writes a default that depends on the
    host (``<state>/spool.sqlite``)."""
    return field(
        default=default,
        default_factory=factory,
        compare=compare,
        metadata={"kind": kind, "doc": doc, "shown": shown},
    )


@dataclass(frozen=True)
class Settings:
    """The settings in force.  Read them with :func:`get_settings`,
    change them with :func:`configure`.

    Each field declares a setting: its type, its default, its kind (how
    ``EVENTLIB_<NAME>`` is parsed, what ``configure()`` accepts) and one line
    of documentation.  A new setting is a new field here, and a line in
    README.md and in docs/django.md (tests/test_settings_docs.py checks both).
    """

    always_eager: bool = _setting(
        False,
        kind=_BOOLEAN,
        doc="Run handlers in the calling process, through the same serialization "
        "round trip a worker would see, instead of sending to a broker.",
    )
    raise_errors: bool | None = _setting(
        None,
        kind=_OPTIONAL_BOOLEAN,
        doc="Raise a ``ValidationError`` from ``log()`` instead of logging it; "
        "``None`` means the same as ``always_eager``.",
    )
    apps: tuple[str, ...] = _setting(
        (),
        kind=_PACKAGES,
        doc="Packages whose ``events`` module :func:`eventlib.autodiscover` imports.",
    )
    broker_url: str | None = _setting(
        None,
        kind=_OPTIONAL_TEXT,
        doc="Broker of the Celery app eventlib creates when no ``celery_app`` is given.",
    )
    queue: str = _setting(
        "eventlib",
        kind=_TEXT,
        doc="The Celery queue events are sent to.",
    )
    broker_timeout: float = _setting(
        2.0,
        kind=_SECONDS,
        doc="Seconds ``log()`` may wait for the broker (connecting, then each socket "
        "operation) before it keeps the event in the spool instead.",
    )
    broker_transport_options: Mapping[str, Any] = _setting(
        factory=dict,
        kind=_JSON_OBJECT,
        doc="Extra ``broker_transport_options`` for eventlib's own Celery app "
        "(for Redis, ``visibility_timeout``); JSON in the environment.",
    )
    on_commit: bool = _setting(
        False,
        kind=_BOOLEAN,
        doc="Make ``log()`` wait for the current database transaction to commit before "
        "sending (needs a transaction hook, see ``eventlib.contrib.django``).",
    )
    spool_path: str = _setting(
        factory=_default_spool_path,
        kind=_TEXT,
        doc="The SQLite file ``log()`` keeps events in while the broker cannot take "
        f"them (relative paths are from the working directory; {STATE} is "
        ":func:`state_directory`).",
        shown=f"{STATE}/spool.sqlite",
    )
    spool_probe_interval: float = _setting(
        5.0,
        kind=_SECONDS,
        doc="While the broker is known to be down, ``log()`` tries it again at most "
        "this often, in seconds; between tries events go straight to the spool.",
    )
    dead_letter_url: str = _setting(
        factory=_default_dead_letter_url,
        kind=_TEXT,
        doc="SQLAlchemy URL of the database that keeps dead letters "
        f"({STATE} is :func:`state_directory`).",
        shown=f"sqlite:///{STATE}/dead-letters.sqlite",
    )
    dispatch: str = _setting(
        "background",
        kind=_DISPATCH_MODE,
        doc="How ``log()`` hands events to the broker: ``background`` (a buffer in "
        "memory, published by a thread), ``spool`` (the spool file, published by a "
        "thread) or ``direct`` (published in the caller); see :mod:`eventlib.sending`.",
    )
    buffer_size: int = _setting(
        10_000,
        kind=_COUNT,
        doc="How many events the buffer of the ``background`` mode holds at most; "
        "when it is full, ``log()`` writes to the spool instead.",
    )
    batch_size: int = _setting(
        100,
        kind=_COUNT,
        doc="How many events one broker message carries at most.",
    )
    batch_bytes: int = _setting(
        512 * 1024,
        kind=_COUNT,
        doc="How many bytes of payload one broker message carries at most (a larger "
        "event goes alone).",
    )
    worker_consumes_queue: bool = _setting(
        True,
        kind=_BOOLEAN,
        doc="A Celery worker started without ``-Q``, in which eventlib's tasks are "
        "registered, consumes ``queue`` too.",
    )
    broadcast: bool = _setting(
        False,
        kind=_BOOLEAN,
        doc="Broadcast every event to the listeners of other processes once its handlers "
        "ran, unless its class says ``broadcast = False`` (docs/broadcast.md).",
    )
    celery_app: Any = _setting(
        None,
        kind=_CELERY_APP,
        doc="A Celery app of the user's, or its import path (``proj.celery.app`` or "
        "``proj.celery:app``, see :func:`import_celery_app`); when ``None`` "
        "eventlib creates its own.",
        compare=False,
    )

    @property
    def should_raise(self) -> bool:
        """Whether ``log()`` raises validation errors (``raise_errors``,
        defaulting to ``always_eager``)."""
        return self.always_eager if self.raise_errors is None else self.raise_errors


_FIELDS = {setting.name: setting for setting in fields(Settings)}
_NAMES = frozenset(_FIELDS)


def _kind(name: str) -> _Kind:
    kind: _Kind = _FIELDS[name].metadata["kind"]
    return kind


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the defaults and ``EVENTLIB_<NAME>`` variables.

    ``EVENTLIB_CELERY_APP``, the import path of a Celery app, is imported
    here (:func:`import_celery_app`).  Raises :class:`ConfigurationError`
    naming the variable when one does not parse or, for that one, import.
    """
    environ = os.environ if environ is None else environ
    values = {}
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if environ.get(key, "").strip():  # an empty variable means unset
            values[name] = _kind(name).parse(name, environ[key])
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
        checked = {name: _kind(name).check(name, value) for name, value in values.items()}
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

    Settings not named keep the value they had (from an earlier call, the
    environment or the default); the environment is read again.  An unknown
    name or a value of the wrong type raises
    :class:`~eventlib.ConfigurationError` and changes nothing.

    The settings (the fields of :class:`Settings`), each also read from the
    environment variable ``EVENTLIB_<NAME>``:
    """
    return _holder.configure(values)


def _list_settings() -> str:
    """The settings with their defaults and documentation, as a list for a
    docstring; a default that depends on the host as it is ``shown``."""
    return "".join(
        "\n"
        + textwrap.fill(
            f"``{name}`` (default ``{_shown_default(setting)}``): {setting.metadata['doc']}",
            width=79,
            initial_indent="    - ",
            subsequent_indent="      ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        for name, setting in _FIELDS.items()
    )


def _shown_default(setting: Any) -> str:
    if setting.metadata["shown"] is not None:
        return str(setting.metadata["shown"])
    if setting.default is not MISSING:
        return repr(setting.default)
    return repr(setting.default_factory())


if configure.__doc__ is not None:  # None under ``python -OO``
    configure.__doc__ += _list_settings() + "\n"


def reset() -> None:
    """Forget every value given to :func:`configure` and read the environment
    again.  Meant for tests."""
    _holder.reset()


def on_change(listener: Callable[[Settings], None]) -> None:
    """Call ``listener(settings)`` whenever settings change (internal)."""
    _holder.on_change(listener)
