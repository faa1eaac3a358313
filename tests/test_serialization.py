"""Tests for eventlib.serialization: JSON with tagged values, and event envelopes."""

from __future__ import annotations

import enum
import json
import sys
import textwrap
from collections import OrderedDict
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from uuid import UUID

import pytest

from eventlib import (
    BaseEvent,
    DeserializationError,
    EventlibError,
    SerializationError,
    serialization,
)
from eventlib.serialization import (
    Envelope,
    deserialize_event,
    dumps,
    loads,
    register_type,
    serialize_event,
)

TAG = "__eventlib__"


# ------------------------------------------------------------- helpers ---


class Foo:
    """Nothing eventlib knows how to serialize."""


class Money:
    def __init__(self, amount, currency):
        self.amount = amount
        self.currency = currency

    def __eq__(self, other):
        return (
            type(other) is Money
            and (self.amount, self.currency) == (other.amount, other.currency)
            and str(self.amount) == str(other.amount)
        )

    __hash__ = None


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)

    __hash__ = None


class Outer:
    class Inner:
        pass


def assert_identical(actual, expected):
    """Same type and value all the way down; Decimals keep their exponent
    and aware datetimes/times keep their UTC offset."""
    assert type(actual) is type(expected), f"{actual!r} is not a {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_identical(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for actual_item, expected_item in zip(actual, expected, strict=True):
            assert_identical(actual_item, expected_item)
    elif isinstance(expected, Decimal):
        assert str(actual) == str(expected)
    elif isinstance(expected, (datetime, time)):
        assert actual == expected
        assert (actual.tzinfo is None) == (expected.tzinfo is None)
        assert actual.utcoffset() == expected.utcoffset()
    else:
        assert actual == expected


def via_dumps(value):
    return loads(dumps(value))


def via_event(value):
    envelope = deserialize_event(serialize_event(BaseEvent({"value": value})))
    return envelope.data["value"]


ROUTES = [pytest.param(via_dumps, id="dumps-loads"), pytest.param(via_event, id="event")]

EXTRA_TYPED_VALUES = [
    pytest.param(datetime(2024, 2, 29, 13, 45, 30, 123456), id="naive-datetime"),
    pytest.param(datetime(2024, 2, 29, 13, 45, tzinfo=UTC), id="utc-datetime"),
    pytest.param(
        datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        id="plus-0530-datetime",
    ),
    pytest.param(
        datetime(2001, 1, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
        id="minus-0330-datetime",
    ),
    pytest.param(date(2024, 2, 29), id="date"),
    pytest.param(date(1, 1, 1), id="min-date"),
    pytest.param(time(8, 15, 30, 250), id="naive-time"),
    pytest.param(time(23, 59, tzinfo=timezone(timedelta(hours=2))), id="plus-02-time"),
    pytest.param(time(0, 0, tzinfo=UTC), id="utc-time"),
    pytest.param(Decimal("1.10"), id="decimal-1.10"),
    pytest.param(Decimal("-0.00"), id="decimal-negative-zero"),
    pytest.param(Decimal("12345678901234567890.123456789012"), id="decimal-long"),
    pytest.param(Decimal("1E+3"), id="decimal-exponent"),
    pytest.param(Decimal("Infinity"), id="decimal-infinity"),
    pytest.param(Decimal("NaN"), id="decimal-nan"),
    pytest.param(UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
]


# ------------------------------------------------------ built-in types ---


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("value", EXTRA_TYPED_VALUES)
def test_builtin_type_round_trips(route, value):
    assert_identical(route(value), value)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("value", EXTRA_TYPED_VALUES)
def test_builtin_type_round_trips_nested_in_dicts_and_lists(route, value):
    structure = {"outer": {"value": value, "items": [1, value, [value, {"deep": value}]]}}
    assert_identical(route(structure), structure)


def test_decimal_precision_is_kept_in_the_json_text():
    assert str(loads(dumps({"price": Decimal("1.10")}))["price"]) == "1.10"
    assert "1.10" in dumps(Decimal("1.10"))


def test_aware_datetime_keeps_its_offset_not_just_the_instant():
    """Equality of aware datetimes ignores the offset, so check it apart."""
    paris_summer = timezone(timedelta(hours=2))
    value = datetime(2024, 7, 14, 12, 0, tzinfo=paris_summer)
    result = loads(dumps(value))
    assert result.utcoffset() == timedelta(hours=2)
    assert result.isoformat() == "2024-07-14T12:00:00+02:00"


def test_date_does_not_come_back_as_datetime_and_vice_versa():
    result = loads(dumps([date(2024, 1, 2), datetime(2024, 1, 2, 3, 4)]))
    assert type(result[0]) is date
    assert type(result[1]) is datetime


def test_naive_datetime_stays_naive():
    assert loads(dumps(datetime(2024, 1, 2, 3, 4))).tzinfo is None


def test_subclass_of_builtin_type_comes_back_as_the_builtin_type():
    class MyDate(date):
        pass

    result = loads(dumps(MyDate(2024, 5, 6)))
    assert type(result) is date
    assert result == date(2024, 5, 6)


# ---------------------------------------------------------- plain JSON ---


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "unicode: é ü 中文 \u2028 emoji 🎉",
        "",
        0,
        -17,
        2**100,
        1.5,
        -0.0,
        True,
        False,
        None,
        [],
        {},
        {"a": [1, "two", None, {"b": False}]},
    ],
)
@pytest.mark.parametrize("route", ROUTES)
def test_plain_json_values_pass_through(route, value):
    assert_identical(route(value), value)


