"""Rewrite ClickHouse Native output from protocol revision 0 (what chDB writes) to the revision a
client asked for with `client_protocol_version` (clickhouse-go, which Grafana's ClickHouse plugin uses,
and clickhouse-connect send it).

What differs between the revisions in a result: from revision 1 each block starts with its BlockInfo,
and from 54454 each column header carries a "custom serialization" byte (always 0 here: the data stays in
the default, dense serialization). Finding where one column's data ends needs its type, so this module
knows the data layout of the types a query can return; AggregateFunction, Dynamic, Variant, JSON and
Object columns raise `NativeUnsupported` (ask for another format, or cast the column).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["CUSTOM_SERIALIZATION_REVISION", "NativeUnsupported", "parse_type", "reencode"]

CUSTOM_SERIALIZATION_REVISION: Final = 54454
_BLOCK_INFO: Final = b"\x01\x00\x02\xff\xff\xff\xff\x00"  # field 1 is_overflows=0, field 2 bucket_num=-1, end

_FIXED: Final[dict[str, int]] = {
    "UInt8": 1,
    "Int8": 1,
    "Bool": 1,
    "Enum8": 1,
    "Nothing": 1,
    "UInt16": 2,
    "Int16": 2,
    "Date": 2,
    "Enum16": 2,
    "BFloat16": 2,
    "UInt32": 4,
    "Int32": 4,
    "Float32": 4,
    "Date32": 4,
    "DateTime": 4,
    "IPv4": 4,
    "Time": 4,
    "Decimal32": 4,
    "UInt64": 8,
    "Int64": 8,
    "Float64": 8,
    "DateTime64": 8,
    "Time64": 8,
    "Decimal64": 8,
    "UInt128": 16,
    "Int128": 16,
    "UUID": 16,
    "IPv6": 16,
    "Decimal128": 16,
    "UInt256": 32,
    "Int256": 32,
    "Decimal256": 32,
}
_GEO: Final[dict[str, str]] = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "MultiLineString": "Array(LineString)",
    "Polygon": "Array(Ring)",
    "MultiPolygon": "Array(Polygon)",
}
_UNSUPPORTED: Final = frozenset({"AggregateFunction", "Dynamic", "Variant", "JSON", "Object", "Nested"})
_NAMED_ELEMENT = re.compile(r"^(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)$", re.S)


class NativeUnsupported(ValueError):
    """A result column of a type this module cannot re-encode."""


@dataclass(frozen=True, slots=True)
class CHType:
    name: str
    args: tuple[str, ...] = ()


def _split_args(text: str) -> list[str]:
    args, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'`\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    if text[start:].strip():
        args.append(text[start:].strip())
    return args


def parse_type(text: str) -> CHType:
    """`Map(LowCardinality(String), String)` -> CHType('Map', ('LowCardinality(String)', 'String'))."""
    text = text.strip()
    paren = text.find("(")
    if paren < 0:
        return CHType(text)
    if not text.endswith(")"):
        raise NativeUnsupported(f"cannot parse type {text!r}")
    return CHType(text[:paren].strip(), tuple(_split_args(text[paren + 1 : -1])))


def _element_type(arg: str) -> str:
    """A Tuple element's type, without its name (`a String` -> `String`)."""
    m = _NAMED_ELEMENT.match(arg)
    if m and not arg.startswith(("Nullable", "LowCardinality")) and "(" not in m.group(1):
        try:
            parse_type(m.group(2))
            return m.group(2)
        except NativeUnsupported:
            return arg
    return arg


def _strip_nullable(t: CHType) -> CHType:
    return parse_type(t.args[0]) if t.name == "Nullable" else t


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise NativeUnsupported("truncated Native data")
        self.pos += n

    def uint64(self) -> int:
        start = self.pos
        self.take(8)
        value: int = struct.unpack_from("<Q", self.data, start)[0]
        return value

    def varuint(self) -> int:
        shift = result = 0
        while True:
            if self.pos >= len(self.data):
                raise NativeUnsupported("truncated Native data")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def string(self) -> bytes:
        n = self.varuint()
        start = self.pos
        self.take(n)
        return self.data[start : self.pos]


