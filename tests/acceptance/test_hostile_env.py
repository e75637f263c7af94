"""The command line in a hostile environment: a full disk, a data dir deleted under a running demo.
Each ends with one clear message and a non-zero exit code, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_bad_input import run_cli


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: room for the demo's first writes, not for the whole fleet (needs root)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_demo_on_a_full_disk_says_so_once(small_disk: Path, tmp_path: Path) -> None:
    proc = run_cli(["demo", "--no-serve", "--data-dir", str(small_disk)], cwd=tmp_path, env={})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "cannot rollback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: disk full at {small_disk}"), proc.stderr
    assert "free space or point --data-dir elsewhere" in errors[0]


def test_demo_notices_its_chdb_dir_deleted_mid_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETFORGE_", "OTEL_"))}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb", OTEL_EXPORTER_PROMETHEUS_PORT="0")
    proc = subprocess.Popen([sys.executable, "-m", "fleetforge", "demo", "--no-serve", "--json", "--runs", "400",
                             "--data-dir", str(data_dir)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (data_dir / "state.db").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the fleet is being submitted or run
        gone = data_dir.parent / "clickhouse-deleted"
        (data_dir / "clickhouse").rename(gone)  # at once, as a removal looks to the process using it
        shutil.rmtree(gone, ignore_errors=True)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert "never retrieved" not in stderr
    assert f"error: the chDB data dir {data_dir / 'clickhouse'} was deleted or replaced" in " ".join(stderr.split())
    assert stdout == ""  # no summary that the analytics could not be held against


def test_doctor_on_a_corrupt_sqlite_file_says_it_is_not_a_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "state.db").write_bytes(b"this is not SQLite at all" * 400)
    proc = run_cli(["doctor", "--json", "--data-dir", str(data_dir)], cwd=tmp_path, env={})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    (store,) = [c for c in json.loads(proc.stdout)["checks"] if c["check"] == "state store"]
    assert store["verdict"] == "FAIL"
    assert store["detail"].startswith(f"{data_dir / 'state.db'} is not a valid SQLite database")
    assert "move" in store["fix"] and "fleetforge migrate" in store["fix"]
    assert "host, port" not in store["fix"]
