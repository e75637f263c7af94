"""Redaction means nothing un-redacted is kept: a fleet of runs whose packs redact PII, with PII in
their labels, prompts, tool outputs and failure messages, runs on SQLite and on PostgreSQL while the
outbox streams into ClickHouse (chDB) and to loopback LangSmith, Langfuse and Phoenix servers. Then
every byte is searched for the email, the card (with and without spaces) and the SSN: the SQLite files,
every row of every table of the PostgreSQL schema, every row of every chDB table and every file of the
chDB data dir (its blocks decompressed), the log records and every exporter request body.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lz4.block  # type: ignore[import-untyped]
import psycopg
import pytest
import zstandard
from psycopg import sql

from fleetforge.adapters.executors.build import build_executors
from fleetforge.adapters.executors.tools import ToolError, ToolRegistry, register_demo_tools
from fleetforge.adapters.readers.clickhouse.embedded import EmbeddedAnalytics
from fleetforge.adapters.readers.traces import start_exporters
from fleetforge.adapters.stores.postgres.store import PostgresStore
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from fleetforge.core.policies.registry import default_packs
from fleetforge.core.pricing import PriceTable
from fleetforge.core.runtime import Runtime
from fleetforge.domain.models import ErrorKind
from fleetforge.ports.store import Store
from tests.conftest import PG_DSN, need_postgres, unique_schema
from tests.exporters_support import LoopbackPlatform, write_manifests

EMAIL, CARD, SSN = "alice.smith@example.com", "4111 1111 1111 1111", "123-45-6789"
NEEDLES = {"email": EMAIL, "card": CARD, "card without spaces": CARD.replace(" ", ""), "ssn": SSN}
LABEL = f"contact {EMAIL} card {CARD}"
PROMPT = f"Refund the customer {EMAIL}: card {CARD}, SSN {SSN}."
PII = [{"name": "pii_redaction", "mode": "redact"}]
ONE_RETRY = {"max_attempts": 2, "retry_backoff_ms": 1, "retry_backoff_factor": 1.0}
EXPORTERS = ("langsmith", "langfuse", "phoenix")


# -- tools that handle PII ------------------------------------------------------------------------------


def _customer(args: dict[str, Any]) -> dict[str, Any]:
    """Returns PII (the output-redaction case)."""
    return {"email": EMAIL, "card": CARD, "ssn": SSN, "note": f"{EMAIL} paid with {CARD.replace(' ', '')}"}


def _flaky(args: dict[str, Any]) -> dict[str, Any]:
    """Fails its first attempt with PII in the message (retried), then returns PII."""
    if args["_attempt"] == 1:
        raise ToolError(ErrorKind.RATE_LIMITED, f"quota exceeded for {EMAIL} (ssn {SSN})")
    return {"billed": CARD}


def _crashy(args: dict[str, Any]) -> dict[str, Any]:
    """Crashes its first attempt with PII in the exception, then succeeds."""
    if args["_attempt"] == 1:
        raise RuntimeError(f"cannot charge {CARD} for {EMAIL}")
    return {"ok": True, "receipt_to": EMAIL}


def _broken(args: dict[str, Any]) -> dict[str, Any]:
    """Always fails for good, echoing its input (a final failure: the run fails)."""
    raise ValueError(f"bad customer record {args.get('who')!r} ssn={SSN}")


def fleet() -> list[dict[str, Any]]:
    """Run-level and step-level packs; PII in labels, prompts, messages, tool args, outputs and errors."""
    llm = {"model": "sim-small", "max_tokens": 32}
    return [
        {"workspace": "acme", "app": "refunds", "labels": {"workflow": LABEL, "ticket": f"from {EMAIL}"},
         "packs": PII, "seed": 1,
         "steps": [
             {"id": "ask", "type": "llm", "inputs": {**llm, "prompt": PROMPT}},
             {"id": "lookup", "type": "tool", "depends_on": ["ask"],
              "inputs": {"tool": "customer", "args": {"email": EMAIL}}},
             {"id": "bill", "type": "tool", "depends_on": ["ask"], "execution": ONE_RETRY,
              "inputs": {"tool": "flaky", "args": {"card": CARD}}},
             {"id": "charge", "type": "tool", "depends_on": ["lookup"], "execution": ONE_RETRY,
              "inputs": {"tool": "crashy", "args": {"ssn": SSN}}},
         ]},
        {"workspace": "acme", "app": "support", "labels": {"workflow": LABEL}, "seed": 2,
         "steps": [
             {"id": "chat", "type": "llm", "policy": {"packs": PII},
              "inputs": {**llm, "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": PROMPT}]}},
             {"id": "lookup", "type": "tool", "depends_on": ["chat"], "policy": {"packs": PII},
              "inputs": {"tool": "customer", "args": {"card": CARD}}},
         ]},
        {"workspace": "globex", "app": "billing", "labels": {"workflow": "billing", "owner": SSN},
         "packs": PII, "seed": 3,
         "steps": [
             {"id": "broken", "type": "tool", "inputs": {"tool": "broken", "args": {"who": EMAIL}}},
             {"id": "after", "type": "llm", "depends_on": ["broken"], "inputs": {**llm, "prompt": PROMPT}},
         ]},
    ]


def tools() -> ToolRegistry:
    registry = register_demo_tools(ToolRegistry())
    registry.register("customer", _customer, timeout_s=5.0)
    registry.register("flaky", _flaky, timeout_s=5.0, wants_context=True)
    registry.register("crashy", _crashy, timeout_s=5.0, wants_context=True)
    registry.register("broken", _broken, timeout_s=5.0)
    return registry


async def _run(store: Store) -> list[str]:
    async with httpx.AsyncClient() as client:
        executors = build_executors(client=client, tools=tools(), prices=PriceTable(), llm_base_url=None,
                                    llm_api_key=None, sim_sleep=False)
        runtime = Runtime(store, executors=executors, packs=default_packs())
        ids = [runtime.submit(spec) for spec in fleet()]
        await runtime.worker("w1", poll_interval_s=0.005).run(until_idle=True)
        return ids


# -- the backends -----------------------------------------------------------------------------------------


class Backend:
    """Opens stores on one database and reads every row of it back as text."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        self.tmp_path = tmp_path
        self.schema = unique_schema()
        self.opened: list[Store] = []

    def open(self) -> Store:
        store: Store
        if self.name == "sqlite":
            store = SqliteStore(self.tmp_path / "state.db")
        else:
            store = PostgresStore(PG_DSN, schema=self.schema)
        self.opened.append(store)
        return store

    def dump(self) -> dict[str, str]:
        """Where -> text of everything the database holds."""
        if self.name == "sqlite":
            import sqlite3

            out = {f"file {p.name}": p.read_bytes().decode("latin-1")
                   for p in sorted(self.tmp_path.glob("state.db*"))}
            with sqlite3.connect(self.tmp_path / "state.db") as conn:
                names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                for t in names:
                    out[f"table {t}"] = "\n".join(repr(r) for r in conn.execute(f'SELECT * FROM "{t}"'))
            return out
        out = {}
        with psycopg.connect(PG_DSN) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.schema,))]
            for t in names:
                q = sql.SQL("SELECT row_to_json(t)::text FROM {}.{} AS t").format(
                    sql.Identifier(self.schema), sql.Identifier(t))
                out[f"table {t}"] = "\n".join(r[0] for r in conn.execute(q))
        return out

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.name == "postgres":
            cleanup = PostgresStore(PG_DSN, schema=self.schema)
            cleanup.drop_schema()
            cleanup.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        need_postgres()
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


