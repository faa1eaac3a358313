"""Event names, ``find_event`` and ``autodiscover``."""

from __future__ import annotations

import importlib
import sys

import pytest

import eventlib
from eventlib import HANDLER_REGISTRY, EventNotFound, InvalidEventName
from eventlib.discovery import EventName, clear_cache, find_event, parse_event_name

REFUND = """
from eventlib import BaseEvent

class Refund(BaseEvent):
    pass
"""


# ---------------------------------------------------- parse_event_name ---


def test_parse_simple_name():
    parsed = parse_event_name("shop.Refund")

    assert parsed == EventName(app="shop", event="Refund")
    assert parsed.module == "shop.events"


def test_parse_dotted_app():
    parsed = parse_event_name("shop.orders.Refund")

    assert parsed.app == "shop.orders"
    assert parsed.event == "Refund"
    assert parsed.module == "shop.orders.events"


def test_parse_accepts_underscores_and_digits():
    assert parse_event_name("_shop2.orders_v2._Refund3") == ("_shop2.orders_v2", "_Refund3")


@pytest.mark.parametrize(
    "name",
    [
        "nodots",
        "app.",
        ".Event",
        "app..Event",
        "1app.Event",
        "app.1Event",
        "",
        ".",
        "app.Event.",
        "my-app.Event",
        "app. Event",
        "app.Event\n",
        "shop.*",
    ],
)
def test_parse_refuses_malformed_names(name):
    with pytest.raises(InvalidEventName):
        parse_event_name(name)


@pytest.mark.parametrize("name", [None, 42, b"shop.Refund", ("shop", "Refund")])
def test_parse_refuses_non_strings(name):
    with pytest.raises(InvalidEventName, match="must be a string"):
        parse_event_name(name)


def test_invalid_event_name_is_an_eventlib_value_error():
    with pytest.raises(InvalidEventName) as raised:
        parse_event_name("nodots")

    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, eventlib.EventlibError)
    assert "'nodots'" in str(raised.value)


# ---------------------------------------------------------- find_event ---


def test_find_event_in_the_app_events_module(isolation):
    isolation.write("shop/events.py", REFUND)

    event_class = find_event("shop.Refund")

    assert event_class is sys.modules["shop.events"].Refund
    assert event_class.name == "shop.Refund"


def test_find_event_in_a_dotted_app(isolation):
    isolation.write("shop/orders/events.py", REFUND)

    event_class = find_event("shop.orders.Refund")

    assert event_class is sys.modules["shop.orders.events"].Refund
    assert event_class.name == "shop.orders.Refund"


def test_find_event_caches_the_class(isolation):
    """Once found, the class is returned without importing the module again,
    even when the module is gone."""
    path = isolation.write("shop/events.py", REFUND)
    first = find_event("shop.Refund")

    sys.modules.pop("shop.events")
    path.unlink()
    importlib.invalidate_caches()

    assert find_event("shop.Refund") is first
    assert "shop.events" not in sys.modules

    clear_cache()
    with pytest.raises(EventNotFound):
        find_event("shop.Refund")


def test_find_event_refuses_a_malformed_name():
    with pytest.raises(InvalidEventName):
        find_event("nodots")


def test_unknown_event_class(isolation):
    isolation.write("shop/orders/events.py", REFUND.replace("Refund", "Payment"))

    with pytest.raises(EventNotFound) as raised:
        find_event("shop.orders.Refund")

    assert str(raised.value) == "There is no event named Refund in the shop.orders app"
    assert isinstance(raised.value, LookupError)


def test_app_without_events_module(isolation):
    isolation.write("shop/orders/models.py", "")

    with pytest.raises(EventNotFound) as raised:
        find_event("shop.orders.Refund")

    assert str(raised.value) == "There is no event named Refund in the shop.orders app"
    cause = raised.value.__cause__
    assert isinstance(cause, ModuleNotFoundError)
    assert cause.name == "shop.orders.events"


def test_app_that_does_not_exist():
    with pytest.raises(EventNotFound) as raised:
        find_event("nowhere_xyz.orders.Refund")

    assert str(raised.value) == "There is no event named Refund in the nowhere_xyz.orders app"
    cause = raised.value.__cause__
    assert isinstance(cause, ModuleNotFoundError)
    assert cause.name == "nowhere_xyz"