def test_plain_values_are_written_without_tags():
    value = {"a": [1, 2.5, "x", True, None]}
    assert json.loads(dumps(value)) == value


def test_bool_is_not_turned_into_int():
    assert loads(dumps([True, False])) == [True, False]
    assert all(type(item) is bool for item in loads(dumps([True, False])))


@pytest.mark.parametrize("route", ROUTES)
def test_tuple_comes_back_as_list(route):
    assert_identical(route((1, "a", None)), [1, "a", None])


@pytest.mark.parametrize("route", ROUTES)
def test_nested_structures_survive(route):
    uid = UUID(int=7)
    value = {
        "tuple": (1, (2, (3, Decimal("4.0")))),
        "list": [{"a": [date(2020, 1, 1), {"b": ({"c": uid},)}]}],
        "empty": {"list": [], "dict": {}, "tuple": ()},
    }
    expected = {
        "tuple": [1, [2, [3, Decimal("4.0")]]],
        "list": [{"a": [date(2020, 1, 1), {"b": [{"c": uid}]}]}],
        "empty": {"list": [], "dict": {}, "tuple": []},
    }
    assert_identical(route(value), expected)


def test_other_mappings_come_back_as_dicts():
    value = {"ordered": OrderedDict([("b", 1), ("a", 2)]), "proxy": MappingProxyType({"x": 1})}
    assert_identical(loads(dumps(value)), {"ordered": {"b": 1, "a": 2}, "proxy": {"x": 1}})


def test_dumps_returns_compact_unescaped_text():
    assert dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'


def test_loads_accepts_bytes():
    assert loads(dumps({"d": Decimal("2.50")}).encode()) == {"d": Decimal("2.50")}


# -------------------------------------------------------------- enums ---


class Colour(enum.StrEnum):
    RED = "red"


class MixedColour(str, enum.Enum):  # noqa: UP042 (the mix-in is what is tested)
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class MixedLevel(int, enum.Enum):
    HIGH = 3


class Permission(enum.IntFlag):
    READ = 1
    WRITE = 2


class Ratio(float, enum.Enum):
    HALF = 0.5


class Plain(enum.Enum):
    ONE = 1


@pytest.mark.parametrize(
    ("member", "plain"),
    [
        pytest.param(Colour.RED, "red", id="StrEnum"),
        pytest.param(MixedColour.RED, "red", id="str-Enum-mixin"),
        pytest.param(Level.HIGH, 3, id="IntEnum"),
        pytest.param(MixedLevel.HIGH, 3, id="int-Enum-mixin"),
        pytest.param(Permission.READ | Permission.WRITE, 3, id="IntFlag"),
        pytest.param(Ratio.HALF, 0.5, id="float-Enum-mixin"),
    ],
)
def test_enum_of_plain_type_serializes_as_its_plain_value(member, plain):
    assert json.loads(dumps({"member": member})) == {"member": plain}
    result = loads(dumps({"member": member}))["member"]
    assert type(result) is type(plain)
    assert result == plain


def test_enum_without_plain_type_cannot_be_serialized():
    with pytest.raises(SerializationError) as excinfo:
        dumps({"p": Plain.ONE})
    assert str(excinfo.value) == "data['p']: cannot serialize object of type Plain"


def test_registered_codec_wins_over_plain_base_type():
    register_type(Colour, encode=lambda c: c.value, decode=Colour, tag="test.colour-codec")
    result = loads(dumps([Colour.RED]))
    assert result == [Colour.RED]
    assert type(result[0]) is Colour


# -------------------------------------------------- serialization errors ---


def test_unserializable_value_message_names_the_path_and_type():
    with pytest.raises(SerializationError) as excinfo:
        dumps({"user": {"joined": Foo()}})
    assert str(excinfo.value) == "data['user']['joined']: cannot serialize object of type Foo"


def test_serialization_error_is_a_type_error_and_an_eventlib_error():
    with pytest.raises(TypeError) as excinfo:
        dumps({"user": {"joined": Foo()}})
    assert isinstance(excinfo.value, SerializationError)
    assert isinstance(excinfo.value, EventlibError)


def test_list_indexes_appear_in_the_path():
    with pytest.raises(SerializationError) as excinfo:
        dumps({"items": [1, Foo()]})
    assert str(excinfo.value) == "data['items'][1]: cannot serialize object of type Foo"


def test_tuple_and_nested_list_indexes_appear_in_the_path():
    with pytest.raises(SerializationError) as excinfo:
        dumps({"rows": ([0], [1, {"cell": [None, None, Foo()]}])})
    assert str(excinfo.value) == (
        "data['rows'][1][1]['cell'][2]: cannot serialize object of type Foo"
    )


def test_top_level_unserializable_value_path_is_data():
    with pytest.raises(SerializationError) as excinfo:
        dumps(Foo())
    assert str(excinfo.value) == "data: cannot serialize object of type Foo"


