"""`fleetforge retention` end to end on the embedded store: dry run, a lagging reader reported and
forgotten, pruning, and bad input refused with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from fleetforge.adapters.stores.sqlite.store import SqliteStore
from tests.acceptance.test_cli import cli


def test_retention_dry_run_forget_reader_and_prune(tmp_path: Path) -> None:
    data = str(tmp_path / "ff")
    run_id = cli("submit", "examples/support.yaml", "--data-dir", data, cwd=Path.cwd()).stdout.strip()
    cli("worker", "--until-idle", "--data-dir", data, cwd=Path.cwd())  # retention on, nothing old enough yet
    store = SqliteStore(Path(data) / "state.db")
    events = len(list(store.iter_outbox()))
    assert events > 0
    store.set_cursor("sink", (0, 0))
    store.close()
    fast = ("--outbox-retention", "1ms", "--run-retention", "1ms", "--reader-lag-limit", "1ms")

    dry = json.loads(cli("retention", "--data-dir", data, "--dry-run", "--json", *fast, cwd=tmp_path).stdout)
    assert dry["dry_run"] and dry["outbox_pruned"] == 0 and dry["lagging"] == ["sink"]
    assert dry["runs_pruned"] == 0  # the sink has not read the run's events yet
    text = cli("retention", "--data-dir", data, *fast, cwd=tmp_path)
    assert "LAGGING" in text.stdout and "--forget-reader sink" in text.stderr

    forgot = json.loads(cli("retention", "--data-dir", data, "--forget-reader", "sink", "--json", cwd=tmp_path).stdout)
    assert forgot == {"forgotten": ["sink"]}
    missing = cli("retention", "--data-dir", data, "--forget-reader", "sink", cwd=tmp_path, ok=False)
    assert missing.returncode == 3 and "no outbox reader 'sink'" in missing.stderr

    done = json.loads(cli("retention", "--data-dir", data, "--json", *fast, cwd=tmp_path).stdout)
    assert (done["outbox_pruned"], done["runs_pruned"]) == (events, 1)
    listed = json.loads(cli("runs", "list", "--data-dir", data, "--json", cwd=tmp_path).stdout)
    assert run_id not in [r["run_id"] for r in listed]


def test_retention_rejects_bad_durations(tmp_path: Path) -> None:
    bad = cli("retention", "--data-dir", str(tmp_path), "--outbox-retention", "soon", cwd=tmp_path, ok=False)
    assert bad.returncode == 2 and "FLEETFORGE_OUTBOX_RETENTION: got 'soon'" in bad.stderr
    bad = cli("retention", "--data-dir", str(tmp_path), "--reader-lag-limit", "off", cwd=tmp_path, ok=False)
    assert bad.returncode == 2 and "FLEETFORGE_READER_LAG_LIMIT" in bad.stderr