@pytest.mark.parametrize(
    "source",
    [
        "Refund = 42\n",
        "def Refund(data):\n    return data\n",
        "class Refund:\n    pass\n",
        "from datetime import datetime as Refund\n",
    ],
)
def test_attribute_that_is_not_an_event_class(isolation, source):
    isolation.write("shop/events.py", source)

    with pytest.raises(EventNotFound, match=r"^There is no event named Refund in the shop app$"):
        find_event("shop.Refund")


def test_base_event_itself_is_not_an_event_of_the_app(isolation):
    """Every events module imports ``BaseEvent``; that does not make
    ``'shop.BaseEvent'`` an event (it has no name of its own and no entry in
    ``HANDLER_REGISTRY``, so processing it would fail with a ``KeyError``)."""
    isolation.write("shop/events.py", REFUND)

    with pytest.raises(EventNotFound, match=r"^There is no event named BaseEvent in the shop app$"):
        find_event("shop.BaseEvent")


def test_events_module_that_raises_propagates_its_error(isolation):
    isolation.write("shop/events.py", "raise RuntimeError('broken')\n")

    with pytest.raises(RuntimeError, match=r"^broken$"):
        find_event("shop.Refund")


def test_events_module_importing_a_missing_module_propagates_its_error(isolation):
    isolation.write("shop/events.py", "import not_there_xyz\n" + REFUND)

    with pytest.raises(ModuleNotFoundError) as raised:
        find_event("shop.Refund")

    assert raised.value.name == "not_there_xyz"
    assert not isinstance(raised.value, EventNotFound)


def test_events_module_importing_a_missing_module_of_its_own_app(isolation):
    isolation.write("shop/orders/events.py", "import shop.orders.helpers\n" + REFUND)

    with pytest.raises(ModuleNotFoundError) as raised:
        find_event("shop.orders.Refund")

    assert raised.value.name == "shop.orders.helpers"


def test_app_package_that_raises_propagates_its_error(isolation):
    isolation.write("shop/events.py", REFUND)
    isolation.write("shop/__init__.py", "import not_there_xyz\n")

    with pytest.raises(ModuleNotFoundError) as raised:
        find_event("shop.Refund")

    assert raised.value.name == "not_there_xyz"


def test_failed_lookups_are_not_cached(isolation):
    isolation.write("shop/events.py", REFUND.replace("Refund", "Payment"))
    with pytest.raises(EventNotFound):
        find_event("shop.Refund")

    isolation.write("shop/events.py", REFUND)

    assert find_event("shop.Refund").name == "shop.Refund"


# -------------------------------------------- only the configured apps ---


def imported(prefix: str) -> list[str]:
    return [name for name in sys.modules if name == prefix or name.startswith(prefix + ".")]


@pytest.mark.parametrize(
    ("name", "app"),
    [
        pytest.param("sidefx.Boom", "sidefx", id="other-app"),
        pytest.param("shop.orders.Refund", "shop.orders", id="app-below-a-configured-one"),
        pytest.param("proj.Refund", "proj", id="app-above-a-configured-one"),
        pytest.param("proj.shopping.Refund", "proj.shopping", id="same-prefix"),
    ],
)
def test_with_apps_set_an_event_of_another_app_is_not_found_nor_imported(isolation, name, app):
    for other in ("sidefx/events.py", "shop/orders/events.py", "proj/events.py"):
        isolation.write(other, REFUND)
    isolation.write("proj/shopping/events.py", REFUND)
    isolation.write("proj/shop/events.py", REFUND)
    eventlib.configure(apps=["shop", "proj.shop"])

    with pytest.raises(EventNotFound) as raised:
        find_event(name)

    event = name.rpartition(".")[2]
    assert str(raised.value) == (
        f"There is no event named {event} in the {app} app: {app} is not among the configured apps"
    )
    assert imported(name.partition(".")[0]) == []


def test_with_apps_set_their_events_are_found_dotted_or_not(isolation):
    isolation.write("shop/events.py", REFUND)
    isolation.write("proj/shop/events.py", REFUND)
    eventlib.configure(apps=["shop", "proj.shop"])

    assert find_event("shop.Refund") is sys.modules["shop.events"].Refund
    assert find_event("proj.shop.Refund") is sys.modules["proj.shop.events"].Refund