def test_nested_class_is_named_by_its_qualified_name():
    with pytest.raises(SerializationError) as excinfo:
        dumps({"x": Outer.Inner()})
    assert str(excinfo.value) == "data['x']: cannot serialize object of type Outer.Inner"


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", object(), 1 + 2j, frozenset()])
def test_other_python_values_are_refused(value):
    with pytest.raises(SerializationError, match=r"^data\['v'\]: cannot serialize object of type"):
        dumps({"v": value})


def test_serialize_event_reports_the_same_path():
    event = BaseEvent({"user": {"joined": Foo()}})
    with pytest.raises(SerializationError) as excinfo:
        serialize_event(event)
    assert str(excinfo.value) == "data['user']['joined']: cannot serialize object of type Foo"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({1: "a"}, "data: keys must be strings, not int (1)", id="int"),
        pytest.param({"a": {None: 1}}, "data['a']: keys must be strings, not NoneType (None)"),
        pytest.param(
            {"a": [{"ok": 1}, {(1, 2): 1}]},
            "data['a'][1]: keys must be strings, not tuple ((1, 2))",
            id="tuple-in-list",
        ),
        pytest.param({True: 1}, "data: keys must be strings, not bool (True)", id="bool"),
        pytest.param({1.5: 1}, "data: keys must be strings, not float (1.5)", id="float"),
    ],
)
def test_non_string_dict_keys_are_refused(data, message):
    with pytest.raises(SerializationError) as excinfo:
        dumps(data)
    assert str(excinfo.value) == message


def test_non_string_key_in_other_mapping_is_refused():
    with pytest.raises(SerializationError, match=r"^data\['m'\]: keys must be strings, not int"):
        dumps({"m": OrderedDict([(1, "a")])})


@pytest.mark.parametrize(
    ("value", "shown"),
    [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")],
)
def test_non_finite_floats_are_refused(value, shown):
    with pytest.raises(SerializationError) as excinfo:
        dumps({"ratio": [0.5, value]})
    assert str(excinfo.value) == (
        f"data['ratio'][1]: cannot serialize the float {shown} (JSON has none)"
    )


def test_non_finite_float_subclass_is_refused():
    class MyFloat(float):
        pass

    with pytest.raises(SerializationError, match=r"^data\['x'\]: cannot serialize the float"):
        dumps({"x": MyFloat("nan")})


# ---------------------------------------------------------- user types ---


def test_register_type_with_function_pair_round_trips():
    result = register_type(
        Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="test.point-pair"
    )
    assert result is Point
    assert_identical(loads(dumps({"p": [Point(1, 2)]})), {"p": [Point(1, 2)]})


def test_register_type_default_tag_is_module_and_qualified_name():
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v))
    assert json.loads(dumps(Point(1, 2))) == {
        TAG: f"{Point.__module__}.Point",
        "value": [1, 2],
    }
    register_type(Outer.Inner, encode=lambda _: None, decode=lambda _: Outer.Inner())
    assert json.loads(dumps(Outer.Inner()))[TAG] == f"{Outer.__module__}.Outer.Inner"


def test_register_type_custom_tag_is_written_and_read():
    register_type(
        Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="geo.point.v1"
    )
    assert json.loads(dumps(Point(3, 4))) == {TAG: "geo.point.v1", "value": [3, 4]}
    assert loads('{"__eventlib__":"geo.point.v1","value":[5,6]}') == Point(5, 6)


def test_register_type_as_bare_decorator():
    @register_type
    class Temperature:
        def __init__(self, celsius):
            self.celsius = celsius

        def to_json(self):
            return {"celsius": self.celsius}

        @classmethod
        def from_json(cls, value):
            return cls(value["celsius"])

    assert isinstance(Temperature, type)  # the decorator returns the class
    result = via_event(Temperature(21.5))
    assert type(result) is Temperature
    assert result.celsius == 21.5


def test_register_type_as_decorator_with_tag():
    @register_type(tag="test.decorated-with-tag")
    class Flag:
        def __init__(self, on):
            self.on = on

        def to_json(self):
            return self.on

        @classmethod
        def from_json(cls, value):
            return cls(value)

    assert isinstance(Flag, type)
    text = dumps([Flag(True)])
    assert json.loads(text) == [{TAG: "test.decorated-with-tag", "value": True}]
    result = loads(text)[0]
    assert type(result) is Flag
    assert result.on is True


def test_encoded_value_may_contain_registered_and_builtin_types():
    """decode receives the value after its own decoding."""
    received = []

    def decode_money(value):
        received.append(value)
        return Money(value["amount"], value["currency"])

    register_type(
        Money,
        encode=lambda m: {"amount": m.amount, "currency": m.currency},
        decode=decode_money,
        tag="test.money-nested",
    )
    register_type(
        Point,
        encode=lambda p: {"at": p.x, "price": p.y},
        decode=lambda v: Point(v["at"], v["price"]),
        tag="test.point-holding-money",
    )
    value = Point(datetime(2024, 1, 1, tzinfo=UTC), Money(Decimal("9.90"), "EUR"))

    result = loads(dumps({"quote": value}))["quote"]

    assert type(result) is Point
    assert_identical(result.x, datetime(2024, 1, 1, tzinfo=UTC))
    assert result.y == Money(Decimal("9.90"), "EUR")
    assert_identical(received, [{"amount": Decimal("9.90"), "currency": "EUR"}])


