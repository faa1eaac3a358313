"""Settings: defaults, ``configure()`` and ``EVENTLIB_*`` variables."""

from __future__ import annotations

import importlib
import os
from dataclasses import fields

import pytest
from sure import expect

import eventlib
from eventlib import ConfigurationError, conf, sending
from eventlib.conf import Settings, get_settings, settings_from_env


@pytest.fixture(autouse=True)
def clean_environment(isolation, monkeypatch):
    """Start from an environment without ``EVENTLIB_*`` variables."""
    for key in list(os.environ):
        if key.startswith("EVENTLIB_"):
            monkeypatch.delenv(key)
    conf.reset()


def reread(monkeypatch, **variables):
    """Set ``EVENTLIB_<NAME>`` variables and read the environment again."""
    for name, value in variables.items():
        monkeypatch.setenv(f"EVENTLIB_{name.upper()}", value)
    conf.reset()
    return get_settings()


# ------------------------------------------------------------- defaults ---


def test_defaults():
    settings = get_settings()

    assert settings.always_eager is False
    assert settings.raise_errors is None
    assert settings.apps == ()
    assert settings.broker_url is None
    assert settings.queue == "eventlib"
    assert settings.broker_timeout == 2.0
    assert settings.broker_transport_options == {}
    assert settings.on_commit is False
    assert settings.celery_app is None


def test_should_raise_follows_always_eager_by_default():
    assert get_settings().should_raise is False
    assert eventlib.configure(always_eager=True).should_raise is True


@pytest.mark.parametrize(
    ("always_eager", "raise_errors", "should_raise"),
    [
        (True, False, False),
        (False, True, True),
        (True, True, True),
        (False, False, False),
        (True, None, True),
        (False, None, False),
    ],
)
def test_explicit_raise_errors_wins_over_always_eager(always_eager, raise_errors, should_raise):
    settings = eventlib.configure(always_eager=always_eager, raise_errors=raise_errors)

    assert settings.should_raise is should_raise


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        get_settings().queue = "other"


# ------------------------------------------------------------ configure ---


def test_configure_overrides_and_returns_the_settings():
    settings = eventlib.configure(
        always_eager=True, apps=["shop", "billing"], broker_url="memory://", queue="events"
    )

    assert settings is get_settings()
    assert settings.always_eager is True
    assert settings.apps == ("shop", "billing")
    assert settings.broker_url == "memory://"
    assert settings.queue == "events"


def test_configure_keeps_earlier_overrides():
    eventlib.configure(queue="events")
    settings = eventlib.configure(always_eager=True)

    assert settings.queue == "events"
    assert settings.always_eager is True


def test_configure_accepts_any_iterable_of_apps():
    assert eventlib.configure(apps=("shop",)).apps == ("shop",)
    assert eventlib.configure(apps=(app for app in ["a", "b"])).apps == ("a", "b")


def test_configure_without_arguments_changes_nothing():
    eventlib.configure(queue="events")

    assert eventlib.configure() == get_settings()
    assert get_settings().queue == "events"


def test_reset_forgets_overrides():
    eventlib.configure(always_eager=True, queue="events")
    conf.reset()

    assert get_settings() == Settings()


def test_configure_documents_every_setting_with_its_default():
    documentation = " ".join(eventlib.configure.__doc__.split())
    defaults = Settings()

    for setting in fields(Settings):
        name = setting.name
        shown = setting.metadata["shown"]
        if shown is None:
            shown = repr(getattr(defaults, name))
        else:  # a default that depends on the host, written with <state>
            written = shown.replace(conf.STATE, str(conf.state_directory()))
            assert written == getattr(defaults, name)
        assert f"``{name}`` (default ``{shown}``): " in documentation
        assert " ".join(setting.metadata["doc"].split()) in documentation


def test_unknown_setting_is_refused_and_the_known_ones_listed():
    with pytest.raises(ConfigurationError) as raised:
        eventlib.configure(broker="memory://")

    message = str(raised.value)
    assert "broker" in message
    for known in ("always_eager", "raise_errors", "apps", "broker_url", "queue", "celery_app"):
        assert known in message


@pytest.mark.parametrize(
    "values",
    [
        {"always_eager": "yes"},
        {"always_eager": 1},
        {"always_eager": None},
        {"raise_errors": "no"},
        {"apps": "shop"},
        {"apps": 42},
        {"apps": ["shop", ""]},
        {"apps": ["shop", 42]},
        {"queue": ""},
        {"queue": None},
        {"queue": 42},
        {"broker_url": 42},
        {"broker_timeout": 0},
        {"broker_timeout": -1},
        {"broker_timeout": "2"},
        {"broker_timeout": True},
        {"broker_transport_options": "visibility_timeout=3"},
        {"on_commit": "yes"},
    ],
)
def test_wrong_types_are_refused(values):
    with pytest.raises(ConfigurationError):
        eventlib.configure(**values)


