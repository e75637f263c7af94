"""The `http` step executor, and the HTTP failure classification the LLM executor shares."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from fleetforge.domain.models import ErrorKind, StepSpec
from fleetforge.domain.secrets import redact_text
from fleetforge.ports.executor import ExecutionContext, ExecutionResult, StepFailure, Usage

__all__ = [
    "MAX_TEXT_BYTES",
    "HttpExecutor",
    "error_snippet",
    "parse_retry_after",
    "status_kind",
    "transport_failure",
]

MAX_TEXT_BYTES: Final = 64 * 1024
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SNIPPET_CHARS: Final = 200


def status_kind(status: int) -> ErrorKind | None:
    """The failure kind of an HTTP status; None for 2xx/3xx (408 counts as a timeout)."""
    if 200 <= status < 400:
        return None
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status == 408:
        return ErrorKind.TIMEOUT
    if 400 <= status < 500:
        return ErrorKind.HTTP_4XX
    if status >= 500:
        return ErrorKind.HTTP_5XX
    return ErrorKind.VALIDATION  # 1xx as a final status: a broken server


def parse_retry_after(headers: Mapping[str, str], now_s: float) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None if absent."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, round(when.timestamp() - now_s, 3))
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_snippet(response: httpx.Response) -> str:
    """A one-line, truncated description of an error body (`error.message` when JSON)."""
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    text = ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(body.get("message"), str):
            text = body["message"]
    if not text:
        text = response.content[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")


def transport_failure(
    exc: BaseException, what: str, *, tool: str, provider: str, secrets: Iterable[str | None] = ()
) -> StepFailure:
    """Classify an exception raised while calling `what`: timeouts, bad URLs, or a crash."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        kind, message = ErrorKind.TIMEOUT, f"{what} timed out ({type(exc).__name__})"
    elif isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        kind, message = ErrorKind.VALIDATION, f"{what}: invalid URL: {detail}"
    elif isinstance(exc, httpx.TransportError):
        kind, message = ErrorKind.CRASH, f"{what}: {type(exc).__name__}: {detail}"
    else:
        kind, message = ErrorKind.CRASH, f"{what}: unexpected {type(exc).__name__}: {detail}"
    return StepFailure(kind, redact_text(message, secrets), tool=tool, provider=provider)


def _host(url: Any) -> str:
    if not isinstance(url, str):
        return ""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


class HttpExecutor:
    """Runs `http` steps: inputs `url`, `method` (GET), `headers`, and `json` or `body`.

    2xx/3xx succeed with ``{"status", "json"}`` or ``{"status", "text", "truncated"}`` (text capped
    at 64 KiB); other statuses fail classified by `status_kind`. Messages never carry headers
    or the query string.
    """

    provider: Final = "http"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """HTTP steps use no tokens."""
        return 0, 0.0

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(host of the URL, "http")."""
        return _host(step.inputs.get("url")), self.provider

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        inputs = ctx.inputs
        host = _host(inputs.get("url"))
        request = self._request(inputs, host)
        method, url = request["method"], request["url"]
        parts = urlsplit(url)
        what = f"{method} {host}{parts.path}"
        if ctx.deadline_s <= 0:
            raise StepFailure(
                ErrorKind.TIMEOUT, f"{what}: deadline already passed", tool=host, provider=self.provider
            )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(ctx.deadline_s):
                response = await self._client.request(timeout=ctx.deadline_s, **request)
        except Exception as exc:
            raise transport_failure(exc, what, tool=host, provider=self.provider) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        kind = status_kind(response.status_code)
        if kind is not None:
            retry_after = (
                parse_retry_after(response.headers, time.time()) if kind is ErrorKind.RATE_LIMITED else None
            )
            raise StepFailure(
                kind,
                f"{what} returned {response.status_code}: {error_snippet(response)}",
                tool=host,
                provider=self.provider,
                retry_after_s=retry_after,
            )
        return ExecutionResult(
            output=_output(response),
            usage=Usage(),
            tool=host,
            provider=self.provider,
            latency_ms=latency_ms,
        )

    def _request(self, inputs: Mapping[str, Any], host: str) -> dict[str, Any]:
        def invalid(message: str) -> StepFailure:
            return StepFailure(ErrorKind.VALIDATION, message, tool=host, provider=self.provider)

        url = inputs.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"} or not host:
            raise invalid(f"url: got {url!r:.80}, expected an http(s) URL with a host")
        method = inputs.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise invalid(f"method: got {method!r:.40}, expected one of {', '.join(sorted(METHODS))}")
        headers = inputs.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise invalid("headers: expected a mapping of strings to strings")
        request: dict[str, Any] = {"method": method.upper(), "url": url, "headers": dict(headers)}
        if "json" in inputs and "body" in inputs:
            raise invalid("json and body: got both, expected at most one")
        if "json" in inputs:
            request["json"] = inputs["json"]
        elif "body" in inputs:
            body = inputs["body"]
            if not isinstance(body, str):
                raise invalid(f"body: got {type(body).__name__}, expected a string")
            request["content"] = body.encode("utf-8")
        return request


def _output(response: httpx.Response) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "").lower()
    if "json" in content_type and response.content:
        try:
            return {"status": response.status_code, "json": json.loads(response.content)}
        except (ValueError, UnicodeDecodeError):
            pass
    raw = response.content
    truncated = len(raw) > MAX_TEXT_BYTES
    encoding = response.encoding or "utf-8"
    try:
        text = raw[:MAX_TEXT_BYTES].decode(encoding, errors="replace")
    except LookupError:
        text = raw[:MAX_TEXT_BYTES].decode("utf-8", errors="replace")
    if truncated:
        text = text.rstrip("\ufffd")  # a character the cut split in two
    return {"status": response.status_code, "text": text, "truncated": truncated}