def test_unserializable_value_inside_encoded_value_names_the_path():
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="test.bad")
    with pytest.raises(SerializationError) as excinfo:
        dumps({"p": Point(1, Foo())})
    assert str(excinfo.value) == "data['p'][1]: cannot serialize object of type Foo"


def test_subclass_of_registered_type_uses_parent_codec():
    class Euro(Money):
        def __init__(self, amount):
            super().__init__(amount, "EUR")

    register_type(
        Money,
        encode=lambda m: [m.amount, m.currency],
        decode=lambda v: Money(*v),
        tag="test.money-parent",
    )
    text = dumps({"price": Euro(Decimal("3.00"))})
    assert json.loads(text)["price"][TAG] == "test.money-parent"
    result = loads(text)["price"]
    assert type(result) is Money
    assert result == Money(Decimal("3.00"), "EUR")


def test_most_specific_registered_class_wins():
    class Euro(Money):
        def __init__(self, amount):
            super().__init__(amount, "EUR")

    register_type(
        Money, encode=lambda m: [m.amount, m.currency], decode=lambda v: Money(*v), tag="test.m"
    )
    register_type(Euro, encode=lambda e: e.amount, decode=Euro, tag="test.euro")
    result = loads(dumps([Euro(Decimal("1")), Money(Decimal("2"), "USD")]))
    assert type(result[0]) is Euro
    assert type(result[1]) is Money


def test_registering_a_type_after_a_failed_attempt_takes_effect():
    """The lookup cache must not remember that the type had no codec."""
    with pytest.raises(SerializationError):
        dumps(Point(1, 2))
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="test.late")
    assert loads(dumps(Point(1, 2))) == Point(1, 2)


def test_registering_parent_after_subclass_was_looked_up_takes_effect():
    class Euro(Money):
        pass

    with pytest.raises(SerializationError):
        dumps(Euro(Decimal("1"), "EUR"))
    register_type(
        Money, encode=lambda m: [m.amount, m.currency], decode=lambda v: Money(*v), tag="test.p"
    )
    assert loads(dumps(Euro(Decimal("1"), "EUR"))) == Money(Decimal("1"), "EUR")


def test_registering_same_tag_again_replaces_the_earlier_pair():
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="test.same")
    register_type(
        Money, encode=lambda m: [m.amount, m.currency], decode=lambda v: Money(*v), tag="test.same"
    )
    assert loads('{"__eventlib__":"test.same","value":["1.5","GBP"]}') == Money("1.5", "GBP")
    with pytest.raises(SerializationError, match="cannot serialize object of type Point"):
        dumps(Point(1, 2))


def test_registering_same_type_again_with_new_tag_writes_the_new_tag():
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="test.v1")
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="test.v2")
    assert json.loads(dumps(Point(1, 2)))[TAG] == "test.v2"
    assert loads('{"__eventlib__":"test.v1","value":[1,2]}') == Point(1, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"encode": lambda p: p}, id="encode-only"),
        pytest.param({"decode": lambda v: v}, id="decode-only"),
        pytest.param({"encode": lambda p: p, "tag": "test.half"}, id="encode-only-with-tag"),
    ],
)
def test_incomplete_pair_raises_type_error(kwargs):
    with pytest.raises(TypeError, match="takes both encode= and decode=, or neither"):
        register_type(Point, **kwargs)
    with pytest.raises(SerializationError):
        dumps(Point(1, 2))


def test_class_without_to_json_and_from_json_raises_type_error():
    with pytest.raises(TypeError, match=r"register_type\(Point\) needs encode= and decode="):
        register_type(Point)


def test_class_with_only_to_json_raises_type_error():
    class HalfDone:
        def to_json(self):
            return 1

    with pytest.raises(TypeError, match="needs encode= and decode="):
        register_type(HalfDone)


def test_decorator_with_arguments_on_incomplete_class_raises_type_error():
    with pytest.raises(TypeError, match="needs encode= and decode="):

        @register_type(tag="test.incomplete")
        class Incomplete:
            pass


def test_register_type_refuses_a_non_class():
    with pytest.raises(TypeError, match=r"register_type\(\) takes a class"):
        register_type(Point(1, 2), encode=lambda p: p, decode=lambda v: v)


@pytest.mark.parametrize("tag", ["datetime", "date", "time", "decimal", "uuid", "dict"])
def test_reserved_tags_raise_value_error_and_change_nothing(tag):
    before = serialization._codecs._snapshot()
    with pytest.raises(ValueError, match=f"the tag '{tag}' is reserved"):
        register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag=tag)
    assert serialization._codecs._snapshot() == before
    structure = {
        "dt": datetime(2024, 1, 1, 1, 1),
        "d": date(2024, 1, 1),
        "t": time(1, 1),
        "dec": Decimal("0.10"),
        "u": UUID(int=1),
        "escaped": {TAG: "x"},
    }
    assert_identical(loads(dumps(structure)), structure)


# ------------------------------------------------------------ security ---

