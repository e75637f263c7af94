"""Event ids: RFC 9562 version 7 UUIDs, unique, time-ordered to the millisecond, and unshared across fork."""

from __future__ import annotations

import os
import time
import uuid

from fleetforge.domain.envelope import new_event_id


def test_ids_are_version_7_uuids_in_canonical_text() -> None:
    for _ in range(2000):
        text = new_event_id()
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (7, uuid.RFC_4122, text)


def test_ids_carry_the_time_and_sort_by_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    first = new_event_id()
    time.sleep(0.003)
    second = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(first).int >> 80 <= uuid.UUID(second).int >> 80 <= after
    assert first < second


def test_ids_are_unique_in_a_process_and_across_a_fork() -> None:
    mine = {new_event_id() for _ in range(50_000)}
    assert len(mine) == 50_000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: same generator state as the parent unless it was seeded again
        os.close(read)
        os.write(write, "\n".join(new_event_id() for _ in range(200)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split("\n")
    os.waitpid(pid, 0)
    parent = [new_event_id() for _ in range(200)]
    tails = {i[15:] for i in parent}  # the random part: version digit onwards, without the time
    assert len(child) == 200 and not tails & {i[15:] for i in child}
