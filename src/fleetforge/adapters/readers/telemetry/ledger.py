"""The telemetry reader's cumulative state: what every fleet metric has counted so far, per attribute set.

Counters are reported straight from this state (observable counters). Histograms and gauges are recorded
into SDK instruments *and* tallied here; a new lease holder replays the tally into fresh instruments, so
cumulative series continue where the previous holder left them instead of restarting at 0. A histogram
bucket that holds `n` values summing to `s` is replayed as `n` values of `s / n` (the mean lies inside the
bucket): bucket counts, `_count` and `_sum` come back exactly.

Per-run series (those carrying `run_id`) are forgotten a retention window after their run ended.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from fleetforge.domain.names import Attr

__all__ = ["GaugeTally", "HistogramTally", "Ledger", "TalliedGauge", "TalliedHistogram", "Tally"]

AttrValue = str | int | float | bool
AttrKey = tuple[tuple[str, AttrValue], ...]
_RUN_ID = str(Attr.RUN_ID)


def _key(attrs: dict[str, AttrValue]) -> AttrKey:
    return tuple(attrs.items())


def _dump_key(key: AttrKey) -> list[list[AttrValue]]:
    return [[k, v] for k, v in key]


def _load_key(raw: Iterable[Iterable[Any]]) -> AttrKey:
    return tuple((str(k), v) for k, v in raw)


def _run_of(key: AttrKey) -> str | None:
    for k, v in key:
        if k == _RUN_ID:
            return str(v)
    return None


class Tally:
    """Counts per attribute set, reported by an asynchronous counter: a dict update per event instead of an
    SDK measurement (the SDK's per-measurement cost dominates otherwise). `visible()` False reports none."""

    def __init__(self, visible: Callable[[], bool] = lambda: True) -> None:
        self._counts: dict[AttrKey, int] = {}
        self._lock = threading.Lock()
        self.visible = visible

    def add(self, key: AttrKey) -> None:
        """Count one for the attribute set `key`: (name, value) pairs, always in one order per caller."""
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.visible():
            return []
        with self._lock:
            items = list(self._counts.items())
        return [Observation(n, dict(key)) for key, n in items]

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def dump(self) -> list[Any]:
        with self._lock:
            return [[_dump_key(k), n] for k, n in self._counts.items()]

    def load(self, raw: Iterable[Any]) -> None:
        with self._lock:
            self._counts = {_load_key(k): int(n) for k, n in raw}


@dataclass(slots=True)
class _Buckets:
    counts: list[int]
    sums: list[float]


class HistogramTally:
    """Bucket counts and per-bucket sums per attribute set, for the bucket `bounds` of one histogram."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._series: dict[AttrKey, _Buckets] = {}

    def record(self, value: float, attrs: dict[str, AttrValue]) -> None:
        key = _key(attrs)
        b = self._series.get(key)
        if b is None:
            n = len(self.bounds) + 1
            b = self._series[key] = _Buckets([0] * n, [0.0] * n)
        i = bisect.bisect_left(self.bounds, value)  # buckets are (lo, hi], as the SDK's
        b.counts[i] += 1
        b.sums[i] += value

    def replay(self, record: Callable[[float, dict[str, AttrValue]], None]) -> None:
        """Record every tallied value again through `record` (a fresh SDK histogram's record)."""
        for key, b in self._series.items():
            attrs = dict(key)
            for i, n in enumerate(b.counts):
                if not n:
                    continue
                mean = b.sums[i] / n
                lo = self.bounds[i - 1] if i > 0 else -math.inf
                hi = self.bounds[i] if i < len(self.bounds) else math.inf
                mean = min(max(mean, math.nextafter(lo, math.inf)), hi)
                for _ in range(n):
                    record(mean, attrs)

    def forget(self, runs: AbstractSet[str]) -> None:
        self._series = {k: b for k, b in self._series.items() if _run_of(k) not in runs}

    def __len__(self) -> int:
        return len(self._series)

    def dump(self) -> list[Any]:
        return [[_dump_key(k), b.counts, b.sums] for k, b in self._series.items()]

    def load(self, raw: Iterable[Any]) -> None:
        self._series = {_load_key(k): _Buckets([int(c) for c in counts], [float(s) for s in sums])
                        for k, counts, sums in raw}


class GaugeTally:
    """The last value per attribute set of one gauge."""

    def __init__(self) -> None:
        self._values: dict[AttrKey, float] = {}

    def set(self, value: float, attrs: dict[str, AttrValue]) -> None:
        self._values[_key(attrs)] = value

    def replay(self, set_: Callable[[float, dict[str, AttrValue]], None]) -> None:
        for key, value in self._values.items():
            set_(value, dict(key))

    def forget(self, runs: AbstractSet[str]) -> None:
        self._values = {k: v for k, v in self._values.items() if _run_of(k) not in runs}

    def dump(self) -> list[Any]:
        return [[_dump_key(k), v] for k, v in self._values.items()]

    def load(self, raw: Iterable[Any]) -> None:
        self._values = {_load_key(k): float(v) for k, v in raw}


@dataclass(slots=True)
class TalliedHistogram:
    """An SDK histogram whose every value is also tallied (so it can be replayed after a takeover)."""

    sdk: Any
    tally: HistogramTally

    def record(self, amount: float, attributes: dict[str, AttrValue] | None = None) -> None:
        attrs = attributes or {}
        self.sdk.record(amount, attrs)
        self.tally.record(amount, attrs)


@dataclass(slots=True)
class TalliedGauge:
    """An SDK gauge whose last value per attribute set is also kept."""

    sdk: Any
    tally: GaugeTally

    def set(self, amount: float, attributes: dict[str, AttrValue] | None = None) -> None:
        attrs = attributes or {}
        self.sdk.set(amount, attrs)
        self.tally.set(amount, attrs)


@dataclass(slots=True)
class Ledger:
    """Every tally of the fleet metrics, plus when each run ended (for the per-run retention window)."""

    counters: dict[str, Tally] = field(default_factory=dict)
    histograms: dict[str, HistogramTally] = field(default_factory=dict)
    gauges: dict[str, GaugeTally] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)  # run_id -> wall time (s) its run ended

    def run_ended(self, run_id: str, at_s: float) -> None:
        self.ended[run_id] = at_s

    def expired(self, now_s: float, retention_s: float) -> set[str]:
        """Runs that ended more than `retention_s` ago."""
        return {r for r, at in self.ended.items() if now_s - at >= retention_s}

    def forget(self, runs: AbstractSet[str]) -> None:
        """Drop every series of `runs`."""
        if not runs:
            return
        for h in self.histograms.values():
            h.forget(runs)
        for g in self.gauges.values():
            g.forget(runs)
        for r in runs:
            self.ended.pop(r, None)

    def dumps(self) -> str:
        return json.dumps({
            "v": 1,
            "counters": {n: t.dump() for n, t in self.counters.items()},
            "histograms": {n: h.dump() for n, h in self.histograms.items()},
            "gauges": {n: g.dump() for n, g in self.gauges.items()},
            "ended": self.ended,
        }, separators=(",", ":"))

    def loads(self, text: str | None) -> None:
        """Replace every tally's content with the checkpoint `text` (None or empty: start from zero)."""
        doc: dict[str, Any] = json.loads(text) if text else {}
        for n, t in self.counters.items():
            t.load(doc.get("counters", {}).get(n, []))
        for n, h in self.histograms.items():
            h.load(doc.get("histograms", {}).get(n, []))
        for n, g in self.gauges.items():
            g.load(doc.get("gauges", {}).get(n, []))
        self.ended = {str(r): float(at) for r, at in doc.get("ended", {}).items()}