EVIL_MODULE = "eventlib_serialization_test_evil"
EVIL_SOURCE = textwrap.dedent(
    """
    import pathlib

    _here = pathlib.Path(__file__).parent
    (_here / "imported").touch()


    def boom(value):
        (_here / "called").touch()


    class Gadget:
        def __init__(self, *args):
            (_here / "called").touch()

        def to_json(self):
            return None

        @classmethod
        def from_json(cls, value):
            (_here / "called").touch()
    """
)


@pytest.mark.parametrize(
    "tag",
    [
        f"{EVIL_MODULE}.boom",
        f"{EVIL_MODULE}.Gadget",
        f"{EVIL_MODULE}:Gadget",
        EVIL_MODULE,
    ],
)
def test_unknown_tag_imports_and_calls_nothing(tag, tmp_path, monkeypatch):
    (tmp_path / f"{EVIL_MODULE}.py").write_text(EVIL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, EVIL_MODULE, raising=False)

    with pytest.raises(DeserializationError, match="unknown tagged value"):
        loads(json.dumps({"data": {TAG: tag, "value": "x"}}))

    assert EVIL_MODULE not in sys.modules
    assert not (tmp_path / "imported").exists()
    assert not (tmp_path / "called").exists()


def test_os_system_tag_is_refused_and_runs_nothing(capfd):
    payload = '{"__eventlib__": "os.system", "value": "echo eventlib-was-here"}'
    with pytest.raises(DeserializationError) as excinfo:
        loads(payload)
    assert "unknown tagged value" in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert "eventlib-was-here" not in capfd.readouterr().out


@pytest.mark.parametrize("tag", ["builtins.eval", "subprocess.run", "Decimal", "UUID", ""])
def test_unregistered_tag_names_are_refused(tag):
    with pytest.raises(DeserializationError, match="unknown tagged value"):
        loads(json.dumps([{TAG: tag, "value": "1"}]))


@pytest.mark.parametrize("tag", [None, 1, ["uuid"], {"uuid": 1}, True])
def test_non_string_tag_is_refused(tag):
    with pytest.raises(DeserializationError, match="unknown tagged value"):
        loads(json.dumps({TAG: tag, "value": "12345678-1234-5678-1234-567812345678"}))


def test_unknown_tag_deep_inside_a_payload_is_refused():
    with pytest.raises(DeserializationError, match="unknown tagged value"):
        loads('{"a": [1, {"b": {"__eventlib__": "nope", "value": null}}]}')


def test_unknown_tag_in_event_payload_is_refused():
    payload = json.dumps(
        {
            "id": "1",
            "created_at": "2024-01-01T00:00:00+00:00",
            "data": {"x": {TAG: "os.system", "value": "echo hi"}},
        }
    )
    with pytest.raises(DeserializationError, match="unknown tagged value"):
        deserialize_event(payload)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(
            {TAG: "uuid", "value": "12345678-1234-5678-1234-567812345678", "extra": 1},
            id="extra-key",
        ),
        pytest.param({TAG: "uuid"}, id="missing-value"),
        pytest.param(
            {TAG: "uuid", "VALUE": "12345678-1234-5678-1234-567812345678"}, id="wrong-value-key"
        ),
    ],
)
def test_tagged_object_with_other_keys_is_refused(obj):
    with pytest.raises(DeserializationError, match="unknown tagged value"):
        loads(json.dumps(obj))


def test_tagged_object_with_extra_keys_is_refused_for_user_types_too():
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="test.x")
    with pytest.raises(DeserializationError):
        loads('{"__eventlib__": "test.x", "value": [1, 2], "__class__": "os.system"}')


def test_decoder_that_raises_is_wrapped():
    error = RuntimeError("boom")

    def decode(value):
        raise error

    register_type(Point, encode=lambda p: [p.x, p.y], decode=decode, tag="test.failing")
    with pytest.raises(DeserializationError) as excinfo:
        loads(dumps({"p": Point(1, 2)}))
    assert str(excinfo.value) == "the decoder of 'test.failing' failed on [1, 2]: boom"
    assert excinfo.value.__cause__ is error


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({TAG: "datetime", "value": "not a date"}, id="datetime-bad-text"),
        pytest.param({TAG: "datetime", "value": 12}, id="datetime-int"),
        pytest.param({TAG: "date", "value": "2024-02-30"}, id="date-out-of-range"),
        pytest.param({TAG: "time", "value": "25:00"}, id="time-bad"),
        pytest.param({TAG: "decimal", "value": "one"}, id="decimal-bad"),
        pytest.param({TAG: "decimal", "value": [1]}, id="decimal-list"),
        pytest.param({TAG: "uuid", "value": "nope"}, id="uuid-bad"),
        pytest.param({TAG: "uuid", "value": None}, id="uuid-null"),
        pytest.param({TAG: "dict", "value": "abc"}, id="dict-string"),
        pytest.param({TAG: "dict", "value": [["a", "b", "c"]]}, id="dict-triple"),
        pytest.param({TAG: "dict", "value": 5}, id="dict-int"),
    ],
)
def test_builtin_decoder_failure_is_a_deserialization_error(obj):
    with pytest.raises(DeserializationError, match=f"^the decoder of '{obj[TAG]}' failed on "):
        loads(json.dumps({"v": obj}))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("{", id="unterminated"),
        pytest.param("{'a': 1}", id="single-quotes"),
        pytest.param('{"a": 1,}', id="trailing-comma"),
        pytest.param("[1] [2]", id="extra-data"),
        pytest.param(b"\xff\xfe\xfa", id="bad-bytes"),
    ],
)
def test_invalid_json_raises_deserialization_error(text):
    with pytest.raises(DeserializationError, match=r"^invalid JSON payload: ") as excinfo:
        loads(text)
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, EventlibError)