# -- reading every byte -----------------------------------------------------------------------------------


def _clickhouse_blocks(raw: bytes) -> bytes | None:
    """The decompressed content of a ClickHouse compressed file (16-byte checksum, method, sizes,
    data per block), or None when `raw` is not one."""
    out, pos = bytearray(), 0
    while pos < len(raw):
        if pos + 25 > len(raw):
            return None
        method = raw[pos + 16]
        size = int.from_bytes(raw[pos + 17:pos + 21], "little")
        plain_size = int.from_bytes(raw[pos + 21:pos + 25], "little")
        body = raw[pos + 25:pos + 16 + size]
        if size < 9 or pos + 16 + size > len(raw):
            return None
        try:
            if method == 0x82:
                out += lz4.block.decompress(body, uncompressed_size=plain_size)
            elif method == 0x90:
                out += zstandard.ZstdDecompressor().decompress(body, max_output_size=plain_size)
            elif method == 0x02:
                out += body
            else:
                return None
        except Exception:
            return None
        pos += 16 + size
    return bytes(out)


def chdb_files(data_dir: Path) -> dict[str, str]:
    """Every file under the chDB data dir, as stored and (for compressed column files) decompressed."""
    out = {}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        name = str(path.relative_to(data_dir))
        out[f"chdb file {name}"] = raw.decode("latin-1")
        plain = _clickhouse_blocks(raw) if raw else None
        if plain is not None:
            out[f"chdb file {name} (decompressed)"] = plain.decode("latin-1")
    return out


def chdb_tables(analytics: Any) -> dict[str, str]:
    """Every row of every table (and view) of every user database of chDB, each column as text."""
    tables = analytics.rows("SELECT database, name FROM system.tables WHERE database NOT IN "
                            "('system', 'INFORMATION_SCHEMA', 'information_schema', '') AND NOT is_temporary")
    assert tables, "chDB holds no tables"
    return {f"chdb table {db}.{t}": "\n".join(repr(r) for r in analytics.rows(f"SELECT * FROM `{db}`.`{t}`"))
            for db, t in tables}


def body_text(body: bytes) -> str:
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return body.decode("latin-1")


