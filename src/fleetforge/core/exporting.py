"""The one span model: outbox envelopes to platform-neutral spans, rendered by every trace backend.

The tree is run -> step attempt -> (llm | tool | http | agent unit), with each policy decision a
zero-length guardrail span under its attempt. An agent's units nest under its `invoke_agent` span:
each turn's attempt (-> `chat`), and each tool call's attempt (-> `execute_tool`) under the `chat` span
of the turn that asked for it, so a trace reads agent -> LLM -> tool (a tool call's span starts after
its turn's `chat` span ends: it ran once the model had asked). Ids are the envelopes' own
(`trace.trace_id`, the run span `run_span_id`, the attempt span `attempt_span_id`); the unit and
guardrail span ids derive from the attempt's. Times: a run spans its submission to its terminal event;
an attempt its `step_started` to its terminal event (which commits the post-hook decisions and the
budget settlement); the unit spans what the executor ran (`step_started` plus the terminal event's
`duration_ms`); a decision is a point at its event. The OTel SDK renderer
(adapters/readers/telemetry/spans) and the LangSmith, Langfuse and Phoenix encoders (adapters/exporters)
all render these spans, so every backend shows the same tree with the same times.

A span is complete when its terminal event arrives (run_succeeded/failed/canceled; step_succeeded/
failed/denied). Until then the assembler keeps what the earlier events said about it, in bounded
memory, keyed by run and attempt. Every span carries the outbox positions an exporter needs to resume
without losing or repeating work: `position` (its terminal event) and `hold` (the position just before
the first event of its run that the assembler read).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from fleetforge.core.ids import run_span_id
from fleetforge.domain.envelope import Envelope, traceparent
from fleetforge.domain.models import ErrorKind, StepType
from fleetforge.domain.names import Attr
from fleetforge.domain.names import EventKind as K
from fleetforge.domain.names import GenAIOperation as Op
from fleetforge.domain.steptypes import STEP_TYPES, step_type_spec
from fleetforge.ports.store import OutboxPosition

__all__ = [
    "SKIPPED_KINDS",
    "AssemblerStats",
    "SpanKind",
    "TraceAssembler",
    "TraceSpan",
    "Usage",
    "genai_attributes",
    "guardrail_span_id",
    "unit_span_id",
]

RUN_TERMINAL: Final = frozenset({K.RUN_SUCCEEDED, K.RUN_FAILED, K.RUN_CANCELED})
ATTEMPT_TERMINAL: Final = frozenset({K.STEP_SUCCEEDED, K.STEP_FAILED, K.STEP_DENIED})
_ATTEMPT_KINDS: Final = frozenset(
    {K.POLICY_DECISION, K.BUDGET_RESERVED, K.STEP_STARTED, K.BUDGET_RECONCILED, K.TOOL_CALL} | ATTEMPT_TERMINAL
)
SKIPPED_KINDS: Final = frozenset({K.STEP_QUEUED, K.STEP_RETRY_SCHEDULED, K.STEP_DEFERRED, K.STEP_SKIPPED})
"""Kinds that add nothing to a span: readers may skip them without parsing."""
_STEP_COMMON: Final = ("step_type", "slo_tier")
_ZERO: Final[OutboxPosition] = (0, 0)


class SpanKind(StrEnum):
    """What a span stands for; each platform maps it onto its own types."""

    RUN = "run"
    STEP = "step"  # one attempt of a step
    LLM = "llm"
    TOOL = "tool"
    HTTP = "http"
    AGENT = "agent"
    GUARDRAIL = "guardrail"




def unit_kind(step_type: str) -> SpanKind:
    """The kind of the span of what an attempt of `step_type` executed, from the step-type registry."""
    return SpanKind(step_type_spec(step_type).span_kind) if step_type in STEP_TYPES else SpanKind.TOOL


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and cost of one attempt (as recorded by the runtime)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class TraceSpan:
    """One finished span, platform-neutral. Times are microseconds since the epoch.

    `lineage` lists (span_id, start_us) of each ancestor, root first (empty for the run span).
    `inputs`, `outputs` and `metadata` come from the (already policy-processed) event payloads;
    metadata values are str, int, float or bool. `call_id` is the model's id of an agent's tool call.
    """

    kind: SpanKind
    name: str
    trace_name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    lineage: tuple[tuple[str, int], ...]
    start_us: int
    end_us: int
    ok: bool
    status_message: str
    run_id: str
    step_id: str | None
    attempt: int
    workspace: str
    app: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    metadata: Mapping[str, Any]
    model: str = ""
    provider: str = ""
    tool: str = ""
    usage: Usage | None = None
    call_id: str = ""
    position: OutboxPosition = _ZERO
    hold: OutboxPosition = _ZERO

    @property
    def is_root(self) -> bool:
        return self.parent_span_id is None


def guardrail_span_id(attempt_span_id: str, hook: str, pack: str, index: int) -> str:
    """The span id of the `index`-th policy decision of an attempt (stable across replays)."""
    return hashlib.sha256(f"{attempt_span_id}\x00{hook}\x00{pack}\x00{index}".encode()).hexdigest()[:16]


def unit_span_id(attempt_span_id: str) -> str:
    """The span id of what an attempt executed (an llm call, a tool or http call): stable across replays."""
    return hashlib.sha256(f"{attempt_span_id}\x00tool".encode()).hexdigest()[:16]


@dataclass(slots=True)
class _Attempt:
    step_id: str
    attempt: int
    span_id: str
    step_type: str = ""
    slo_tier: str = ""
    call_id: str = ""
    started_us: int | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    decisions: list[Envelope] = field(default_factory=list)


@dataclass(slots=True)
class _Run:
    run_id: str
    trace_id: str
    span_id: str
    workspace: str
    app: str
    start_us: int
    hold: OutboxPosition
    closed: bool = False
    inputs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    attempts: dict[tuple[str, int], _Attempt] = field(default_factory=dict)
    agents: dict[str, tuple[str, int]] = field(default_factory=dict)  # agent step -> (attempt span, start)
    turns: dict[str, tuple[str, int]] = field(default_factory=dict)  # agent turn -> (its succeeded attempt, start)
    tokens: int = 0
    cost_usd: float = 0.0
    finished_attempts: int = 0
    failed_attempts: int = 0


@dataclass(slots=True)
class AssemblerStats:
    """Counters of what the bounds cost (all zero in a healthy deployment)."""

    evicted_runs: int = 0
    dropped_attempts: int = 0
    dropped_decisions: int = 0


class TraceAssembler:
    """Feed envelopes in outbox order; get back the spans each one completes.

    Memory is bounded: at most `max_runs` open runs (the oldest is evicted first; its later events
    still yield spans), `max_attempts` open attempts per run and `max_decisions` decisions per attempt.
    `start` is the position reading begins after. `run_start(run_id)` supplies a run's start (its
    creation time) when its submission event was not read, e.g. after resuming mid-run; else the first
    event seen stands in.
    """

    def __init__(
        self,
        *,
        max_runs: int = 10_000,
        max_attempts: int = 1_000,
        max_decisions: int = 64,
        run_start: Callable[[str], int | None] | None = None,
        start: OutboxPosition = _ZERO,
    ) -> None:
        self.max_runs = max_runs
        self.max_attempts = max_attempts
        self.max_decisions = max_decisions
        self._run_start = run_start
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._closed: OrderedDict[str, tuple[str, int]] = OrderedDict()  # run_id -> (span_id, start_us)
        self._last: OutboxPosition = start
        self.stats = AssemblerStats()

    # -- state ---------------------------------------------------------------------------------

    @property
    def open_runs(self) -> int:
        return len(self._runs)

    def oldest_hold(self) -> OutboxPosition | None:
        """The resume point protecting every open run's events, or None when no run is open."""
        for run in self._runs.values():
            return run.hold
        return None

    @property
    def open_attempts(self) -> int:
        """Attempts seen without their terminal event yet, over every open run."""
        return sum(len(r.attempts) for r in self._runs.values())

    @property
    def last_position(self) -> OutboxPosition:
        """Position of the last envelope fed."""
        return self._last

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, env: Envelope, position: OutboxPosition = _ZERO) -> list[TraceSpan]:
        """Take one envelope (read at `position`); return the spans it completes, parents last."""
        before, self._last = self._last, position
        kind = env.kind
        if kind in (K.RUN_SUBMITTED, K.RUN_STARTED):
            self._note_run(self._run(env, before), env)
            return []
        if kind in RUN_TERMINAL:
            return self._finish_run(self._run(env, before), env, position)
        if kind not in _ATTEMPT_KINDS or env.step_id is None:
            return []  # queued, retry scheduled, deferred, skipped: nothing of a span of their own
        run = self._run(env, before)
        key = (env.step_id, env.attempt)
        att = run.attempts.get(key)
        if att is None:
            if len(run.attempts) >= self.max_attempts:
                self.stats.dropped_attempts += 1
                return []
            att = run.attempts[key] = _Attempt(env.step_id, env.attempt, env.trace.span_id)
        self._note_attempt(att, env)
        if kind is K.STEP_STARTED and att.step_type == StepType.AGENT:  # its turns and tool calls nest under it
            run.agents.setdefault(att.step_id, (att.span_id, env.occurred_us))
        if kind not in ATTEMPT_TERMINAL:
            return []
        del run.attempts[key]
        spans = self._finish_attempt(run, att, env, position)
        if run.closed and not run.attempts:
            self._forget(run)
        return spans

    def _run(self, env: Envelope, before: OutboxPosition) -> _Run:
        run = self._runs.get(env.run_id)
        if run is not None:
            return run
        closed = self._closed.get(env.run_id)
        if closed is not None:
            run = _Run(env.run_id, env.trace.trace_id, closed[0], env.workspace, env.app, closed[1], before,
                       closed=True)
        else:
            begin = env.occurred_us if env.kind is K.RUN_SUBMITTED else None
            if begin is None and self._run_start is not None:
                begin = self._run_start(env.run_id)
            run = _Run(env.run_id, env.trace.trace_id, _run_span_of(env), env.workspace, env.app,
                       begin if begin is not None else env.occurred_us, before)
        if len(self._runs) >= self.max_runs:
            self._runs.popitem(last=False)
            self.stats.evicted_runs += 1
        self._runs[env.run_id] = run
        return run

    def _forget(self, run: _Run) -> None:
        self._runs.pop(run.run_id, None)
        self._closed[run.run_id] = (run.span_id, run.start_us)
        if len(self._closed) > self.max_runs:
            self._closed.popitem(last=False)

    # -- runs ----------------------------------------------------------------------------------

    def _note_run(self, run: _Run, env: Envelope) -> None:
        p = env.payload
        run.metadata["slo_tier"] = p.get("slo_tier", "")
        if env.kind is K.RUN_SUBMITTED:
            labels = p.get("labels") or {}
            run.inputs.update({k: p[k] for k in ("steps", "budget_tokens", "budget_cost_usd") if k in p})
            run.inputs["labels"] = dict(labels) if isinstance(labels, Mapping) else {}
            for k, v in run.inputs["labels"].items():
                run.metadata[f"label.{k}"] = _scalar(v)
        else:
            run.metadata["queue_lag_ms"] = p.get("queue_lag_ms", 0.0)

    def _finish_run(self, run: _Run, env: Envelope, position: OutboxPosition) -> list[TraceSpan]:
        if run.closed:  # a second terminal event (should not happen): nothing new to say
            return []
        p = env.payload
        status = str(p.get("status") or env.kind.removeprefix("run_"))
        outputs: dict[str, Any] = {"status": status, "duration_ms": p.get("duration_ms", 0.0),
                                   "tokens": run.tokens, "cost_usd": round(run.cost_usd, 6),
                                   "attempts": run.finished_attempts, "failed_attempts": run.failed_attempts}
        if p.get("error_kind"):
            outputs["error_kind"] = p["error_kind"]
        if p.get("outputs"):
            outputs["outputs"] = p["outputs"]
        metadata = {**_base_meta(env, run.trace_id, run.span_id), **run.metadata,
                    "status": status, "queue_target_ms": p.get("queue_target_ms", 0)}
        if p.get("error_kind"):
            metadata["error_kind"] = p["error_kind"]
        ok = env.kind is K.RUN_SUCCEEDED
        message = "" if ok else (f"run {status}: {p['error_kind']}" if p.get("error_kind") else f"run {status}")
        name = _trace_name(run)
        span = TraceSpan(
            kind=SpanKind.RUN, name=name, trace_name=name, trace_id=run.trace_id, span_id=run.span_id,
            parent_span_id=None, lineage=(), start_us=run.start_us, end_us=max(env.occurred_us, run.start_us), ok=ok,
            status_message=message, run_id=run.run_id, step_id=None, attempt=0, workspace=run.workspace,
            app=run.app, inputs=dict(run.inputs), outputs=outputs, metadata=metadata,
            position=position, hold=run.hold,
        )
        run.closed = True
        if not run.attempts:
            self._forget(run)
        return [span]

    # -- attempts ------------------------------------------------------------------------------

    def _note_attempt(self, att: _Attempt, env: Envelope) -> None:
        p = env.payload
        att.step_type = att.step_type or str(p.get("step_type", ""))
        att.slo_tier = att.slo_tier or str(p.get("slo_tier", ""))
        kind = env.kind
        if kind is K.POLICY_DECISION:
            if len(att.decisions) < self.max_decisions:
                att.decisions.append(env)
            else:
                self.stats.dropped_decisions += 1
        elif kind is K.STEP_STARTED:
            att.started_us = env.occurred_us
            att.inputs["queue_lag_ms"] = p.get("queue_lag_ms", 0.0)
            att.metadata["queue_lag_ms"] = p.get("queue_lag_ms", 0.0)
            att.metadata["worker"] = str(p.get("worker", ""))
            if p.get("inputs"):  # resolved ${{ }} references, after the pre-hook guardrails
                att.inputs["inputs"] = p["inputs"]
        elif kind is K.BUDGET_RESERVED:
            att.inputs["tokens_reserved"] = p.get("tokens", 0)
            att.inputs["cost_reserved_usd"] = p.get("cost_usd", 0.0)
            att.metadata["reservation_source"] = str(p.get("source", ""))
            att.metadata["budget_active"] = bool(p.get("budget_active", False))
            att.metadata["tokens_projected_burn"] = p.get("tokens_projected_burn", 0)
        elif kind is K.BUDGET_RECONCILED:
            for k in ("tokens_remaining", "cost_remaining_usd", "tokens_limit", "cost_limit_usd"):
                att.metadata[k] = p.get(k, 0)
            att.metadata["budget_active"] = bool(p.get("budget_active", False))
        elif kind is K.TOOL_CALL:
            att.metadata["tool_ok"] = bool(p.get("ok", False))
            att.metadata["tool_latency_ms"] = p.get("latency_ms", 0.0)
            att.metadata["tool"] = str(p.get("tool", ""))
            att.metadata["provider"] = str(p.get("provider", ""))
            att.call_id = str(p.get("call_id", "") or "")

    def _finish_attempt(self, run: _Run, att: _Attempt, env: Envelope,
                        position: OutboxPosition) -> list[TraceSpan]:
        """The attempt's guardrail spans, then its unit span (when it executed), then the attempt span."""
        p = env.payload
        kind = env.kind
        duration_us = round(float(p.get("duration_ms", 0.0) or 0.0) * 1000)
        start = att.started_us if att.started_us is not None else env.occurred_us - duration_us
        start = max(start, run.start_us)
        end = max(env.occurred_us, start)
        step_type = att.step_type or str(p.get("step_type", ""))
        outputs = {"status": str(kind).removeprefix("step_"),
                   **{k: v for k, v in p.items() if k not in _STEP_COMMON}}
        tokens = int(p.get("tokens", 0) or 0)
        cost = float(p.get("cost_usd", 0.0) or 0.0)
        usage = None
        if tokens or cost:
            usage = Usage(int(p.get("input_tokens", 0) or 0), int(p.get("output_tokens", 0) or 0),
                          int(p.get("cached_tokens", 0) or 0), tokens, cost)
        run.tokens += tokens
        run.cost_usd += cost
        run.finished_attempts += 1
        ok = kind is K.STEP_SUCCEEDED
        if not ok:
            run.failed_attempts += 1
        if kind is K.STEP_FAILED:
            message = f"{p.get('error_kind', '')}: {p.get('error', '')}".strip(": ")
        elif kind is K.STEP_DENIED:
            message = f"{p.get('error_kind', '')}: {p.get('reason', '')}".strip(": ")
        else:
            message = ""
        kind_of_unit = unit_kind(step_type)
        tool = str(p.get("tool") or att.metadata.get("tool") or "")
        provider = str(p.get("provider") or att.metadata.get("provider") or "")
        model = str(p.get("model") or (tool if kind_of_unit is SpanKind.LLM else ""))
        metadata = {**_base_meta(env, run.trace_id, att.span_id), "step_id": att.step_id, "attempt": att.attempt,
                    "step_type": step_type, "slo_tier": att.slo_tier, **att.metadata}
        for k in ("error_kind", "final", "pack", "recovered_after_ms"):
            if k in p:
                metadata[k] = _scalar(p[k])
        if tool:
            metadata["tool"] = tool
        if provider:
            metadata["provider"] = provider
        inputs = {"step_type": step_type, "attempt": att.attempt, **att.inputs}
        lineage: tuple[tuple[str, int], ...] = ((run.span_id, run.start_us),)
        agent = _agent_of(run, att.step_id)
        if agent is not None:  # a unit of an agent step: under the agent's invoke_agent span
            span_id, began = run.agents[agent]
            lineage = (*lineage, (span_id, began), (unit_span_id(span_id), began))
            turn, sep, _ = att.step_id[len(agent) + 1:].partition(".c")
            asked = run.turns.get(f"{agent}.{turn}") if sep else None
            if asked is not None:  # a tool call: under the chat span of the turn that asked for it
                lineage = (*lineage, asked, (unit_span_id(asked[0]), asked[1]))
            elif not sep and kind is K.STEP_SUCCEEDED:  # a turn: the parent of the calls it asks for
                run.turns[att.step_id] = (att.span_id, start)
        span = TraceSpan(
            kind=SpanKind.STEP, name=att.step_id, trace_name=_trace_name(run), trace_id=run.trace_id,
            span_id=att.span_id, parent_span_id=lineage[-1][0], lineage=lineage, start_us=start, end_us=end, ok=ok,
            status_message=message[:1000], run_id=run.run_id, step_id=att.step_id, attempt=att.attempt,
            workspace=run.workspace, app=run.app, inputs=inputs, outputs=outputs, metadata=metadata,
            model=model, provider=provider, tool=tool, usage=usage, call_id=att.call_id, position=position,
            hold=run.hold,
        )
        inner = (*lineage, (att.span_id, start))
        spans = [self._guardrail(run, att, d, i, inner, position) for i, d in enumerate(att.decisions)]
        if kind is not K.STEP_DENIED:  # a denied attempt never reached its executor
            spans.append(self._unit(span, kind_of_unit, att, inner,
                                    min(start + duration_us, end), duration_us))
        spans.append(span)
        return spans

    @staticmethod
    def _unit(attempt: TraceSpan, kind: SpanKind, att: _Attempt, lineage: tuple[tuple[str, int], ...],
              end_us: int, duration_us: int) -> TraceSpan:
        """The span of what the attempt executed: from its start for the executor's `duration_ms`."""
        tool_ok = att.metadata.get("tool_ok")
        if tool_ok is not None:  # tool and http calls report their own outcome
            ok = bool(tool_ok)
        else:  # a post-hook denial fails the attempt, not the call
            ok = attempt.ok or attempt.metadata.get("error_kind") == ErrorKind.POLICY_DENIED
        span_id = unit_span_id(attempt.span_id)
        outputs: dict[str, Any] = {"status": "succeeded" if ok else "failed", "latency_ms": duration_us / 1000}
        u = attempt.usage
        if u is not None:
            outputs.update(input_tokens=u.input_tokens, output_tokens=u.output_tokens, total_tokens=u.total_tokens,
                           cost_usd=u.cost_usd)
        step_type = str(attempt.metadata.get("step_type", ""))
        if kind is SpanKind.LLM:
            name = f"{Op.CHAT} {attempt.model}" if attempt.model else str(Op.CHAT)
            inputs: dict[str, Any] = {"model": attempt.model, "provider": attempt.provider}
        elif kind is SpanKind.AGENT:
            name = f"{Op.INVOKE_AGENT} {attempt.model}" if attempt.model else str(Op.INVOKE_AGENT)
            inputs = {"model": attempt.model}
        else:
            name = f"{Op.EXECUTE_TOOL} {attempt.tool or step_type}"
            inputs = {"tool": attempt.tool, "provider": attempt.provider}
        metadata = {**_base_meta_of(attempt, span_id), "step_id": att.step_id, "attempt": att.attempt,
                    "step_type": step_type, **inputs}
        if att.call_id:
            inputs["call_id"] = att.call_id
        if not ok and "error_kind" in attempt.metadata:
            metadata["error_kind"] = attempt.metadata["error_kind"]
        return replace(attempt, kind=kind, name=name, span_id=span_id, parent_span_id=attempt.span_id,
                       lineage=lineage, end_us=end_us, ok=ok, status_message="" if ok else attempt.status_message,
                       inputs=inputs, outputs=outputs, metadata=metadata)

    def _guardrail(self, run: _Run, att: _Attempt, d: Envelope, index: int,
                   lineage: tuple[tuple[str, int], ...], position: OutboxPosition) -> TraceSpan:
        p = d.payload
        pack, hook, effect = str(p.get("pack", "")), str(p.get("hook", "")), str(p.get("effect", ""))
        span_id = guardrail_span_id(att.span_id, hook, pack, index)
        when = max(d.occurred_us, lineage[-1][1])
        wait_us = int(float(p.get("wait_ms") or 0) * 1000)  # a person's answer spans the wait (human_approval)
        metadata = {**_base_meta(d, run.trace_id, span_id), "step_id": att.step_id, "attempt": att.attempt,
                    "pack": pack, "hook": hook, "effect": effect}
        if wait_us:
            metadata["wait_ms"] = wait_us / 1000
        return TraceSpan(
            kind=SpanKind.GUARDRAIL, name=pack or "policy", trace_name=_trace_name(run), trace_id=run.trace_id,
            span_id=span_id, parent_span_id=att.span_id, lineage=lineage, start_us=when - wait_us, end_us=when, ok=True,
            status_message="", run_id=run.run_id, step_id=att.step_id, attempt=att.attempt,
            workspace=run.workspace, app=run.app, inputs={"pack": pack, "hook": hook},
            outputs={"effect": effect, "reason": p.get("reason", ""), "raw": p.get("raw")},
            metadata=metadata, position=position, hold=run.hold,
        )