def test_deeply_nested_invalid_json_raises_deserialization_error():
    """A malformed message must not crash a worker with RecursionError."""
    with pytest.raises(DeserializationError):
        loads("[" * 100_000)


# ------------------------------------------------- escaping the tag key ---


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({TAG: "os.system", "value": "echo hi"}, id="looks-dangerous"),
        pytest.param({TAG: "uuid", "value": "12345678-1234-5678-1234-567812345678"}, id="uuid"),
        pytest.param({TAG: "dict", "value": [["a", 1]]}, id="looks-escaped"),
        pytest.param({TAG: None}, id="tag-only"),
        pytest.param({"a": 1, TAG: 2, "z": [3]}, id="other-keys"),
        pytest.param({TAG: {TAG: {TAG: "deep"}}}, id="nested"),
        pytest.param({"list": [{TAG: "x", "value": 1}]}, id="in-list"),
        pytest.param({TAG: "x", "when": date(2024, 1, 1), "id": UUID(int=3)}, id="holding-tags"),
    ],
)
@pytest.mark.parametrize("route", ROUTES)
def test_user_dict_with_the_tag_key_round_trips_unchanged(route, value):
    assert_identical(route(value), value)


def test_user_dict_with_the_tag_key_is_not_written_as_is():
    value = {TAG: "uuid", "value": "12345678-1234-5678-1234-567812345678"}
    assert json.loads(dumps(value)) != value


def test_tag_key_inside_a_registered_types_encoded_value_round_trips():
    register_type(
        Point,
        encode=lambda p: {TAG: p.x, "value": p.y},
        decode=lambda v: Point(v[TAG], v["value"]),
        tag="test.point-with-tag-key",
    )
    assert loads(dumps([Point("os.system", "echo hi")])) == [Point("os.system", "echo hi")]


# ------------------------------------------------------ event envelopes ---


def test_event_round_trips_id_created_at_and_data():
    created_at = datetime(2024, 3, 1, 9, 30, 15, 42, tzinfo=UTC)
    event = BaseEvent(
        {"amount": Decimal("1.10"), "at": date(2024, 3, 1), "tags": ("a", "b")},
        id="evt-1",
        created_at=created_at,
    )

    envelope = deserialize_event(serialize_event(event))

    assert isinstance(envelope, Envelope)
    assert envelope.id == "evt-1"
    assert_identical(envelope.created_at, created_at)
    assert_identical(
        envelope.data, {"amount": Decimal("1.10"), "at": date(2024, 3, 1), "tags": ["a", "b"]}
    )


def test_event_with_default_id_and_created_at_round_trips():
    event = BaseEvent({})
    envelope = deserialize_event(serialize_event(event))
    assert envelope == Envelope(event.id, event.created_at, {})
    assert envelope.created_at.utcoffset() == timedelta(0)


def test_event_created_at_keeps_a_non_utc_offset():
    created_at = datetime(2024, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    envelope = deserialize_event(serialize_event(BaseEvent({}, created_at=created_at)))
    assert_identical(envelope.created_at, created_at)


def test_serialize_event_writes_the_envelope_as_json():
    event = BaseEvent({"n": 1}, id="abc", created_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert json.loads(serialize_event(event)) == {
        "id": "abc",
        "created_at": "2024-01-01T00:00:00+00:00",
        "data": {"n": 1},
    }


def test_deserialize_event_accepts_bytes():
    event = BaseEvent({"u": UUID(int=9)}, id="b")
    envelope = deserialize_event(serialize_event(event).encode())
    assert envelope.data == {"u": UUID(int=9)}


GOOD_ENVELOPE = {"id": "1", "created_at": "2024-01-01T00:00:00+00:00", "data": {}}


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param([], id="list"),
        pytest.param("text", id="string"),
        pytest.param(None, id="null"),
        pytest.param(3, id="number"),
        pytest.param({}, id="empty-object"),
        pytest.param({"created_at": "2024-01-01T00:00:00+00:00", "data": {}}, id="missing-id"),
        pytest.param({"id": "1", "data": {}}, id="missing-created-at"),
        pytest.param({"id": "1", "created_at": "2024-01-01T00:00:00+00:00"}, id="missing-data"),
        pytest.param({**GOOD_ENVELOPE, "id": 1}, id="int-id"),
        pytest.param({**GOOD_ENVELOPE, "id": None}, id="null-id"),
        pytest.param({**GOOD_ENVELOPE, "created_at": 1704067200}, id="int-created-at"),
        pytest.param({**GOOD_ENVELOPE, "data": []}, id="list-data"),
        pytest.param({**GOOD_ENVELOPE, "data": "x"}, id="string-data"),
        pytest.param({**GOOD_ENVELOPE, "data": None}, id="null-data"),
        pytest.param({TAG: "uuid", "value": str(UUID(int=1))}, id="tagged-value"),
    ],
)
def test_deserialize_event_refuses_what_is_not_an_envelope(envelope):
    with pytest.raises(DeserializationError, match=r"^not an eventlib payload: "):
        deserialize_event(json.dumps(envelope))


