"""`fleetforge worker --tools module:function`: loading operator tools, and every bad value."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetforge.adapters.cli.main import app
from fleetforge.adapters.cli.toolplugins import load_tool_plugins, split_tool_specs
from fleetforge.adapters.cli.wiring import tools_registry
from fleetforge.adapters.executors.tools import ToolRegistry
from fleetforge.domain.errors import ConfigError

PLUGIN = textwrap.dedent('''
    from fleetforge.adapters.executors.tools import ToolRegistry

    def register(registry: ToolRegistry) -> None:
        registry.register("greet", lambda args: {"hello": args.get("name", "world")})

    def register_more(registry: ToolRegistry) -> None:
        registry.register("shout", lambda args: {"text": str(args.get("text", "")).upper()})

    class Holder:
        @staticmethod
        def register(registry: ToolRegistry) -> None:
            registry.register("nested", lambda args: {})

    not_callable = 42

    def boom(registry: ToolRegistry) -> None:
        raise RuntimeError("database of tools is down")

    def wrong_signature() -> None:
        pass
''')


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    name = f"ffplug_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    (tmp_path / "ffplug_broken.py").write_text("import nonexistent_dependency_xyz\n")
    (tmp_path / "ffplug_raises.py").write_text("raise RuntimeError('import-time failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("ffplug_")]:
        del sys.modules[mod]


def _mod(plugin_dir: Path) -> str:
    return f"ffplug_{plugin_dir.name.replace('-', '_')}"


def test_split_accepts_repeats_and_commas() -> None:
    assert split_tool_specs(["a:b, c:d", "e:f", " ", ""]) == ["a:b", "c:d", "e:f"]
    assert split_tool_specs(None) == []


def test_plugins_register_beside_the_demo_tools(plugin_dir: Path) -> None:
    m = _mod(plugin_dir)
    registry = tools_registry([f"{m}:register", f"{m}:register_more,{m}:Holder.register"])
    assert {"greet", "shout", "nested", "noop", "search"} <= set(registry.names())


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("justamodule", "expected 'module:function'"),
        (":register", "expected 'module:function'"),
        ("mod:", "expected 'module:function'"),
        ("bad name:register", "expected 'module:function'"),
        ("mod:fn()", "expected 'module:function'"),
        ("ffplug_no_such_module:register", "cannot import module 'ffplug_no_such_module'"),
        ("ffplug_broken:register", "nonexistent_dependency_xyz"),
        ("ffplug_raises:register", "raised RuntimeError: import-time failure"),
        ("{m}:missing", "has no attribute 'missing'"),
        ("{m}:not_callable", "is not callable"),
        ("{m}:boom", "raised RuntimeError: database of tools is down"),
        ("{m}:wrong_signature", "raised TypeError"),
    ],
)
def test_bad_values_raise_config_error_naming_the_value(plugin_dir: Path, value: str, needle: str) -> None:
    value = value.format(m=_mod(plugin_dir))
    with pytest.raises(ConfigError) as info:
        load_tool_plugins([value], ToolRegistry())
    message = str(info.value)
    assert needle in message
    assert repr(value) in message
    assert "FLEETFORGE_TOOLS" in message


def test_cli_worker_rejects_a_bad_value_with_exit_code_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["worker", "--data-dir", str(tmp_path), "--until-idle",
                                      "--tools", "nocolon"])
    assert result.exit_code == 2
    assert "'nocolon'" in result.output and "module:function" in result.output
    assert not (tmp_path / "state.db").exists()  # rejected before the store was touched


def test_cli_worker_reads_the_env_var(tmp_path: Path) -> None:
    tools = "fleetforge.adapters.executors.tools:register_demo_tools,nosuchmod_zz:register"
    result = CliRunner().invoke(app, ["worker", "--data-dir", str(tmp_path), "--until-idle"],
                                env={"FLEETFORGE_TOOLS": tools})
    assert result.exit_code == 2
    assert "'nosuchmod_zz:register'" in result.output