def _resolve(t: CHType) -> CHType:
    if t.name in _GEO:
        return parse_type(_GEO[t.name])
    if t.name == "SimpleAggregateFunction":
        return parse_type(t.args[-1])
    if t.name in _UNSUPPORTED:
        raise NativeUnsupported(
            f"the embedded endpoint cannot send {t.name} columns in Native format; "
            "use another format (FORMAT JSON, TabSeparated, ...) or cast the column"
        )
    return t


def _children(t: CHType) -> list[CHType]:
    if t.name in ("Array", "Nullable"):
        return [parse_type(t.args[0])]
    if t.name == "Map":
        return [parse_type(a) for a in t.args]
    if t.name == "Tuple":
        return [parse_type(_element_type(a)) for a in t.args]
    return []


def _skip_prefix(t: CHType, r: _Reader) -> None:
    """State prefixes: one UInt64 (the keys' version) per LowCardinality, written before any data."""
    t = _resolve(t)
    if t.name == "LowCardinality":
        r.take(8)
        return
    for child in _children(t):
        _skip_prefix(child, r)


def _fixed_width(t: CHType) -> int | None:
    if t.name == "Decimal":
        precision = int(t.args[0])
        return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
    if t.name == "FixedString":
        return int(t.args[0])
    if t.name.startswith("Interval"):
        return 8
    return _FIXED.get(t.name)


def _skip_data(t: CHType, rows: int, r: _Reader) -> None:
    t = _resolve(t)
    width = _fixed_width(t)
    if width is not None:
        r.take(width * rows)
    elif t.name == "String":
        for _ in range(rows):
            r.string()
    elif t.name == "Nullable":
        r.take(rows)
        _skip_data(parse_type(t.args[0]), rows, r)
    elif t.name in ("Array", "Map"):
        if rows == 0:
            return
        r.take(8 * (rows - 1))
        total = r.uint64()
        if t.name == "Array":
            _skip_data(parse_type(t.args[0]), total, r)
        else:
            for child in _children(t):
                _skip_data(child, total, r)
    elif t.name == "Tuple":
        for child in _children(t):
            _skip_data(child, rows, r)
    elif t.name == "LowCardinality":
        dictionary = _strip_nullable(parse_type(t.args[0]))
        done = 0
        while done < rows:
            flags = r.uint64()
            if flags & (1 << 9):  # has additional keys
                _skip_data(dictionary, r.uint64(), r)
            count = r.uint64()
            r.take(count * (1 << (flags & 0xFF)))
            done += count
            if count == 0:
                break
    else:
        raise NativeUnsupported(
            f"the embedded endpoint cannot send {t.name} columns in Native format; "
            "use another format or cast the column"
        )


def _put_varuint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def reencode(data: bytes, revision: int) -> bytes:
    """Native `data` written at revision 0, as ClickHouse would write it for `revision`."""
    if revision <= 0 or not data:
        return data
    r, out = _Reader(data), bytearray()
    while r.pos < len(data):
        columns, rows = r.varuint(), r.varuint()
        out += _BLOCK_INFO
        _put_varuint(columns, out)
        _put_varuint(rows, out)
        for _ in range(columns):
            start = r.pos
            r.string()
            type_name = r.string().decode("utf-8", errors="replace")
            out += data[start : r.pos]
            if revision >= CUSTOM_SERIALIZATION_REVISION:
                out.append(0)
            if rows:
                body = r.pos
                ctype = parse_type(type_name)
                _skip_prefix(ctype, r)
                _skip_data(ctype, rows, r)
                out += data[body : r.pos]
    return bytes(out)
