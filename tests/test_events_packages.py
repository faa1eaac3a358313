"""An ``events`` module that is a package re-exporting classes declared in
its modules (#11): the event found as ``app.Viewed`` is ``app.Viewed``
everywhere, and a class reachable under a second name is refused."""

from __future__ import annotations

import sys

import pytest

import eventlib
from eventlib import HANDLER_REGISTRY, EventNotFound
from eventlib.discovery import find_event

PACKAGE_INIT = """
    from .models import Viewed
"""

MODELS = """
    import eventlib

    RUNS = []


    class Viewed(eventlib.BaseEvent):
        @eventlib.handler
        def count(self):
            RUNS.append(("count", self.data["page"]))
"""

HOOKS = """
    import eventlib

    from app.events.models import RUNS


    @eventlib.handler("app.Viewed")
    def remember(event):
        RUNS.append(("remember", event.data["page"]))


    @eventlib.handler("app.*")
    def audit(event):
        RUNS.append(("audit", event.name))
"""


@pytest.fixture
def app(isolation):
    isolation.write("app/events/__init__.py", PACKAGE_INIT)
    isolation.write("app/events/models.py", MODELS)
    isolation.write("app/hooks.py", HOOKS)
    eventlib.configure(always_eager=True)
    import app.hooks  # noqa: F401  (declares the function handlers)
    from app.events.models import RUNS

    return RUNS


def test_a_class_of_an_events_package_is_named_after_its_app(app):
    viewed = find_event("app.Viewed")

    assert viewed.name == "app.Viewed"
    assert viewed.__module__ == "app.events.models"
    assert [handler.__name__ for handler in HANDLER_REGISTRY[viewed]] == [
        "count",
        "remember",
        "audit",
    ]


def test_logging_it_runs_its_methods_its_function_handlers_and_the_patterns(app):
    eventlib.log("app.Viewed", {"page": "/deals"})

    assert app == [("count", "/deals"), ("remember", "/deals"), ("audit", "app.Viewed")]


def test_a_class_reachable_under_a_second_name_is_refused_saying_its_name(isolation, app):
    isolation.write("partner/events.py", "from app.events.models import Viewed\n")
    isolation.write("app/events/__init__.py", PACKAGE_INIT + "    Seen = Viewed\n")
    sys.modules.pop("app.events")  # a package's __init__, which write() does not forget

    for name, module in [("partner.Viewed", "partner.events"), ("app.Seen", "app.events")]:
        with pytest.raises(EventNotFound) as refused:
            find_event(name)
        app_name, _, event = name.rpartition(".")
        assert str(refused.value) == (
            f"There is no event named {event} in the {app_name} app: {module}.{event} is "
            "the event app.Viewed (declared in app.events.models), which has one name: "
            "log it as 'app.Viewed'"
        )
    assert app == []