def test_an_imported_events_module_of_another_app_is_not_found_either(isolation):
    """Already imported or not, only the configured apps have events."""
    isolation.write("sidefx/events.py", REFUND)
    importlib.import_module("sidefx.events")
    eventlib.configure(apps=["shop"])

    with pytest.raises(EventNotFound, match="sidefx is not among the configured apps"):
        find_event("sidefx.Refund")


def test_a_cached_event_is_refused_once_its_app_is_no_longer_configured(isolation):
    isolation.write("sidefx/events.py", REFUND)
    found = find_event("sidefx.Refund")  # no apps: any app's events

    eventlib.configure(apps=["shop"])
    with pytest.raises(EventNotFound, match="sidefx is not among the configured apps"):
        find_event("sidefx.Refund")

    eventlib.configure(apps=["shop", "sidefx"])
    assert find_event("sidefx.Refund") is found


def test_a_malformed_name_is_still_invalid_with_apps_set():
    eventlib.configure(apps=["shop"])

    with pytest.raises(InvalidEventName):
        find_event("nodots")
    with pytest.raises(InvalidEventName, match="must be a string, not list"):
        find_event(["shop", "Refund"])


# -------------------------------------------------------- autodiscover ---


@pytest.fixture
def apps(isolation):
    """``shop`` declares ``shop.Refund``; ``billing`` handles it; ``crm`` has
    no events module."""
    isolation.write("shop/events.py", REFUND)
    isolation.write(
        "billing/events.py",
        """
        from eventlib import handler

        @handler("shop.Refund")
        def refund_invoice(event):
            pass
        """,
    )
    isolation.write("crm/models.py", "")
    return isolation


def test_autodiscover_uses_the_apps_setting(apps):
    eventlib.configure(apps=["shop", "billing"])

    found = eventlib.autodiscover()

    assert found == {"shop": sys.modules["shop.events"], "billing": sys.modules["billing.events"]}
    assert list(found) == ["shop", "billing"]


def test_autodiscover_with_an_explicit_list(apps):
    eventlib.configure(apps=["shop"])

    found = eventlib.autodiscover(["billing"])

    assert found == {"billing": sys.modules["billing.events"]}
    assert "shop.events" not in sys.modules


def test_autodiscover_registers_function_handlers(apps):
    eventlib.autodiscover(["shop", "billing"])
    refund = sys.modules["shop.events"].Refund

    assert HANDLER_REGISTRY[refund] == [sys.modules["billing.events"].refund_invoice]


def test_autodiscover_skips_an_app_without_events_module(apps):
    found = eventlib.autodiscover(["shop", "crm"])

    assert found == {"shop": sys.modules["shop.events"]}
    assert "crm" in sys.modules


def test_autodiscover_imports_the_events_module_of_a_dotted_app(isolation):
    isolation.write("shop/orders/events.py", REFUND)

    found = eventlib.autodiscover(["shop.orders"])

    assert found == {"shop.orders": sys.modules["shop.orders.events"]}
    assert find_event("shop.orders.Refund") is sys.modules["shop.orders.events"].Refund


def test_autodiscover_without_apps_finds_nothing():
    assert eventlib.autodiscover() == {}
    assert eventlib.autodiscover([]) == {}


def test_autodiscover_refuses_an_app_that_does_not_exist(apps):
    with pytest.raises(ImportError) as raised:
        eventlib.autodiscover(["shop", "nowhere_xyz"])

    assert raised.value.name == "nowhere_xyz"


def test_autodiscover_raises_the_error_of_a_broken_events_module(apps):
    apps.write("crm/events.py", "raise RuntimeError('broken')\n")

    with pytest.raises(RuntimeError, match=r"^broken$"):
        eventlib.autodiscover(["shop", "crm"])


def test_autodiscover_raises_a_missing_import_of_an_events_module(apps):
    apps.write("crm/events.py", "import not_there_xyz\n")

    with pytest.raises(ModuleNotFoundError) as raised:
        eventlib.autodiscover(["crm"])

    assert raised.value.name == "not_there_xyz"
