"""The ``handler`` decorator and ``HANDLER_REGISTRY``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping

import pytest

import eventlib
from eventlib import HANDLER_REGISTRY, InvalidEventName, handler
from eventlib.registry import MAX_RETRY_DELAY, HandlerOptions, handler_name

SHOP_EVENTS = """
    from eventlib import BaseEvent, handler

    class Refund(BaseEvent):
        @handler
        def first(self):
            self.data.setdefault("calls", []).append("first")

        @handler
        def second(self):
            pass

        def not_a_handler(self):
            pass

        @handler
        def third(self):
            pass

    class Quiet(BaseEvent):
        pass
"""


def import_fresh(name):
    sys.modules.pop(name, None)
    return importlib.import_module(name)


# ------------------------------------------------------------- ordering ---


def test_method_handlers_are_listed_in_declaration_order(shop):
    assert HANDLER_REGISTRY[shop.Refund] == [
        shop.Refund.first,
        shop.Refund.second,
        shop.Refund.third,
    ]


def test_event_without_handlers_has_an_empty_list(shop):
    assert HANDLER_REGISTRY[shop.Quiet] == []


def test_methods_then_functions_then_patterns(shop, isolation):
    isolation.write(
        "audit/handlers.py",
        """
        from eventlib import handler

        @handler("*")
        def everything(event):
            pass

        @handler("shop.Refund")
        def on_refund(event):
            pass

        @handler("shop.*")
        def anything_in_shop(event):
            pass

        @handler("shop.Refund")
        def on_refund_again(event):
            pass
        """,
    )
    audit = importlib.import_module("audit.handlers")

    assert HANDLER_REGISTRY[shop.Refund] == [
        shop.Refund.first,
        shop.Refund.second,
        shop.Refund.third,
        audit.on_refund,
        audit.on_refund_again,
        audit.everything,
        audit.anything_in_shop,
    ]
    assert HANDLER_REGISTRY[shop.Quiet] == [audit.everything, audit.anything_in_shop]


def test_function_handlers_registered_before_the_event_class_is_declared(isolation):
    isolation.write(
        "audit/handlers.py",
        """
        from eventlib import handler

        @handler("shop.Refund")
        def on_refund(event):
            pass
        """,
    )
    audit = importlib.import_module("audit.handlers")
    isolation.write("shop/events.py", SHOP_EVENTS)
    shop = importlib.import_module("shop.events")

    assert HANDLER_REGISTRY[shop.Refund][-1] is audit.on_refund


def test_app_pattern_matches_only_the_app_itself(shop, isolation):
    isolation.write(
        "shop/orders/events.py",
        """
        from eventlib import BaseEvent

        class Refund(BaseEvent):
            pass
        """,
    )
    isolation.write(
        "audit/handlers.py",
        """
        from eventlib import handler

        @handler("shop.*")
        def shop_only(event):
            pass

        @handler("shop.orders.*")
        def orders_only(event):
            pass

        @handler("*")
        def everything(event):
            pass
        """,
    )
    orders = importlib.import_module("shop.orders.events")
    audit = importlib.import_module("audit.handlers")

    assert HANDLER_REGISTRY[shop.Quiet] == [audit.shop_only, audit.everything]
    assert HANDLER_REGISTRY[orders.Refund] == [audit.orders_only, audit.everything]


# ---------------------------------------------------------- inheritance ---


@pytest.fixture
def hierarchy(isolation):
    isolation.write(
        "shop/events.py",
        """
        from eventlib import BaseEvent, handler

        class Base(BaseEvent):
            @handler
            def a(self):
                pass

            @handler
            def b(self):
                pass

            @handler
            def c(self):
                pass

        class Inherits(Base):
            pass

        class Overrides(Base):
            @handler
            def d(self):
                pass

            @handler
            def a(self):
                pass

        class Removes(Base):
            def b(self):
                pass
        """,
    )
    return importlib.import_module("shop.events")


def test_subclass_inherits_base_handlers(hierarchy):
    base = hierarchy.Base
    assert HANDLER_REGISTRY[hierarchy.Inherits] == [base.a, base.b, base.c]


def test_overriding_a_handler_keeps_its_place(hierarchy):
    base, sub = hierarchy.Base, hierarchy.Overrides
    assert HANDLER_REGISTRY[sub] == [sub.a, base.b, base.c, sub.d]


def test_overriding_with_an_unmarked_method_removes_the_handler(hierarchy):
    base = hierarchy.Base
    assert HANDLER_REGISTRY[hierarchy.Removes] == [base.a, base.c]


def test_subclass_does_not_change_the_base_handlers(hierarchy):
    base = hierarchy.Base
    assert HANDLER_REGISTRY[base] == [base.a, base.b, base.c]


# ---------------------------------------------------------- re-importing ---


def test_reimported_function_handler_replaces_itself_in_place(shop, isolation):
    isolation.write(
        "audit/handlers.py",
        """
        from eventlib import handler

        @handler("shop.Refund")
        def on_refund(event):
            pass
        """,
    )
    isolation.write(
        "billing/handlers.py",
        """
        from eventlib import handler

        @handler("shop.Refund")
        def bill(event):
            pass
        """,
    )
    first_audit = importlib.import_module("audit.handlers")
    billing = importlib.import_module("billing.handlers")
    second_audit = import_fresh("audit.handlers")

    assert second_audit.on_refund is not first_audit.on_refund
    functions = HANDLER_REGISTRY[shop.Refund][3:]
    assert functions == [second_audit.on_refund, billing.bill]


def test_reimporting_a_module_does_not_double_its_handlers(shop, isolation):
    isolation.write(
        "audit/handlers.py",
        """
        from eventlib import handler

        @handler("shop.Refund")
        def on_refund(event):
            pass

        @handler("*")
        def everything(event):
            pass
        """,
    )
    importlib.import_module("audit.handlers")
    count = len(HANDLER_REGISTRY[shop.Refund])
    import_fresh("audit.handlers")
    audit = import_fresh("audit.handlers")

    assert len(HANDLER_REGISTRY[shop.Refund]) == count == 5
    assert HANDLER_REGISTRY[shop.Refund][-2:] == [audit.on_refund, audit.everything]


# ---------------------------------------------------------- the decorator ---


def test_named_handler_returns_the_function_unchanged(shop):
    def on_refund(event):
        return f"handled {event.name}"

    decorated = handler("shop.Refund")(on_refund)

    assert decorated is on_refund
    assert decorated(shop.Refund()) == "handled shop.Refund"
    assert HANDLER_REGISTRY[shop.Refund][-1] is on_refund


def test_bare_handler_returns_the_method_unchanged():
    class Holder:
        def method(self):
            return "called"

    original = Holder.method

    assert handler(original) is original
    assert Holder().method() == "called"


def test_method_handlers_can_still_be_called_directly(shop):
    event = shop.Refund({})
    shop.Refund.first(event)
    event.first()

    assert event.data == {"calls": ["first", "first"]}


@pytest.mark.parametrize("name", ["nodots", "app.", "a*b.C", "shop.Re*fund", "*.*", ".*", "1app.*"])
def test_malformed_names_and_patterns_are_refused(name):
    with pytest.raises(InvalidEventName):
        handler(name)


def test_invalid_event_name_is_a_value_error():
    with pytest.raises(ValueError):
        handler("nodots")


@pytest.mark.parametrize(
    "name", ["shop.Refund", "shop.orders.Refund", "shop.*", "shop.orders.*", "*"]
)
def test_well_formed_names_and_patterns_are_accepted(name):
    def on_event(event):
        pass

    assert handler(name)(on_event) is on_event


def test_bare_handler_on_a_module_level_function_is_refused(isolation):
    isolation.write(
        "audit/handlers.py",
        """
        from eventlib import handler

        @handler
        def on_refund(event):
            pass
        """,
    )
    with pytest.raises(TypeError, match=r"@handler\('app\.EventName'\)") as raised:
        importlib.import_module("audit.handlers")
    assert "audit.handlers.on_refund" in str(raised.value)


def test_bare_handler_on_a_nested_function_is_refused():
    def on_refund(event):
        pass

    with pytest.raises(TypeError, match=r"names its event"):
        handler(on_refund)


def test_handler_of_a_non_callable_non_string_is_refused():
    with pytest.raises(TypeError):
        handler(42)


def test_named_handler_refuses_a_non_callable():
    with pytest.raises(TypeError):
        handler("shop.Refund")(42)


# ------------------------------------------------------------- registry ---


def test_registry_is_a_read_only_mapping(shop):
    assert isinstance(HANDLER_REGISTRY, Mapping)
    assert not hasattr(HANDLER_REGISTRY, "__setitem__")
    assert not hasattr(HANDLER_REGISTRY, "__delitem__")
    with pytest.raises(TypeError):
        HANDLER_REGISTRY[shop.Refund] = []


def test_changing_a_returned_list_changes_nothing(shop):
    handlers = HANDLER_REGISTRY[shop.Refund]
    handlers.clear()
    handlers.append(print)

    assert HANDLER_REGISTRY[shop.Refund] == [
        shop.Refund.first,
        shop.Refund.second,
        shop.Refund.third,
    ]
    assert HANDLER_REGISTRY[shop.Refund] is not HANDLER_REGISTRY[shop.Refund]


def test_len_and_iteration_cover_declared_event_classes(isolation):
    before = set(HANDLER_REGISTRY)
    count = len(HANDLER_REGISTRY)
    isolation.write("shop/events.py", SHOP_EVENTS)
    shop = importlib.import_module("shop.events")

    assert len(HANDLER_REGISTRY) == count + 2
    assert set(HANDLER_REGISTRY) - before == {shop.Refund, shop.Quiet}
    assert shop.Refund in HANDLER_REGISTRY


def test_lookup_of_a_class_that_is_not_an_event_raises_key_error():
    class NotAnEvent:
        pass

    with pytest.raises(KeyError):
        HANDLER_REGISTRY[NotAnEvent]
    assert NotAnEvent not in HANDLER_REGISTRY
    assert HANDLER_REGISTRY.get(int) is None


def test_registry_is_exported_by_the_package():
    assert eventlib.HANDLER_REGISTRY is HANDLER_REGISTRY
    assert eventlib.handler is handler


# -------------------------------------------------------- retry options ---

RETRYING_EVENTS = """
    from eventlib import BaseEvent, handler

    class Plain(BaseEvent):
        @handler
        def bare(self):
            pass

        @handler()
        def called(self):
            pass

        @handler(retries=5, backoff=3.0)
        def both(self):
            pass

    class Refund(BaseEvent):
        retries = 3
        backoff = 1.5

        @handler
        def inherits(self):
            pass

        @handler(retries=5)
        def own_retries(self):
            pass

        @handler(backoff=0)
        def own_backoff(self):
            pass

    class PartialRefund(Refund):
        backoff = 4

    @handler("shop.Refund")
    def undeclared(event):
        pass

    @handler("shop.Refund", retries=1, backoff=0.5)
    def declared(event):
        pass

    @handler("*")
    def everywhere(event):
        pass
