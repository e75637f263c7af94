"""The README's Python example runs as printed: pasted into a file, in an empty folder, twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Python\n"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python section has one complete example"
    return str(blocks[0])


def test_readme_python_example_runs(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(python_example(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETFORGE_")}

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    first = run()
    run_id, status, _ = first[0].split(" ", 2)
    assert status == "succeeded"
    assert "account: {'customer_id': 'c-42', 'tier': 'pro', 'orders': ['o-1', 'o-2']}" in first
    assert "subject: {'result': 'Your open orders o-1 and'}" in first
    kinds = [line.split()[0] for line in first if not line.startswith((run_id, "account:", "reply:", "subject:"))]
    assert kinds[0] == "run_submitted" and kinds[-1] == "run_succeeded" and kinds.count("tool_call") == 2
    assert (tmp_path / ".fleetforge" / "state.db").is_file()
    second = run()  # the same idempotency key: the same run, nothing run again
    assert second == first