def test_deserialize_event_refuses_a_tagged_created_at():
    payload = json.dumps(
        {**GOOD_ENVELOPE, "created_at": {TAG: "datetime", "value": "2024-01-01T00:00:00"}}
    )
    with pytest.raises(DeserializationError, match=r"^not an eventlib payload: "):
        deserialize_event(payload)


@pytest.mark.parametrize("created_at", ["yesterday", "", "2024-13-01T00:00:00"])
def test_deserialize_event_refuses_an_invalid_created_at(created_at):
    with pytest.raises(DeserializationError, match=r"^invalid created_at in payload: "):
        deserialize_event(json.dumps({**GOOD_ENVELOPE, "created_at": created_at}))


def test_deserialize_event_refuses_invalid_json():
    with pytest.raises(DeserializationError, match=r"^invalid JSON payload: "):
        deserialize_event('{"id": "1", ')


def test_deserialize_event_accepts_an_escaped_user_dict_as_data():
    data = {TAG: "os.system", "value": "echo hi"}
    envelope = deserialize_event(serialize_event(BaseEvent(data)))
    assert envelope.data == data


# ---------------------------------------------------- lone surrogates ---


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param({"name": "\ud800"}, "data['name']", id="value"),
        pytest.param({"a": {"b": ["ok", "x\udfff"]}}, "data['a']['b'][1]", id="nested-in-list"),
        pytest.param({"t": ("\udc80",)}, "data['t'][0]", id="in-tuple"),
    ],
)
def test_a_string_with_a_lone_surrogate_is_refused_naming_its_path(data, path):
    """Valid in Python and in JSON, but with no UTF-8 form: the spool could
    not keep it, so neither may the broker get it."""
    with pytest.raises(SerializationError, match=r"lone surrogate") as excinfo:
        dumps(data)
    assert str(excinfo.value).startswith(f"{path}: cannot serialize a string holding")


def test_the_lone_surrogate_message_says_which_character_and_where():
    with pytest.raises(SerializationError) as excinfo:
        dumps({"name": "Ana\ud800 Lima"})
    assert str(excinfo.value) == (
        "data['name']: cannot serialize a string holding a lone surrogate "
        "('\\ud800' at index 3), which has no UTF-8 form"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"\ud800": 1},
            "data: cannot serialize the key '\\ud800' holding a lone surrogate "
            "('\\ud800' at index 0), which has no UTF-8 form",
            id="top-level",
        ),
        pytest.param(
            {"a": [{"ok\udbff": 1}]},
            "data['a'][0]: cannot serialize the key 'ok\\udbff' holding a lone surrogate "
            "('\\udbff' at index 2), which has no UTF-8 form",
            id="nested",
        ),
    ],
)
def test_a_key_with_a_lone_surrogate_is_refused_naming_its_path(data, message):
    with pytest.raises(SerializationError) as excinfo:
        dumps(data)
    assert str(excinfo.value) == message


def test_a_str_subclass_with_a_lone_surrogate_is_refused():
    class Label(enum.StrEnum):
        BROKEN = "\ud800"

    with pytest.raises(SerializationError, match=r"^data\['label'\]: .* lone surrogate"):
        dumps({"label": Label.BROKEN})


def test_a_lone_surrogate_in_a_registered_types_encoded_value_is_refused():
    register_type(Point, encode=lambda p: [p.x, p.y], decode=lambda v: Point(*v), tag="t.pt")
    with pytest.raises(SerializationError, match=r"^data\['p'\]\[0\]: .* lone surrogate"):
        dumps({"p": Point("\ud800", 1)})


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "text",
    ["caf\u00e9", "\u65e5\u672c", "\U0001f600", "\ufffd", "\uffff", "\ud7ff\ue000"],
    ids=["latin", "cjk", "emoji", "replacement", "noncharacter", "around-surrogates"],
)
def test_every_other_non_ascii_string_passes(route, text):
    assert route({text: text}) == {text: text}


def test_serialize_event_notes_the_event_of_a_serialization_error():
    class Signup(BaseEvent):
        pass

    with pytest.raises(SerializationError) as excinfo:
        serialize_event(Signup({"email": "\ud800@example.com"}))
    assert excinfo.value.__notes__ == [
        f"raised serializing the data of the event {Signup.name}; nothing was sent"
    ]


# ------------------------------------------------------- nesting depth ---


def nest(inner, levels):
    """``inner`` inside ``levels`` lists."""
    for _ in range(levels):
        inner = [inner]
    return inner


