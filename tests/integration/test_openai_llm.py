"""OpenAICompatibleLLM against a real loopback HTTP server speaking the chat/completions API."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.openai_llm import OpenAICompatibleLLM
from fleetforge.adapters.executors.tools import ToolRegistry
from fleetforge.core.pricing import PriceTable
from fleetforge.domain.models import ErrorKind, StepSpec, StepType
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, StepFailure

API_KEY = "sk-test-very-secret-0123456789"
PRICES = PriceTable()

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 20000,
        "completion_tokens": 1000,
        "total_tokens": 21000,
        "prompt_tokens_details": {"cached_tokens": 15000},
    },
}


@dataclass
class Server:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            payload = json.loads(self.rfile.read(length) or b"null")
            state.requests.append(
                {"path": self.path, "auth": self.headers.get("Authorization"), "body": payload}
            )
            scenario = self.path.strip("/").split("/")[0]
            if not self.path.endswith("/v1/chat/completions"):
                self.reply(404, b'{"error": {"message": "not found"}}')
            elif scenario == "ok":
                self.reply(200, json.dumps(COMPLETION).encode())
            elif scenario == "limited":
                self.reply(429, b'{"error": {"message": "Rate limit reached"}}', {"Retry-After": "7"})
            elif scenario == "broken":
                self.reply(500, b'{"error": {"message": "internal error"}}')
            elif scenario == "bad":
                msg = f"Incorrect API key provided: {self.headers.get('Authorization', '')}"
                self.reply(400, json.dumps({"error": {"message": msg}}).encode())
            elif scenario == "hang":
                state.release.wait(10)
                self.reply(200, json.dumps(COMPLETION).encode())
            elif scenario == "malformed":
                self.reply(200, b'{"choices": [ {"message": ')
            elif scenario == "nousage":
                self.reply(200, json.dumps({"choices": COMPLETION["choices"]}).encode())
            else:
                self.reply(404, b"{}")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def ctx(inputs: dict[str, Any], deadline_s: float = 5.0) -> ExecutionContext:
    step = StepSpec(id="llm-1", type=StepType.LLM, inputs=inputs)
    return ExecutionContext(run_id="r", step=step, attempt=1, seed=1, inputs=inputs, deadline_s=deadline_s)


def call(base_url: str, inputs: dict[str, Any], deadline_s: float = 5.0) -> ExecutionResult | StepFailure:
    async def go() -> ExecutionResult | StepFailure:
        async with httpx.AsyncClient() as client:
            llm = OpenAICompatibleLLM(client, base_url, API_KEY, PRICES)
            try:
                return await llm.execute(ctx(inputs, deadline_s))
            except StepFailure as failure:
                return failure

    return asyncio.run(go())


def fail(outcome: ExecutionResult | StepFailure) -> StepFailure:
    assert isinstance(outcome, StepFailure), outcome
    assert API_KEY not in outcome.message
    assert outcome.provider == "openai"
    return outcome


PROMPT = {"model": "gpt-4o-mini", "prompt": "Say hello", "temperature": 0.2, "max_tokens": 64}


def test_completion_reports_usage_cached_tokens_and_cost(server: Server) -> None:
    result = call(f"{server.url}/ok/v1/", PROMPT)
    assert isinstance(result, ExecutionResult)
    assert result.output["text"] == "Hello there."
    assert result.model == result.tool == "gpt-4o-mini-2024-07-18"
    assert result.provider == "openai"
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.cached_tokens) == (
        20000,
        1000,
        15000,
    )
    # gpt-4o-mini: 5000 fresh * 0.15 + 15000 cached * 0.075 + 1000 out * 0.60, per 1M
    assert result.usage.cost_usd == pytest.approx(0.002475)
    assert result.latency_ms > 0
    sent = server.requests[-1]
    assert sent["path"] == "/ok/v1/chat/completions"
    assert sent["auth"] == f"Bearer {API_KEY}"
    assert sent["body"] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        "temperature": 0.2,
        "max_tokens": 64,
    }


def test_messages_are_sent_as_given(server: Server) -> None:
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert isinstance(
        call(f"{server.url}/ok/v1", {"model": "gpt-4.1", "messages": messages}), ExecutionResult
    )
    assert server.requests[-1]["body"]["messages"] == messages


def test_rate_limited_carries_retry_after(server: Server) -> None:
    f = fail(call(f"{server.url}/limited/v1", PROMPT))
    assert f.kind is ErrorKind.RATE_LIMITED
    assert f.retry_after_s == 7.0
    assert "Rate limit reached" in f.message


def test_server_error_is_http_5xx(server: Server) -> None:
    f = fail(call(f"{server.url}/broken/v1", PROMPT))
    assert f.kind is ErrorKind.HTTP_5XX and f.retry_after_s is None


def test_client_error_is_http_4xx_and_never_leaks_the_key(server: Server) -> None:
    f = fail(call(f"{server.url}/bad/v1", PROMPT))
    assert f.kind is ErrorKind.HTTP_4XX
    assert "Incorrect API key provided" in f.message and "***" in f.message


def test_hanging_server_times_out_at_the_deadline(server: Server) -> None:
    started = time.perf_counter()
    f = fail(call(f"{server.url}/hang/v1", PROMPT, deadline_s=0.3))
    assert f.kind is ErrorKind.TIMEOUT
    assert time.perf_counter() - started < 3.0


def test_malformed_responses_are_validation_errors(server: Server) -> None:
    assert fail(call(f"{server.url}/malformed/v1", PROMPT)).kind is ErrorKind.VALIDATION
    f = fail(call(f"{server.url}/nousage/v1", PROMPT))
    assert f.kind is ErrorKind.VALIDATION and "usage" in f.message


def test_bad_inputs_are_validation_errors_without_a_request(server: Server) -> None:
    before = len(server.requests)
    for bad in ({"prompt": "x"}, {"model": "m"}, {"model": "m", "prompt": "x", "max_tokens": -1}):
        assert fail(call(f"{server.url}/ok/v1", bad)).kind is ErrorKind.VALIDATION
    assert len(server.requests) == before


def test_connection_refused_is_a_crash() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    f = fail(call(f"http://127.0.0.1:{port}/v1", PROMPT))
    assert f.kind is ErrorKind.CRASH


def test_dispatcher_sends_the_key_only_to_the_configured_endpoint(server: Server) -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as client:
            llm = build_executors(
                client=client,
                tools=ToolRegistry(),
                prices=PRICES,
                llm_base_url=f"{server.url}/ok/v1",
                llm_api_key=API_KEY,
            )[StepType.LLM]
            result = await llm.execute(ctx(dict(PROMPT)))
            assert result.usage.cached_tokens == 15000
            assert server.requests[-1]["auth"] == f"Bearer {API_KEY}"
            other = {**PROMPT, "base_url": f"{server.url}/ok/elsewhere/v1", "provider": "vllm"}
            result = await llm.execute(ctx(other))
            assert result.provider == "vllm"
            assert server.requests[-1]["auth"] is None

    asyncio.run(go())
