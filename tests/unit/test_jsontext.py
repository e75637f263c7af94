"""jsontext: the fast paths write and read exactly what the standard library does, on hostile values too."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import random

import pytest

from fleetforge.domain.jsontext import compact, parse


@dataclasses.dataclass
class Point:
    x: int
    y: int


TEXTS = [
    '{"a":1}', "123456789012345678901234567890", "[1e400]", "[-1e400]", "NaN", "[Infinity]", '{"x":"\\ud800"}',
    "-0.0", "1.5", '{"n":18446744073709551616}', "[0.1,1e-7,12345678901234567]", '"\\u00e9\u00e9"',
    '{"a":{"b":[1,2,{"c":null}]}}', "9007199254740993", '{"a":1,"a":2}', "[-9223372036854775809]",
    "[1.0000000000000002]", '"\\u0000"', "[true,false,null]", "   [ 1 , 2 ]  ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_parse_reads_what_json_loads_reads(text: str) -> None:
    want = json.loads(text)
    got = parse(text)
    assert repr(got) == repr(want) and type(got) is type(want)
    assert repr(parse(text.encode())) == repr(want)


@pytest.mark.parametrize("text", ["", "{", "[1,]", "{'a':1}"])
def test_parse_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_round_trips_of_random_values_match_the_standard_library() -> None:
    rng = random.Random(7)

    def value(depth: int = 0) -> object:
        pick = rng.randrange(9 if depth < 3 else 6)
        if pick == 0:
            return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64 + 1, 10**30, rng.randrange(-10**6, 10**6)])
        if pick == 1:
            return rng.choice([0.0, -0.0, 1e-5, 1e16, 1.5, 123.456, math.pi * 10**rng.randrange(-8, 20)])
        if pick == 2:
            return "".join(rng.choice(["a", "é", "\u2028", '"', "\\", "\n", "\U0001f600"]) for _ in range(5))
        if pick in (3, 4, 5):
            return rng.choice([None, True, False])
        if pick == 6:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randrange(4))}

    for _ in range(2000):
        v = value()
        text = compact(v)
        assert text == json.dumps(v, separators=(",", ":"), ensure_ascii=False)
        assert repr(parse(text)) == repr(json.loads(text))


@pytest.mark.parametrize("value", [
    {"x": math.nan}, [math.inf], {"x": -math.inf, "y": None}, math.nan, 1e-5, 1e16, "e-1", {"k": "null"},
    {"small": 9.99e-5}, {"tiny": -1e-10}, {"big": 1.5e300}, {"t": (1, 2)}, {"s": "\ud800"}, {1: "int key"},
    {"n": 2**64}, {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
])
def test_compact_writes_what_json_writes(value: object) -> None:
    try:
        want = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            compact(value)
        return
    assert compact(value) == want


@pytest.mark.parametrize("value", [{"when": datetime.datetime(2026, 1, 1)}, {"d": Point(1, 2)}, {"b": b"x"}])
def test_compact_refuses_what_json_refuses(value: object) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        compact(value)