def genai_attributes(span: TraceSpan) -> dict[str, str]:
    """The OTel GenAI attributes of a unit span: `gen_ai.operation.name` (`invoke_agent`, `chat` or
    `execute_tool`), the agent's name (its step id) or model, the tool's name and the model's call id."""
    if span.kind is SpanKind.AGENT:
        attrs = {str(Attr.GENAI_OPERATION): str(Op.INVOKE_AGENT), str(Attr.GENAI_AGENT_NAME): span.step_id or ""}
    elif span.kind is SpanKind.LLM:
        attrs = {str(Attr.GENAI_OPERATION): str(Op.CHAT)}
    elif span.kind in (SpanKind.TOOL, SpanKind.HTTP):
        attrs = {str(Attr.GENAI_OPERATION): str(Op.EXECUTE_TOOL), str(Attr.GENAI_TOOL_NAME): span.tool}
        if span.call_id:
            attrs[str(Attr.GENAI_TOOL_CALL_ID)] = span.call_id
        return attrs
    else:
        return {}
    if span.model:
        attrs[str(Attr.GENAI_MODEL)] = span.model
    return attrs


def _agent_of(run: _Run, step_id: str) -> str | None:
    """The agent step whose unit `step_id` is (ids `<agent>.t<n>...`, reserved by the spec check), or None."""
    for agent in run.agents:
        if step_id.startswith(f"{agent}.t"):
            return agent
    return None


def _run_span_of(env: Envelope) -> str:
    """The run span id: carried by run events; derived for step events."""
    return env.trace.span_id if env.step_id is None else run_span_id(env.run_id)


def _trace_name(run: _Run) -> str:
    """The run's `workflow` label, else its app."""
    labels = run.inputs.get("labels") or {}
    return str(labels.get("workflow") or run.app or "run")


def _base_meta(env: Envelope, trace_id: str, span_id: str) -> dict[str, Any]:
    return {"run_id": env.run_id, "workspace": env.workspace, "app": env.app,
            "traceparent": traceparent(trace_id, span_id)}


def _base_meta_of(span: TraceSpan, span_id: str) -> dict[str, Any]:
    return {"run_id": span.run_id, "workspace": span.workspace, "app": span.app,
            "traceparent": traceparent(span.trace_id, span_id)}


def _scalar(value: Any) -> Any:
    """`value` when it is str/int/float/bool, else its string form (metadata stays flat)."""
    return value if isinstance(value, str | int | float | bool) else str(value)
