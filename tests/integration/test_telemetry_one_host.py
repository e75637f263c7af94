"""Two `fleetforge worker` processes on one host and one metrics port (the default setup of a second
worker): the one that could not serve the port stays up and leaves the telemetry lease to the one that
does, so the fleet's series are on the port Prometheus scrapes. SQLite data dir."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from fleetforge import Client
from fleetforge.adapters.stores.sqlite.store import SqliteStore
from tests.integration.test_telemetry_distributed import _fleet_series
from tests.integration.test_worker_kill import REPO, _cli
from tests.support import until


def _no_otlp() -> dict[str, str]:
    """This environment without OTLP exporters: the scrape endpoint is the only way out."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_EXPORTER_OTLP", "OTEL_TRACES"))}


def _worker(data: Path, port: int, name: str, tmp: Path) -> subprocess.Popen[bytes]:
    env = {**_no_otlp(), "OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "FLEETFORGE_RETENTION": "false",
           "FLEETFORGE_TELEMETRY_LEASE_MS": "1000"}
    with (tmp / f"{name}.out").open("wb") as out:
        return subprocess.Popen([*_cli(), "worker", "--data-dir", str(data), "--id", name], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def test_the_worker_without_the_port_leaves_the_fleet_series_to_the_one_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SqliteStore(data / "state.db")
    store.migrate()
    taken = socket.socket()  # the port is taken while the first worker starts: it cannot serve it
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    procs = [_worker(data, port, "without", tmp_path)]
    try:
        log = tmp_path / "without.out"
        until(lambda: f"cannot serve Prometheus metrics on 127.0.0.1:{port}" in log.read_text(errors="replace"), 60)
        time.sleep(2.0)  # twice the lease: a reader here would hold it by now
        taken.close()
        procs.append(_worker(data, port, "with", tmp_path))
        client = Client(store=store)
        handles = [client.submit({"workspace": "ops", "app": "one-host", "seed": i, "steps": [
            {"id": "a", "type": "tool", "inputs": {"tool": "noop", "args": {}}}]}) for i in range(5)]
        assert [h.wait(60).status for h in handles] == ["succeeded"] * 5
        until(lambda: _fleet_series(port), 30)
        assert "telemetry reader is not started" in log.read_text(errors="replace")
        assert [p.poll() for p in procs] == [None, None], [(tmp_path / f"{n}.out").read_text() for n in
                                                           ("without", "with")]
    finally:
        taken.close()
        for p in procs:
            p.terminate()
            p.wait(60)
        store.close()


def test_fleetforge_telemetry_with_nowhere_to_publish_exits_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([*_cli(), "telemetry", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
                              cwd=REPO, env=_no_otlp(), capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    said = " ".join(done.stderr.decode(errors="replace").split())
    assert done.returncode == 2, said
    assert "the telemetry reader would publish nothing: the Prometheus port is taken (pass another --port" in said
    assert "Traceback" not in said