def json_depth(value):
    """How deep JSON objects and arrays nest in parsed JSON."""
    if isinstance(value, dict):
        return 1 + max(map(json_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(json_depth, value), default=0)
    return 0


def test_max_depth_is_100():
    assert serialization.MAX_DEPTH == 100


# The innermost value, and how deep its JSON form nests.
INNERMOST = [
    pytest.param(1, 0, id="scalar"),
    pytest.param({}, 1, id="dict"),
    pytest.param((), 1, id="tuple"),
    pytest.param(Decimal("1.5"), 1, id="tagged-value"),
    pytest.param(Money(Decimal("1"), "EUR"), 3, id="registered-type-holding-a-tagged-value"),
    pytest.param({TAG: "x"}, 3, id="dict-with-the-tag-key"),
]


@pytest.mark.parametrize(("inner", "inner_depth"), INNERMOST)
def test_data_at_the_maximum_depth_is_written_and_read(inner, inner_depth):
    register_type(Money, encode=lambda m: [m.amount, m.currency], decode=lambda v: Money(*v))
    levels = serialization.MAX_DEPTH - 1 - inner_depth
    data = {"v": nest(inner, levels)}
    assert json_depth(json.loads(dumps(data))) == serialization.MAX_DEPTH

    expected = {"v": nest([] if isinstance(inner, tuple) else inner, levels)}
    assert loads(dumps(data)) == expected
    assert deserialize_event(serialize_event(BaseEvent(data))).data == expected


@pytest.mark.parametrize(("inner", "inner_depth"), INNERMOST)
def test_one_level_more_is_refused_by_both_ends(inner, inner_depth):
    """What log() refuses, the worker refuses; what it accepts, the worker reads."""
    register_type(Money, encode=lambda m: [m.amount, m.currency], decode=lambda v: Money(*v))
    levels = serialization.MAX_DEPTH - 1 - inner_depth
    data = {"v": nest(inner, levels + 1)}

    with pytest.raises(SerializationError) as excinfo:
        dumps(data)
    assert str(excinfo.value).endswith(
        ": cannot serialize data nested more than 100 levels deep "
        "(eventlib.serialization.MAX_DEPTH)"
    )
    with pytest.raises(SerializationError, match="nested more than 100 levels deep"):
        serialize_event(BaseEvent(data))

    # The same data as another writer would send it.
    written = {"v": [json.loads(dumps({"v": nest(inner, levels)}))["v"]]}
    assert json_depth(written) == serialization.MAX_DEPTH + 1
    refusal = r"^invalid JSON payload: data nested more than 100 levels deep"
    with pytest.raises(DeserializationError, match=refusal):
        loads(json.dumps(written))
    with pytest.raises(DeserializationError, match=refusal):
        deserialize_event(json.dumps({**GOOD_ENVELOPE, "data": written}))


def test_the_depth_error_names_where_it_is_shortened():
    with pytest.raises(SerializationError) as excinfo:
        dumps({"a": nest(1, 200)})
    message = str(excinfo.value)
    assert message.startswith("data['a'][0][0]")
    assert "..." in message
    assert len(message) < 200


def test_data_nested_about_500_levels_is_a_serialization_error():
    """It used to be RecursionError, from the encoder's own recursion."""
    deep = {}
    for _ in range(500):
        deep = {"a": deep}
    with pytest.raises(SerializationError, match="nested more than 100 levels deep"):
        serialize_event(BaseEvent(deep))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (d := {}, d.__setitem__("self", d))[0], id="dict"),
        pytest.param(lambda: (items := [], items.append(items))[0], id="list"),
        pytest.param(lambda: (d := {}, d.__setitem__("l", [d]))[0], id="through-a-list"),
    ],
)
def test_a_value_that_contains_itself_is_a_serialization_error(make):
    with pytest.raises(SerializationError, match="nested more than 100 levels deep"):
        dumps({"loop": make()})


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="arrays"),
        pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, id="objects"),
        pytest.param("[" * 100_000, id="unclosed"),
        pytest.param(("[" * 100_000 + "]" * 100_000).encode(), id="bytes"),
    ],
)
def test_a_payload_nested_100000_levels_is_a_deserialization_error(text):
    with pytest.raises(DeserializationError, match="nested more than 100 levels deep"):
        loads(text)
    with pytest.raises(DeserializationError, match="nested more than 100 levels deep"):
        deserialize_event(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('"' + "[" * 500 + '"', id="brackets-in-a-string"),
        pytest.param('["\\"' + "{" * 500 + '", "\\\\"]', id="after-escaped-quotes"),
        pytest.param("[" + ", ".join(["[]"] * 500) + "]", id="many-shallow-arrays"),
    ],
)
def test_brackets_in_strings_and_side_by_side_are_not_depth(text):
    assert loads(text) == json.loads(text)


# ------------------------------------------- payloads that are not text ---


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        pytest.param(123, "int (123)", id="int"),
        pytest.param(None, "NoneType (None)", id="none"),
        pytest.param(["a"], "list (['a'])", id="list"),
        pytest.param({"id": "1"}, "dict ({'id': '1'})", id="dict"),
    ],
)
def test_a_payload_that_is_not_text_is_a_deserialization_error(payload, shown):
    expected = f"invalid JSON payload: expected JSON text (str or bytes), not {shown}"
    with pytest.raises(DeserializationError) as excinfo:
        deserialize_event(payload)
    assert str(excinfo.value) == expected
    with pytest.raises(DeserializationError) as excinfo:
        loads(payload)
    assert str(excinfo.value) == expected