def test_configuration_error_is_an_eventlib_value_error():
    with pytest.raises(ConfigurationError) as raised:
        eventlib.configure(queue="")

    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, eventlib.EventlibError)


def test_a_refused_configure_changes_nothing():
    eventlib.configure(queue="events")

    with pytest.raises(ConfigurationError):
        eventlib.configure(always_eager=True, queue="")
    with pytest.raises(ConfigurationError):
        eventlib.configure(always_eager=True, unknown=1)

    assert get_settings().always_eager is False
    assert get_settings().queue == "events"


def test_celery_app_is_accepted_as_is():
    app = object()

    assert eventlib.configure(celery_app=app).celery_app is app


# ---------------------------------------------------------- environment ---


@pytest.mark.parametrize("text", ["1", "true", "True", "YES", "on", " true "])
def test_always_eager_from_environment_true(monkeypatch, text):
    settings = reread(monkeypatch, always_eager=text)

    assert settings.always_eager is True
    assert settings.should_raise is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off", ""])
def test_always_eager_from_environment_false(monkeypatch, text):
    assert reread(monkeypatch, always_eager=text).always_eager is False


def test_raise_errors_from_environment(monkeypatch):
    settings = reread(monkeypatch, always_eager="1", raise_errors="false")

    assert settings.raise_errors is False
    assert settings.should_raise is False
    assert reread(monkeypatch, always_eager="0", raise_errors="on").should_raise is True


def test_empty_raise_errors_means_unset(monkeypatch):
    settings = reread(monkeypatch, always_eager="1", raise_errors="")

    assert settings.raise_errors is None
    assert settings.should_raise is True


def test_apps_from_environment_are_comma_separated(monkeypatch):
    settings = reread(monkeypatch, apps="shop, shop.orders ,,billing,")

    assert settings.apps == ("shop", "shop.orders", "billing")


def test_broker_url_and_queue_from_environment(monkeypatch):
    settings = reread(monkeypatch, broker_url=" redis://localhost:6379/0 ", queue="events")

    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.queue == "events"


def test_environment_is_read_once_until_reset(monkeypatch):
    assert get_settings().queue == "eventlib"

    monkeypatch.setenv("EVENTLIB_QUEUE", "events")
    assert get_settings().queue == "eventlib"

    conf.reset()
    assert get_settings().queue == "events"


def test_configure_reads_the_environment_again(monkeypatch):
    eventlib.configure(queue="from-code")
    monkeypatch.setenv("EVENTLIB_BROKER_URL", "memory://")

    settings = eventlib.configure()

    assert settings.broker_url == "memory://"
    assert settings.queue == "from-code"


def test_configure_wins_over_the_environment(monkeypatch):
    reread(monkeypatch, always_eager="1", queue="from-env", apps="shop")

    settings = eventlib.configure(always_eager=False, queue="from-code")

    assert settings.always_eager is False
    assert settings.queue == "from-code"
    assert settings.apps == ("shop",)


def test_unparsable_boolean_names_the_variable(monkeypatch):
    monkeypatch.setenv("EVENTLIB_ALWAYS_EAGER", "maybe")

    with pytest.raises(ConfigurationError, match="EVENTLIB_ALWAYS_EAGER='maybe'"):
        eventlib.configure()


def test_unparsable_raise_errors_names_the_variable(monkeypatch):
    monkeypatch.setenv("EVENTLIB_RAISE_ERRORS", "sometimes")

    with pytest.raises(ConfigurationError, match="EVENTLIB_RAISE_ERRORS"):
        eventlib.configure()


# ---------------------------------------------------- settings_from_env ---


def test_settings_from_an_empty_mapping_are_the_defaults(monkeypatch):
    monkeypatch.setenv("EVENTLIB_ALWAYS_EAGER", "1")

    assert settings_from_env({}) == Settings()


def test_settings_from_an_explicit_mapping():
    settings = settings_from_env(
        {
            "EVENTLIB_ALWAYS_EAGER": "yes",
            "EVENTLIB_RAISE_ERRORS": "no",
            "EVENTLIB_APPS": "shop,billing",
            "EVENTLIB_BROKER_URL": "memory://",
            "EVENTLIB_QUEUE": "events",
            "OTHER": "ignored",
        }
    )

    assert settings == Settings(
        always_eager=True,
        raise_errors=False,
        apps=("shop", "billing"),
        broker_url="memory://",
        queue="events",
    )
    assert settings.celery_app is None


