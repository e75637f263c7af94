"""The command line in a hostile environment: a full disk, a data dir deleted under a running demo.
Each ends with one clear message and a non-zero exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
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
