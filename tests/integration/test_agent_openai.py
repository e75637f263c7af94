"""The agent loop against a local OpenAI-compatible server that validates every request body against the
`openai` package's request types and answers with scripted tool calls (parallel ones included)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolRegistry, register_demo_tools
from fleetforge.adapters.http.server import BackgroundServer
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.core.summary import summary_from_events, summary_from_store

openai_params = pytest.importorskip("openai.types.chat.completion_create_params")
chat_types = pytest.importorskip("openai.types.chat")
pydantic = pytest.importorskip("pydantic")

REQUEST = pydantic.TypeAdapter(openai_params.CompletionCreateParamsNonStreaming)
# `messages` and `tools` are typed Iterable[...], which pydantic validates lazily: check their items too
MESSAGES = pydantic.TypeAdapter(list[chat_types.ChatCompletionMessageParam])  # type: ignore[name-defined]
TOOLS = pydantic.TypeAdapter(list[chat_types.ChatCompletionFunctionToolParam])  # type: ignore[name-defined]


def validate_request(body: Any) -> None:
    """Raise pydantic.ValidationError unless `body` is a valid non-streaming chat/completions request."""
    REQUEST.validate_python(body)
    MESSAGES.validate_python(body["messages"])
    TOOLS.validate_python(body.get("tools", []))


def test_the_validator_rejects_malformed_bodies() -> None:
    for bad in ({"messages": [{"role": "user", "content": "x"}]},
                {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
                {"model": "m", "messages": [{"role": "nope", "content": "x"}]},
                {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}):
        with pytest.raises(pydantic.ValidationError):
            validate_request(bad)


def _call(cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


SCRIPT: list[dict[str, Any]] = [  # the assistant message of each turn
    {"role": "assistant", "content": None, "tool_calls": [
        _call("call_a1", "crm_lookup", {"customer_id": "c-42"}), _call("call_a2", "weather", {"city": "Oslo"})]},
    {"role": "assistant", "content": None, "tool_calls": [_call("call_b1", "calculator", {"expression": "6*7"})]},
    {"role": "assistant", "content": "Ada is on the pro tier; Oslo is windy; the answer is 42."},
]


class ScriptedOpenAI:
    """A chat/completions endpoint: validates each body, answers the turn's scripted message."""

    def __init__(self, script: list[dict[str, Any]] | None = None) -> None:
        self.script = script or SCRIPT
        self.bodies: list[dict[str, Any]] = []
        self.errors: list[str] = []

    async def completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        try:
            validate_request(body)
        except pydantic.ValidationError as exc:
            self.errors.append(str(exc))
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        self.bodies.append(body)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        message = self.script[min(turn, len(self.script) - 1)]
        return JSONResponse({
            "id": f"chatcmpl-{turn}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if "tool_calls" in message else "stop"}],
            "usage": {"prompt_tokens": 100 + turn, "completion_tokens": 20, "total_tokens": 120 + turn}})


@pytest.fixture
def server() -> Iterator[tuple[ScriptedOpenAI, str]]:
    api = ScriptedOpenAI()
    srv = BackgroundServer(Starlette(routes=[Route("/v1/chat/completions", api.completions, methods=["POST"])]),
                           name="openai-test").start()
    try:
        yield api, srv.url.rstrip("/") + "/v1"
    finally:
        srv.stop()


def test_agent_loop_against_an_openai_compatible_server(server: tuple[ScriptedOpenAI, str], tmp_path: Path) -> None:
    api, base_url = server
    store = SqliteStore(str(tmp_path / "s.db"))
    store.migrate()

    async def go() -> str:
        async with httpx.AsyncClient() as client:
            executors = build_executors(client=client, tools=register_demo_tools(ToolRegistry()), prices=PriceTable(),
                                        llm_base_url=base_url, llm_api_key="sk-test", sim_sleep=False)
            rt = Runtime(store, executors=executors, packs=default_packs())
            rid = rt.submit({"steps": [{"id": "support", "type": "agent", "inputs": {
                "model": "gpt-4o-mini", "instructions": "You are a support agent.",
                "messages": [{"role": "user", "content": "Who is customer c-42 and how is the weather?"}],
                "tools": ["crm_lookup", "weather", "calculator"], "tool_choice": "auto",
                "parallel_tool_calls": True, "max_turns": 5}}]})
            await rt.worker("w").run(until_idle=True)
            return rid

    rid = asyncio.run(go())
    assert api.errors == []
    run = store.get_run(rid)
    assert run is not None and run.status == "succeeded", run
    assert len(api.bodies) == 3
    first, second, third = api.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["crm_lookup", "weather", "calculator"]
    assert first["tools"][1]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    assert first["tool_choice"] == "auto" and first["parallel_tool_calls"] is True
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in second["messages"][3:]] == ["call_a1", "call_a2"]
    assert json.loads(second["messages"][4]["content"])["city"] == "Oslo"
    assert [m["role"] for m in third["messages"]][-2:] == ["assistant", "tool"]
    assert json.loads(third["messages"][-1]["content"])["result"] == 42
    out = {s.step_id: s for s in store.get_steps(rid)}["support"].output
    assert out is not None and out["text"].startswith("Ada is on the pro tier") and out["turns"] == 3
    assert [(c["name"], c["ok"]) for c in out["tool_calls"]] == [("crm_lookup", True), ("weather", True),
                                                                   ("calculator", True)]
    ledger = [a for a in store.get_attempts(rid) if a.step_id.count(".") == 1]
    assert [a.tokens_used for a in ledger] == [120, 121, 122]
    assert summary_from_events(r.envelope for r in store.iter_outbox()) == summary_from_store(store)
