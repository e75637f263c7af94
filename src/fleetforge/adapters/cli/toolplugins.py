"""Operator tools for `fleetforge worker --tools module:function` (env FLEETFORGE_TOOLS).

Each value names a module and a callable in it; the callable is called once with the worker's
ToolRegistry and registers the operator's tools beside the demo tools::

    # mytools.py
    def register(registry: ToolRegistry) -> None:
        registry.register("lookup", lookup, timeout_s=5.0)

    fleetforge worker --tools mytools:register

A value may also name a function decorated with ``@fleetforge.tool``: it is registered as that tool,
with its schema (``fleetforge worker --tools mytools:lookup``).

The module is imported the way `python -m` would find it: from sys.path (PYTHONPATH, installed
packages) and then from the current directory.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import Any, Final

from fleetforge.adapters.executors.pytools import FunctionTool
from fleetforge.adapters.executors.tools import ToolRegistry
from fleetforge.domain.errors import ConfigError

__all__ = ["ENV_VAR", "EXPECTED", "load_tool_plugins", "split_tool_specs"]

ENV_VAR: Final = "FLEETFORGE_TOOLS"
EXPECTED: Final = (
    "'module:function' (e.g. 'mytools:register'), where function(registry: ToolRegistry) -> None "
    "registers tools or function is decorated with @fleetforge.tool; several values are separated by "
    "commas or given as repeated --tools"
)


def split_tool_specs(values: Iterable[str] | None) -> list[str]:
    """The individual `module:function` values of repeated and comma-separated options."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def load_tool_plugins(values: Iterable[str] | None, registry: ToolRegistry) -> list[str]:
    """Call every named `module:function` with `registry`; returns the values loaded, in order.

    Raises ConfigError naming the value and the expected form when a value is malformed, its
    module cannot be imported, the attribute is missing or not callable, or the call raises.
    """
    loaded: list[str] = []
    for spec in split_tool_specs(values):
        register = _resolve(spec)
        if isinstance(register, FunctionTool):
            register.register(registry)
            loaded.append(spec)
            continue
        try:
            register(registry)
        except Exception as exc:
            raise ConfigError(
                f"--tools/{ENV_VAR}: {spec!r} raised {type(exc).__name__}: {_short(exc)} while "
                f"registering tools; expected {EXPECTED}") from exc
        loaded.append(spec)
    return loaded


def _valid_dotted(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _resolve(spec: str) -> Any:
    module_name, colon, attr_path = spec.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not colon or not _valid_dotted(module_name) or not _valid_dotted(attr_path):
        raise ConfigError(f"--tools/{ENV_VAR}: got {spec!r}, expected {EXPECTED}")
    module = _import(spec, module_name)
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"--tools/{ENV_VAR}: {spec!r}: module {module_name!r} has no attribute {attr_path!r}; "
                f"expected {EXPECTED}") from None
    if not callable(target):
        raise ConfigError(
            f"--tools/{ENV_VAR}: {spec!r}: {attr_path!r} is not callable (it is a {type(target).__name__}); "
            f"expected {EXPECTED}")
    return target


def _import(spec: str, module_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # like `python -m`, after installed packages so nothing is shadowed
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"--tools/{ENV_VAR}: {spec!r}: cannot import module {module_name!r} (not found on "
                f"PYTHONPATH or in {cwd}); expected {EXPECTED}") from None
        raise ConfigError(
            f"--tools/{ENV_VAR}: {spec!r}: importing module {module_name!r} failed: {_short(exc)}") from exc
    except Exception as exc:
        raise ConfigError(
            f"--tools/{ENV_VAR}: {spec!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
