"""JSON Schemas derived from typed Python signatures and docstrings, and argument validation against them.

Supported annotations: int, float, str, bool, None, Any, list[X], tuple[X, ...], set[X], dict[str, X],
X | None (Optional), unions, Literal[...], Enum subclasses and Annotated[X, "description"]. A parameter
with a default is optional and its default appears in the schema; ``**kwargs`` allows extra arguments.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

__all__ = ["parse_docstring", "schema_for", "signature_schema", "validate_args"]

_SIMPLE: Final[dict[Any, str]] = {int: "integer", float: "number", str: "string", bool: "boolean",
                                  type(None): "null"}
_SECTIONS: Final = re.compile(r"^(args|arguments|parameters|params|returns?|yields?|raises|examples?|notes?|"
                              r"attributes|see also|warnings?)\s*:\s*$", re.IGNORECASE)
_ARG_LINE: Final = re.compile(r"^\*{0,2}(?P<name>[A-Za-z_]\w*)\s*(\([^)]*\))?\s*:\s*(?P<text>.*)$")
_JSON_TYPES: Final[dict[str, Callable[[object], bool]]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(first paragraph as one line, parameter descriptions from a Google-style ``Args:`` section)."""
    text = inspect.cleandoc(doc or "")
    lines = text.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTIONS.match(line.strip()):
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    in_args, current, indent = False, "", 0
    for line in lines:
        stripped = line.strip()
        header = _SECTIONS.match(stripped)
        if header and len(line) - len(line.lstrip()) == 0:
            in_args = header.group(1).lower() in {"args", "arguments", "parameters", "params"}
            current = ""
            continue
        if not in_args or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(stripped)
        if match and (not current or depth <= indent):
            current, indent = match.group("name"), depth
            params[current] = match.group("text").strip()
        elif current:
            params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(summary), params


def schema_for(annotation: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of one annotation; TypeError naming `where` for a type it cannot express."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        schema = schema_for(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        return {**schema, "description": notes[0]} if notes else schema
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum([m.value for m in annotation])
    if origin is typing.Literal:
        return _enum(list(args))
    if origin in (typing.Union, types.UnionType):
        parts = [schema_for(a, where) for a in args]
        if all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            return {"type": [p["type"] for p in parts]}
        return {"anyOf": parts}
    if annotation in (list, tuple, set, frozenset) or origin in (list, set, frozenset, Sequence):
        return {"type": "array", "items": schema_for(args[0], where)} if args else {"type": "array"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_for(args[0], where)}
        return {"type": "array", "prefixItems": [schema_for(a, where) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if annotation is dict or origin in (dict, Mapping):
        if args and args[0] is not str:
            raise TypeError(f"{where}: got {_name(annotation)}, expected dict keys of type str (JSON object keys)")
        value = schema_for(args[1], where) if args else {}
        return {"type": "object", "additionalProperties": value or True}
    raise TypeError(f"{where}: got annotation {_name(annotation)}, expected int, float, str, bool, None, "
                    "list[...], dict[str, ...], tuple[...], Optional/union, Literal[...], an Enum or Any")


def signature_schema(fn: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """(description, parameters object schema) of `fn` from its signature and docstring."""
    description, docs = parse_docstring(fn.__doc__)
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TypeError(f"tool {label}: cannot resolve its annotations: {exc}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    extra = False
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise TypeError(f"tool {label}: parameter {name!r} is {param.kind.description}, expected "
                            "parameters that can be passed by name")
        schema = schema_for(hints.get(name, param.annotation), f"tool {label}: parameter {name!r}")
        if name in docs and "description" not in schema:
            schema["description"] = docs[name]
        if param.default is inspect.Parameter.empty:
            required.append(name)
        elif _is_json(param.default):
            schema["default"] = param.default.value if isinstance(param.default, enum.Enum) else param.default
        properties[name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required,
                                  "additionalProperties": extra}
    return description, parameters


def validate_args(schema: Mapping[str, Any], args: Mapping[str, Any]) -> list[str]:
    """Problems of `args` against an object schema made by `signature_schema`, each naming the argument."""
    problems: list[str] = []
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in args:
            problems.append(f"argument {name!r}: missing, expected {_describe(properties.get(name, {}))}")
    for name, value in args.items():
        if name in properties:
            problems.extend(_check(properties[name], value, f"argument {name!r}"))
        elif schema.get("additionalProperties") is False:
            known = ", ".join(sorted(properties)) or "none"
            problems.append(f"argument {name!r}: unexpected, expected one of: {known}")
    return problems


def _check(schema: Mapping[str, Any], value: Any, where: str) -> list[str]:
    if "anyOf" in schema:
        results = [_check(s, value, where) for s in schema["anyOf"]]
        if any(not r for r in results):
            return []
        shaped = [r for s, r in zip(schema["anyOf"], results, strict=True) if _type_fits(s, value)]
        if len(shaped) == 1:  # the one branch of the value's JSON type says what is wrong inside it
            return shaped[0]
        return [f"{where}: got {_show(value)}, expected {_describe(schema)}"]
    if "enum" in schema and not any(value == v and type(value) is type(v) for v in schema["enum"]):
        return [f"{where}: got {_show(value)}, expected one of {', '.join(map(_show, schema['enum']))}"]
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if not any(_JSON_TYPES[k](value) for k in kinds):
            return [f"{where}: got {_show(value)}, expected {_describe(schema)}"]
    problems: list[str] = []
    if isinstance(value, list):
        if "prefixItems" in schema:
            items = schema["prefixItems"]
            if len(value) != len(items):
                return [f"{where}: got {len(value)} items, expected {len(items)}"]
            for i, (s, v) in enumerate(zip(items, value, strict=True)):
                problems.extend(_check(s, v, f"{where}[{i}]"))
        elif "items" in schema:
            for i, v in enumerate(value):
                problems.extend(_check(schema["items"], v, f"{where}[{i}]"))
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, v in value.items():
            problems.extend(_check(schema["additionalProperties"], v, f"{where}[{key!r}]"))
    return problems[:5]


def _type_fits(schema: Mapping[str, Any], value: Any) -> bool:
    kind = schema.get("type")
    kinds = [] if kind is None else [kind] if isinstance(kind, str) else list(kind)
    return bool(kinds) and any(_JSON_TYPES[k](value) for k in kinds)


def _describe(schema: Mapping[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(map(_show, schema["enum"]))
    kind = schema.get("type")
    if kind is None:
        return "any value"
    kinds = [kind] if isinstance(kind, str) else list(kind)
    words = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "a boolean",
             "null": "null", "array": "an array", "object": "an object"}
    text = " or ".join(words[k] for k in kinds)
    if schema.get("items"):
        text += f" (items: {_describe(schema['items'])})"
    return text


def _enum(values: list[Any]) -> dict[str, Any]:
    kinds = {k for v in values for k, test in _JSON_TYPES.items() if test(v) and k != "number"}
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1:
        schema["type"] = kinds.pop()
    return schema


def _is_json(value: object) -> bool:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _show(value: object) -> str:
    return f"{value!r:.60}" if not isinstance(value, bool | None) else str(value).lower().replace("none", "null")


def _name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)