def test_every_setting_can_come_from_the_environment(isolation):
    isolation.write("proj/celery.py", "from celery import Celery\napp = Celery('proj')\n")
    settings = settings_from_env(
        {
            "EVENTLIB_ALWAYS_EAGER": "1",
            "EVENTLIB_RAISE_ERRORS": "0",
            "EVENTLIB_APPS": "shop",
            "EVENTLIB_BROKER_URL": "redis://broker:6379/1",
            "EVENTLIB_QUEUE": "events",
            "EVENTLIB_BROKER_TIMEOUT": "0.5",
            "EVENTLIB_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 60}',
            "EVENTLIB_ON_COMMIT": "true",
            "EVENTLIB_SPOOL_PATH": "/var/spool/eventlib.sqlite",
            "EVENTLIB_SPOOL_PROBE_INTERVAL": "2.5",
            "EVENTLIB_DEAD_LETTER_URL": "sqlite:////var/lib/dead.sqlite",
            "EVENTLIB_DISPATCH": " Spool ",
            "EVENTLIB_BUFFER_SIZE": "500",
            "EVENTLIB_BATCH_SIZE": "20",
            "EVENTLIB_BATCH_BYTES": "65536",
            "EVENTLIB_WORKER_CONSUMES_QUEUE": "no",
            "EVENTLIB_BROADCAST": "yes",
            "EVENTLIB_CELERY_APP": "proj.celery:app",
        }
    )
    defaults = Settings()

    for setting in fields(Settings):
        value = getattr(settings, setting.name)
        assert value != getattr(defaults, setting.name), f"{setting.name} kept its default"
    assert settings.broker_timeout == 0.5
    assert settings.spool_probe_interval == 2.5
    assert settings.broker_transport_options == {"visibility_timeout": 60}
    assert settings.spool_path == "/var/spool/eventlib.sqlite"
    assert settings.dead_letter_url == "sqlite:////var/lib/dead.sqlite"
    assert (settings.dispatch, settings.buffer_size) == ("spool", 500)
    assert (settings.batch_size, settings.batch_bytes) == (20, 65536)
    assert settings.on_commit is True
    assert settings.celery_app is importlib.import_module("proj.celery").app


def test_settings_from_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("EVENTLIB_QUEUE", "events")

    assert settings_from_env().queue == "events"


def test_settings_from_env_refuses_an_unparsable_boolean():
    with pytest.raises(ConfigurationError, match="EVENTLIB_ALWAYS_EAGER"):
        settings_from_env({"EVENTLIB_ALWAYS_EAGER": "maybe"})


@pytest.mark.parametrize("text", ["", "  "])
def test_empty_queue_variable_never_gives_an_unusable_queue(text):
    """``configure(queue='')`` is refused as unusable; an empty
    ``EVENTLIB_QUEUE`` must not sneak it in: it either means the default, as
    an empty ``EVENTLIB_RAISE_ERRORS`` does, or is refused by name."""
    try:
        settings = settings_from_env({"EVENTLIB_QUEUE": text})
    except ConfigurationError as error:
        assert "EVENTLIB_QUEUE" in str(error)
    else:
        assert settings.queue == "eventlib"


# ------------------------------------------------- production settings ---


def test_broker_timeout_transport_options_and_on_commit_from_environment(monkeypatch):
    settings = reread(
        monkeypatch,
        broker_timeout="0.75",
        broker_transport_options='{"visibility_timeout": 3}',
        on_commit="true",
    )

    assert settings.broker_timeout == 0.75
    assert settings.broker_transport_options == {"visibility_timeout": 3}
    assert settings.on_commit is True


@pytest.mark.parametrize("text", ["soon", "0", "-2", "nan"])
def test_unusable_broker_timeout_names_the_variable(monkeypatch, text):
    monkeypatch.setenv("EVENTLIB_BROKER_TIMEOUT", text)

    with pytest.raises(ConfigurationError) as error:
        conf.reset()

    assert str(error.value) == (
        f"EVENTLIB_BROKER_TIMEOUT={text!r} is not a positive number of seconds"
    )


@pytest.mark.parametrize("text", ["[1, 2]", "{visibility_timeout: 3}"])
def test_transport_options_must_be_a_json_object(monkeypatch, text):
    monkeypatch.setenv("EVENTLIB_BROKER_TRANSPORT_OPTIONS", text)

    with pytest.raises(
        ConfigurationError, match=r"EVENTLIB_BROKER_TRANSPORT_OPTIONS=.* is not a JSON object"
    ):
        conf.reset()


def test_an_integer_broker_timeout_becomes_seconds_as_a_float():
    assert eventlib.configure(broker_timeout=3).broker_timeout == 3.0


# ----------------------------------------------------------- celery_app ---

