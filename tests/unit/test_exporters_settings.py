"""Exporter discovery: FLEETFORGE_TRACE_EXPORTERS, manifests, credentials and endpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleetforge.adapters.readers.traces.discovery import Delivery, check_url, discover
from tests.exporters_support import write_manifests

REPO = Path(__file__).resolve().parents[2]
CREDS = {
    "LANGSMITH_API_KEY": "lsv2-secret-0001",
    "LANGFUSE_PUBLIC_KEY": "pk-lf-0002",
    "LANGFUSE_SECRET_KEY": "sk-lf-secret-0003",
    "PHOENIX_API_KEY": "phx-secret-0004",
}


def env(exporters: str, plugins: Path, **extra: str) -> dict[str, str]:
    return {"FLEETFORGE_TRACE_EXPORTERS": exporters, "FLEETFORGE_PLUGINS_DIR": str(plugins), **CREDS, **extra}


def test_not_set_means_no_exporter_and_the_collector_stays_default(tmp_path: Path) -> None:
    found = discover({}, tmp_path)
    assert found.requested == () and not found.active and not found.skipped
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in found.summary


def test_the_shipped_example_manifests_activate_all_three() -> None:
    found = discover({**CREDS, "FLEETFORGE_TRACE_EXPORTERS": " LangSmith, langfuse ,phoenix,langfuse"},
                     REPO / "plugins")
    assert [c.name for c in found.active] == ["langsmith", "langfuse", "phoenix"]
    assert not found.skipped
    ls, lf, px = found.active
    assert ls.base_url == "https://api.smith.langchain.com" and ls.headers["x-api-key"] == CREDS["LANGSMITH_API_KEY"]
    assert lf.base_url == "https://cloud.langfuse.com"
    assert lf.headers["Authorization"].startswith("Basic ") and lf.headers["x-langfuse-ingestion-version"] == "4"
    assert px.headers["Authorization"] == f"Bearer {CREDS['PHOENIX_API_KEY']}"
    assert px.headers["api_key"] == CREDS["PHOENIX_API_KEY"]
    assert px.options["project"] == "fleetforge" and ls.options["ingest"] == "multipart"
    assert ls.consumer == "exporter-langsmith"
    for c in found.active:
        assert all(secret not in repr(c) for secret in CREDS.values())


def test_a_requested_exporter_without_manifest_stays_off_and_says_why(tmp_path: Path) -> None:
    write_manifests(tmp_path, ["phoenix"])
    found = discover(env("langsmith,phoenix", tmp_path), None)
    assert [c.name for c in found.active] == ["phoenix"]
    (skip,) = found.skipped
    assert skip.name == "langsmith" and skip.warning
    assert str(tmp_path / "exporters" / "langsmith.toml") in skip.reason
    assert "OpenTelemetry collector remains the default" in skip.reason


def test_default_plugins_dir_is_relative_to_the_working_directory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write_manifests(tmp_path / "plugins", ["langsmith"])
    monkeypatch.chdir(tmp_path)
    found = discover({"FLEETFORGE_TRACE_EXPORTERS": "langsmith", **CREDS})
    assert [c.name for c in found.active] == ["langsmith"]


@pytest.mark.parametrize(("text", "problem"), [
    ('name = "phoenix"\nenabled = maybe\n', "malformed ("),
    ('name = "langsmith"\n', "expected name = \"phoenix\""),
    ('name = "phoenix"\nenabled = "yes"\n', "expected true or false"),
    ('name = "phoenix"\ncolour = "red"\n', "unknown key 'colour'"),
    ('name = "phoenix"\n[delivery]\nbatch_size = 0\n', "delivery.batch_size = 0, expected a positive whole"),
    ('name = "phoenix"\n[delivery]\ntimeout_s = inf\n', "delivery.timeout_s = inf, expected a positive number <= 600"),
    ('name = "phoenix"\n[delivery]\ntimeout_s = nan\n', "delivery.timeout_s = nan, expected a positive number"),
    ('name = "phoenix"\n[delivery]\nqueue_size = 1e12\n',
     "delivery.queue_size = 1000000000000.0, expected a positive whole number <= 1000000"),
    ('name = "phoenix"\n[delivery]\nqueue_size = inf\n', "delivery.queue_size = inf, expected a positive whole"),
    ('name = "phoenix"\n[delivery]\nread_batch = 99999999999999999999\n', "expected a positive whole number <= 100000"),
    ('name = "phoenix"\n[delivery]\nmax_backoff_s = 1e9\n', "expected a positive number <= 3600"),
    ('name = "phoenix"\n[delivery]\nspeed = 1\n', "unknown key delivery.speed"),
    ('name = "phoenix"\n[options]\ningest = "batch"\n', "unknown key options.ingest"),
])
def test_malformed_manifests_keep_only_that_exporter_off(tmp_path: Path, text: str, problem: str) -> None:
    write_manifests(tmp_path, ["langfuse"])
    (tmp_path / "exporters" / "phoenix.toml").write_text(text, encoding="utf-8")
    found = discover(env("phoenix,langfuse", tmp_path))
    assert [c.name for c in found.active] == ["langfuse"]
    (skip,) = found.skipped
    assert skip.name == "phoenix" and problem in skip.reason and "stays off" in skip.reason


def test_disabled_by_manifest_is_information_not_a_warning(tmp_path: Path) -> None:
    (tmp_path / "exporters").mkdir()
    (tmp_path / "exporters" / "langfuse.toml").write_text('name = "langfuse"\nenabled = false\n')
    found = discover(env("langfuse", tmp_path))
    assert not found.active and not found.skipped[0].warning


def test_unknown_names_are_reported(tmp_path: Path) -> None:
    found = discover(env("datadog", tmp_path))
    assert "'datadog'" in found.skipped[0].reason and "langfuse, langsmith, phoenix" in found.skipped[0].reason


@pytest.mark.parametrize(("name", "unset", "needs"), [
    ("langsmith", ["LANGSMITH_API_KEY"], "LANGSMITH_API_KEY"),
    ("langfuse", ["LANGFUSE_SECRET_KEY"], "LANGFUSE_SECRET_KEY"),
    ("langfuse", ["LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"], "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY"),
    ("phoenix", ["PHOENIX_API_KEY"], "PHOENIX_API_KEY"),
])
def test_missing_credentials_keep_the_exporter_off(tmp_path: Path, name: str, unset: list[str], needs: str) -> None:
    write_manifests(tmp_path, [name])
    e = env(name, tmp_path)
    for var in unset:
        del e[var]
    found = discover(e)
    assert not found.active and needs in found.skipped[0].reason


def test_phoenix_on_loopback_needs_no_key(tmp_path: Path) -> None:
    write_manifests(tmp_path, ["phoenix"])
    e = env("phoenix", tmp_path, PHOENIX_BASE_URL="http://127.0.0.1:6006/", PHOENIX_WORKSPACE="team-a")
    del e["PHOENIX_API_KEY"]
    (c,) = discover(e).active
    assert c.base_url == "http://127.0.0.1:6006" and "Authorization" not in c.headers
    assert c.options["project"] == "team-a"


@pytest.mark.parametrize("url", ["http://phoenix.internal:6006", "ftp://x.example", "https://user:pw@x.example",
                                 "https://x.example/?token=1", "not a url"])
def test_only_https_or_loopback_http_endpoints(tmp_path: Path, url: str) -> None:
    write_manifests(tmp_path, ["phoenix"])
    found = discover(env("phoenix", tmp_path, PHOENIX_BASE_URL=url))
    assert not found.active
    reason = found.skipped[0].reason
    assert "PHOENIX_BASE_URL" in reason and "https://" in reason and "pw@" not in reason


@pytest.mark.parametrize("url", ["https://cloud.langfuse.com", "http://localhost:3000", "http://[::1]:3000",
                                 "http://127.0.0.2:3000/base/"])
def test_accepted_endpoints(url: str) -> None:
    assert check_url("X", url) == url.rstrip("/")


def test_langsmith_options_from_env_override_the_manifest(tmp_path: Path) -> None:
    write_manifests(tmp_path, ["langsmith"])
    dataset = "2a1e4d6c-0b8e-4f0e-9f51-7a6b5d3c2e10"
    (c,) = discover(env("langsmith", tmp_path, LANGSMITH_PROJECT="prod", LANGSMITH_DATASET_ID=dataset,
                        LANGSMITH_WORKSPACE_ID="ws-1")).active
    assert c.options == {"project": "prod", "ingest": "multipart", "dataset_id": dataset}
    assert c.headers["x-tenant-id"] == "ws-1"
    bad = discover(env("langsmith", tmp_path, LANGSMITH_DATASET_ID="my-dataset"))
    assert not bad.active and "LANGSMITH_DATASET_ID" in bad.skipped[0].reason


def test_delivery_settings_from_the_manifest(tmp_path: Path) -> None:
    write_manifests(tmp_path, ["langfuse"], batch_size=7, timeout_s=1.5, flush_interval_ms=100)
    (c,) = discover(env("langfuse", tmp_path)).active
    assert c.delivery == Delivery(batch_size=7, timeout_s=1.5, flush_interval_ms=100)


def test_report_logs_each_reason_once_without_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_manifests(tmp_path, ["langfuse"])
    found = discover(env("langsmith,langfuse,nope", tmp_path))
    with caplog.at_level(logging.INFO, logger="fleetforge.exporters"):
        found.report()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all(s not in caplog.text for s in CREDS.values())