def findings(where: dict[str, str]) -> list[str]:
    """'what in where' for every needle found; the needles are ASCII, so latin-1 text holds them as bytes."""
    return [f"{what} in {place}" for place, text in where.items() for what, needle in NEEDLES.items()
            if needle in text]


# -- the test -----------------------------------------------------------------------------------------------


def test_no_byte_anywhere_holds_the_pii(backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    platforms = {name: LoopbackPlatform() for name in EXPORTERS}
    write_manifests(tmp_path / "plugins", EXPORTERS, flush_interval_ms=100, timeout_s=2.0, max_backoff_s=0.2,
                    poll_interval_ms=50)
    env = {"FLEETFORGE_TRACE_EXPORTERS": ",".join(EXPORTERS), "FLEETFORGE_PLUGINS_DIR": str(tmp_path / "plugins"),
           "LANGSMITH_API_URL": platforms["langsmith"].url, "LANGSMITH_API_KEY": "lsv2_pt_test",
           "LANGFUSE_BASE_URL": platforms["langfuse"].url, "LANGFUSE_PUBLIC_KEY": "pk-lf-test",
           "LANGFUSE_SECRET_KEY": "sk-lf-test", "PHOENIX_BASE_URL": platforms["phoenix"].url,
           "PHOENIX_API_KEY": "phoenix-test", "PHOENIX_WORKSPACE": "pii"}
    store = backend.open()
    store.migrate()
    exporters = start_exporters(backend.open(), env)
    try:
        with EmbeddedAnalytics(tmp_path / "clickhouse") as analytics:
            analytics.apply()
            analytics.start(backend.open())
            ids = asyncio.run(_run(store))
            stats = analytics.stop()
            assert stats is not None and stats.failures == 0
            assert exporters.wait_idle(30)
            where = chdb_tables(analytics.analytics)
        assert exporters.stop(10)
    finally:
        for p in platforms.values():
            p.close()

    # what ran: every case happened (output PII, retried and crashed attempts, a final failure)
    runs = {rid: store.get_run(rid) for rid in ids}
    assert [str(r.status) for r in runs.values() if r is not None] == ["succeeded", "succeeded", "failed"]
    steps = {s.step_id: s for s in store.get_steps(ids[0])}
    assert steps["lookup"].output == {"email": "[REDACTED:email]", "card": "[REDACTED:credit_card]",
                                      "ssn": "[REDACTED:ssn]", "note": "[REDACTED:email] paid with "
                                      "[REDACTED:credit_card]"}
    assert steps["bill"].attempt == 2 and steps["charge"].attempt == 2
    assert runs[ids[0]] is not None and runs[ids[0]].labels["workflow"] == (  # type: ignore[union-attr]
        "contact [REDACTED:email] card [REDACTED:credit_card]")

    where |= backend.dump()
    where |= chdb_files(tmp_path / "clickhouse")
    where["log records"] = caplog.text + "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}"
                                                    for r in caplog.records)
    out, err = capfd.readouterr()
    where["stdout and stderr"] = out + err
    for name, platform in platforms.items():
        assert platform.received, f"{name} received nothing"
        for i, r in enumerate(platform.received):
            where[f"{name} request {i} {r.path}"] = body_text(r.body) + repr(r.headers) + r.path

    # the search reads what it claims to: the redaction markers and a run id are found where they must be
    marker = "[REDACTED:email]"
    assert marker in where["table runs"] and marker in where["table outbox"]
    assert any(marker in t for k, t in where.items() if k.startswith("chdb table telemetry.run_events"))
    assert any(ids[0] in t for k, t in where.items() if k.startswith("chdb file") and "decompressed" in k)
    for name in EXPORTERS:
        assert any("REDACTED" in t for k, t in where.items() if k.startswith(f"{name} request")), name
    if backend.name == "sqlite":
        assert marker in where["file state.db"] + where.get("file state.db-wal", "")

    assert findings(where) == []


def test_the_search_finds_pii_when_a_run_does_not_redact(tmp_path: Path) -> None:
    """The control: without pii_redaction the same fleet leaves the PII in the store, so the search works."""
    backend = Backend("sqlite", tmp_path)
    store = backend.open()
    store.migrate()
    specs = fleet()
    for spec in specs:
        spec.pop("packs", None)
        for step in spec["steps"]:
            step.pop("policy", None)

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            executors = build_executors(client=client, tools=tools(), prices=PriceTable(), llm_base_url=None,
                                        llm_api_key=None, sim_sleep=False)
            runtime = Runtime(store, executors=executors, packs=default_packs())
            for spec in specs:
                runtime.submit(spec)
            await runtime.worker("w1", poll_interval_s=0.005).run(until_idle=True)

    asyncio.run(go())
    found = findings(backend.dump())
    backend.close()
    for what in NEEDLES:
        assert any(f.startswith(f"{what} in table ") for f in found), what
    for table in ("runs", "steps", "outbox"):
        assert any(f.endswith(f" in table {table}") for f in found), table
