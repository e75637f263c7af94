"""Finding runs by id prefix, following a run's events, and the demo's simulated event times."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetforge.adapters.stores.rows import prefix_end
from fleetforge.core.runs import MAX_CANDIDATES, AmbiguousRunId, follow_run, resolve_run_id
from fleetforge.core.runtime import Runtime
from fleetforge.core.simtime import SimulatedWindow, window_offsets
from fleetforge.domain.envelope import parse_ts
from fleetforge.domain.errors import ConfigError, NotFoundError
from tests.fakes import Harness

STEP = {"id": "a", "type": "tool", "inputs": {"tool": "calculator", "args": {"expression": "1"}}}


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "state.db")


def test_prefix_end_is_the_least_string_past_the_prefix() -> None:
    assert prefix_end("ab") == "ac" and prefix_end("a-") == "a."
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"  # surrogates are skipped
    top = prefix_end("\U0010ffff")
    assert top > "\U0010ffff" + "z" * 40


def test_resolve_run_id_takes_a_full_id_or_a_unique_prefix(h: Harness) -> None:
    for rid in ("abc-1", "abc-2", "abd-1", "abc"):
        h.rt.submit({"steps": [STEP]}, run_id=rid)
    assert resolve_run_id(h.store, "abc") == "abc"  # a full id wins over longer ids it prefixes
    assert resolve_run_id(h.store, "abd") == "abd-1"
    assert resolve_run_id(h.store, "abc-2") == "abc-2"
    with pytest.raises(AmbiguousRunId) as amb:
        resolve_run_id(h.store, "ab")
    assert amb.value.candidates == ["abc", "abc-1", "abc-2", "abd-1"]
    assert "'ab' matches 4 runs: abc, abc-1, abc-2, abd-1" in str(amb.value)
    with pytest.raises(NotFoundError, match="no run 'abe'"):
        resolve_run_id(h.store, "abe")
    for bad in ("", "a\nb", "\x00"):
        with pytest.raises(ConfigError, match="run id: got"):
            resolve_run_id(h.store, bad)


def test_an_ambiguous_prefix_names_at_most_ten_candidates(h: Harness) -> None:
    for i in range(MAX_CANDIDATES + 3):
        h.rt.submit({"steps": [STEP]}, run_id=f"run-{i:02d}")
    with pytest.raises(AmbiguousRunId) as amb:
        resolve_run_id(h.store, "run-")
    assert len(amb.value.candidates) == MAX_CANDIDATES and str(amb.value).endswith(
        ", ...; type more characters of the id")
    assert "more than 10 runs" in str(amb.value)


def test_follow_run_yields_one_runs_events_as_they_commit_until_it_ends(h: Harness) -> None:
    rid = h.rt.submit({"steps": [STEP, {**STEP, "id": "b", "depends_on": ["a"]}]})
    other = h.rt.submit({"steps": [STEP]})
    sleeps: list[float] = []

    def step(poll_s: float) -> None:  # each poll, the fleet moves on by one transaction
        sleeps.append(poll_s)
        for claim in h.claim():
            h.advance(ms=5)
            h.finish(claim)

    got = list(follow_run(h.store, rid, poll_s=0.25, sleep=step))
    assert [e.kind for e in got] == h.kinds(rid) and got[-1].kind == "run_succeeded"
    assert {e.run_id for e in got} == {rid} and sleeps and set(sleeps) == {0.25}
    assert [e.id for e in got] == [e["id"] for e in h.events(rid)]
    assert h.kinds(other)[-1] == "run_succeeded"


def test_follow_run_ends_for_a_finished_run_whose_end_event_is_gone(h: Harness) -> None:
    rid = h.rt.submit({"steps": [STEP]})
    h.drain()
    last = list(h.store.iter_outbox())[-1].position  # as if retention had pruned everything up to here

    def never(_: float) -> None:
        raise AssertionError("a finished run is not waited for")

    assert list(follow_run(h.store, rid, after=last, sleep=never)) == []
    with pytest.raises(NotFoundError):
        list(follow_run(h.store, "nope", sleep=never))


def test_window_offsets_are_deterministic_sorted_and_inside_the_window() -> None:
    a = window_offsets(40, 7, 3_600_000_000)
    assert a == window_offsets(40, 7, 3_600_000_000) and a == sorted(a)
    assert all(0 <= o < 3_600_000_000 for o in a) and a[-1] - a[0] > 1_800_000_000
    assert a != window_offsets(40, 8, 3_600_000_000)


def test_simulated_window_moves_each_placed_runs_event_times_by_one_constant(h: Harness) -> None:
    now = h.now()
    window = SimulatedWindow(2, seed=3, window_us=3_600_000_000, end_us=now)
    rt = Runtime(window.store(h.store), executors=h.rt.executors, packs=h.rt.packs, clock=h.clock)
    h.rt = rt
    placed = ["r0", "r1"]
    for i, rid in enumerate(placed):
        window.place(rid, i, now)
        rt.submit({"steps": [STEP, {**STEP, "id": "b", "depends_on": ["a"]}]}, run_id=rid)
    plain = rt.submit({"steps": [STEP]}, run_id="plain")
    h.advance(ms=30)
    h.drain()
    records = list(h.store.iter_outbox())
    assert {r.created_us for r in records} <= set(range(now, h.now() + 1))  # the outbox's own time is real
    for i, rid in enumerate(placed):
        times = [parse_ts(e["occurred_at"]) for e in h.events(rid)]
        assert times[0] == window.starts[i] and times == sorted(times)
        assert times[-1] - times[0] >= 30_000  # real durations kept
        assert window.starts[i] < now
    assert parse_ts(h.events(plain)[0]["occurred_at"]) == now
    assert h.store.get_run("r0") is not None and h.store.get_run("r0").created_us == now  # type: ignore[union-attr]