"""


@pytest.fixture
def retrying(isolation):
    isolation.write("shop/events.py", RETRYING_EVENTS)
    return importlib.import_module("shop.events")


def options(event_class, function) -> tuple:
    found = HANDLER_REGISTRY.options_of(event_class, function)
    return found.retries, found.backoff


def test_handlers_declare_no_retries_by_default(retrying):
    plain = retrying.Plain

    assert options(plain, plain.bare) == (0, 2.0)
    assert options(plain, plain.called) == (0, 2.0)
    assert options(plain, retrying.everywhere) == (0, 2.0)


def test_a_method_declares_its_retries(retrying):
    assert options(retrying.Plain, retrying.Plain.both) == (5, 3.0)


def test_a_function_declares_its_retries(retrying):
    assert options(retrying.Refund, retrying.declared) == (1, 0.5)


def test_the_event_class_gives_its_handlers_what_they_do_not_declare(retrying):
    refund = retrying.Refund

    assert options(refund, refund.inherits) == (3, 1.5)
    assert options(refund, refund.own_retries) == (5, 1.5)
    assert options(refund, refund.own_backoff) == (3, 0)
    assert options(refund, retrying.undeclared) == (3, 1.5)
    # A pattern handler takes the defaults of the event it handles.
    assert options(refund, retrying.everywhere) == (3, 1.5)
    assert options(retrying.Plain, retrying.everywhere) == (0, 2.0)


def test_a_subclass_inherits_and_overrides_the_class_defaults(retrying):
    partial, refund = retrying.PartialRefund, retrying.Refund

    assert options(partial, refund.inherits) == (3, 4)
    assert options(partial, refund.own_retries) == (5, 4)
    assert options(partial, retrying.everywhere) == (3, 4)


def test_options_are_stored_on_the_method_and_the_decorators_return_it_unchanged(retrying):
    both = retrying.Plain.both

    assert both.__eventlib_handler__ == HandlerOptions(retries=5, backoff=3.0)
    assert retrying.Plain.bare.__eventlib_handler__ == HandlerOptions()
    assert HANDLER_REGISTRY[retrying.Plain] == [
        retrying.Plain.bare,
        retrying.Plain.called,
        both,
        retrying.everywhere,
    ]
    assert retrying.declared.__name__ == "declared"
    assert not hasattr(retrying.declared, "__eventlib_handler__")


def test_one_function_may_have_other_options_for_another_event(retrying):
    def audit(event):
        pass

    handler("shop.Refund", retries=7)(audit)
    handler("shop.Plain")(audit)

    assert options(retrying.Refund, audit) == (7, 1.5)
    assert options(retrying.Plain, audit) == (0, 2.0)


def test_an_event_class_that_sets_its_options_to_none_keeps_the_defaults(isolation):
    isolation.write(
        "shop/events.py",
        """
        from eventlib import BaseEvent, handler

        class Refund(BaseEvent):
            retries = None
            backoff = None

            @handler
            def charge(self):
                pass
        """,
    )
    shop = importlib.import_module("shop.events")

    assert options(shop.Refund, shop.Refund.charge) == (0, 2.0)


def test_options_of_a_function_that_is_not_a_handler_of_the_event(retrying):
    with pytest.raises(KeyError, match=r"undeclared is not a handler of shop\.Plain"):
        HANDLER_REGISTRY.options_of(retrying.Plain, retrying.undeclared)


def test_find_handler_by_qualified_name(retrying):
    refund, partial = retrying.Refund, retrying.PartialRefund

    assert handler_name(refund.inherits) == "shop.events.Refund.inherits"
    assert HANDLER_REGISTRY.find_handler(refund, "shop.events.Refund.inherits") is refund.inherits
    assert HANDLER_REGISTRY.find_handler(refund, "shop.events.declared") is retrying.declared
    assert HANDLER_REGISTRY.find_handler(refund, "shop.events.everywhere") is retrying.everywhere
    # An inherited method keeps the name of the class that declares it.
    assert HANDLER_REGISTRY.find_handler(partial, "shop.events.Refund.inherits") is refund.inherits


def test_find_handler_that_does_not_exist(retrying):
    with pytest.raises(KeyError) as raised:
        HANDLER_REGISTRY.find_handler(retrying.Plain, "shop.events.declared")

    assert raised.value.args[0] == "the event shop.Plain has no handler named shop.events.declared"


@pytest.mark.parametrize(
    ("declared", "error", "message"),
    [
        ({"retries": -1}, ValueError, "retries must be 0 or more, not -1"),
        ({"retries": 2.5}, TypeError, "retries must be a whole number, not 2.5"),
        ({"retries": True}, TypeError, "retries must be a whole number, not True"),
        ({"retries": "3"}, TypeError, "retries must be a whole number, not '3'"),
        ({"backoff": -0.5}, ValueError, "backoff must be 0 or more, not -0.5"),
        ({"backoff": float("nan")}, ValueError, "backoff must be 0 or more, not nan"),
        ({"backoff": "2"}, TypeError, "backoff must be a number of seconds, not '2'"),
    ],
)
def test_bad_options_are_refused_where_they_are_declared(isolation, declared, error, message):
    with pytest.raises(error, match=f"^@handler: {message}$"):
        handler(**declared)
    with pytest.raises(error, match=f"^@handler: {message}$"):
        handler("shop.Refund", **declared)
    body = "\n".join(f"    {name} = {value!r}" for name, value in declared.items())
    body = body.replace("nan", "float('nan')")
    isolation.write(
        "shop/events.py", f"from eventlib import BaseEvent\n\nclass Bad(BaseEvent):\n{body}\n"
    )
    with pytest.raises(error, match=f"^the event shop\\.Bad: {message}$"):
        importlib.import_module("shop.events")


def test_handler_with_options_refuses_a_module_level_function(isolation):
    isolation.write(
        "audit/handlers.py",
        """
        from eventlib import handler

        @handler(retries=2)
        def on_refund(event):
            pass
        """,
    )
    with pytest.raises(TypeError, match=r"@handler\('app\.EventName'\)"):
        importlib.import_module("audit.handlers")


def test_the_delay_grows_as_backoff_to_the_power_of_the_retry_with_jitter():
    options = HandlerOptions(backoff=2.0)

    for retry, base in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0)]:
        delays = [options.delay(retry) for _ in range(200)]
        assert all(0.5 * base <= delay <= 1.5 * base for delay in delays), (retry, delays)
        assert max(delays) - min(delays) > 0.1 * base  # not the same every time


def test_the_delay_never_exceeds_the_maximum_even_for_huge_retries():
    # Past the maximum, the jitter still spreads retries over its upper half.
    for options, retry in [
        (HandlerOptions(backoff=2.0), 12),
        (HandlerOptions(backoff=2.0), 5000),
        (HandlerOptions(backoff=10**400), 1),
    ]:
        delays = [options.delay(retry) for _ in range(200)]
        assert all(MAX_RETRY_DELAY / 2 <= delay <= MAX_RETRY_DELAY for delay in delays)
        assert max(delays) == MAX_RETRY_DELAY
        assert min(delays) < MAX_RETRY_DELAY * 0.9


def test_a_zero_backoff_retries_at_once():
    assert HandlerOptions(backoff=0).delay(1) == 0
    assert HandlerOptions(backoff=0).delay(9) == 0


def test_the_default_backoff_is_two_seconds():
    delays = [HandlerOptions().delay(1) for _ in range(100)]
    assert all(1.0 <= delay <= 3.0 for delay in delays)