PROJ_CELERY = """
    from celery import Celery

    app = Celery('proj', set_as_current=False)
    BROKER = 'redis://localhost:6379/0'
"""


@pytest.fixture
def proj(isolation):
    """A project whose Celery app is ``proj.celery.app``."""
    isolation.write("proj/celery.py", PROJ_CELERY)


def proj_app():
    return importlib.import_module("proj.celery").app


@pytest.mark.parametrize("path", ["proj.celery.app", "proj.celery:app", " proj.celery.app "])
def test_celery_app_from_environment_is_imported_from_its_path(proj, monkeypatch, path):
    settings = reread(monkeypatch, celery_app=path)

    expect(settings.celery_app).to.be(proj_app())
    expect(sending.celery_app()).to.be(proj_app())


def test_celery_app_from_an_explicit_mapping(proj):
    settings = settings_from_env({"EVENTLIB_CELERY_APP": "proj.celery:app"})

    expect(settings.celery_app).to.be(proj_app())


def test_configure_wins_over_the_celery_app_of_the_environment(proj, monkeypatch):
    reread(monkeypatch, celery_app="proj.celery.app")
    mine = object()

    expect(eventlib.configure(celery_app=mine).celery_app).to.be(mine)
    expect(eventlib.configure(celery_app=None).celery_app).to.be(None)


USE_A_PATH = (
    "is not the import path of a Celery app: use 'package.module.app' or 'package.module:app'"
)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nowhere.celery.app", "does not import: No module named 'nowhere'"),
        ("proj.celery.missing", "does not import: module 'proj.celery' has no attribute 'missing'"),
        ("proj.celery:app.missing", "does not import: 'Celery' object has no attribute 'missing'"),
        ("proj.celery.BROKER", "is not a Celery app but 'redis://localhost:6379/0'"),
        ("proj.celery.Celery", "is not a Celery app but <class 'celery.app.base.Celery'>"),
        ("app", USE_A_PATH),
        ("proj.celery:", USE_A_PATH),
    ],
)
def test_unusable_celery_app_variable_is_refused_by_name(proj, monkeypatch, path, message):
    monkeypatch.setenv("EVENTLIB_CELERY_APP", path)

    with pytest.raises(ConfigurationError) as error:
        conf.reset()

    expect(str(error.value)).to.equal(f"EVENTLIB_CELERY_APP={path!r} {message}")


def test_a_celery_app_module_that_fails_to_import_raises_its_own_error(isolation, monkeypatch):
    isolation.write("proj/celery.py", "raise RuntimeError('broken')\n")
    monkeypatch.setenv("EVENTLIB_CELERY_APP", "proj.celery.app")

    with pytest.raises(RuntimeError, match=r"^broken$"):
        conf.reset()


def test_configure_takes_the_import_path_of_a_celery_app_too(proj):
    expect(eventlib.configure(celery_app="proj.celery:app").celery_app).to.be(proj_app())


def test_configure_refuses_a_celery_app_path_that_does_not_import(proj):
    eventlib.configure(queue="events")

    with pytest.raises(ConfigurationError) as error:
        eventlib.configure(queue="other", celery_app="proj.celery.missing")

    expect(str(error.value)).to.equal(
        "celery_app='proj.celery.missing' does not import: "
        "module 'proj.celery' has no attribute 'missing'"
    )
    expect(get_settings().queue).to.equal("events")
    expect(get_settings().celery_app).to.be(None)


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        (
            "EVENTLIB_DISPATCH",
            "later",
            "EVENTLIB_DISPATCH='later' is not a dispatch mode: use one of "
            "background, spool, direct",
        ),
        ("EVENTLIB_BATCH_SIZE", "0", "EVENTLIB_BATCH_SIZE='0' is not a positive integer"),
        ("EVENTLIB_BUFFER_SIZE", "many", "EVENTLIB_BUFFER_SIZE='many' is not a positive integer"),
    ],
)
def test_a_dispatch_setting_that_does_not_parse_names_the_variable(variable, text, message):
    with pytest.raises(ConfigurationError) as raised:
        settings_from_env({variable: text})
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"dispatch": "later"},
            "dispatch must be one of 'background', 'spool', 'direct', not 'later'",
        ),
        ({"batch_size": 0}, "batch_size must be a positive integer, not 0"),
        ({"batch_bytes": 1.5}, "batch_bytes must be a positive integer, not 1.5"),
        ({"buffer_size": True}, "buffer_size must be a positive integer, not True"),
    ],
)
def test_configure_refuses_a_dispatch_setting_it_cannot_use(values, message):
    with pytest.raises(ConfigurationError) as raised:
        eventlib.configure(**values)
    assert str(raised.value) == message
