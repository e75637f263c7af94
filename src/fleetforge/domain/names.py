"""Every name other systems rely on: event kinds and their payloads, metric and attribute names.

Analytics columns, dashboards, exporters and docs derive from this module; nothing retypes
these strings elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "CATALOG",
    "HUMAN_APPROVAL_PACK",
    "RUN_KINDS",
    "SCHEMA_VERSION",
    "STEP_KINDS",
    "TERMINAL_ATTEMPT_KINDS",
    "Attr",
    "EventKind",
    "Field",
    "KafkaHeader",
    "KindSpec",
    "Metric",
]

SCHEMA_VERSION: Final = 1
HUMAN_APPROVAL_PACK: Final = "human_approval"
"""The `pack` of the policy decisions people make on approvals (allow, or deny with a reason or a timeout)."""


class EventKind(StrEnum):
    """Kinds of outbox events (the envelope's `kind`)."""

    RUN_SUBMITTED = "run_submitted"
    RUN_STARTED = "run_started"
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELED = "run_canceled"
    STEP_QUEUED = "step_queued"
    STEP_STARTED = "step_started"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    STEP_RETRY_SCHEDULED = "step_retry_scheduled"
    STEP_DEFERRED = "step_deferred"
    STEP_DENIED = "step_denied"
    STEP_SKIPPED = "step_skipped"
    POLICY_DECISION = "policy_decision"
    BUDGET_RESERVED = "budget_reserved"
    BUDGET_RECONCILED = "budget_reconciled"
    TOOL_CALL = "tool_call"
    RUN_FORKED = "run_forked"
    STEP_REUSED = "step_reused"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_GRANTED = "approval_granted"
    APPROVAL_DENIED = "approval_denied"
    RUN_PAUSED = "run_paused"
    RUN_RESUMED = "run_resumed"
    STEP_PATCHED = "step_patched"
    COMPENSATION_QUEUED = "compensation_queued"


@dataclass(frozen=True, slots=True)
class Field:
    """One payload field: its name, a type among str|int|float|bool|json, and its meaning.

    `column` False keeps a field out of the typed analytics columns (it stays in the raw `payload`).
    `optional` fields are left out of a payload when they would be empty (an agent's units carry them).
    """

    name: str
    type: str
    doc: str
    column: bool = True
    optional: bool = False


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What an event kind means and which payload fields it carries."""

    kind: EventKind
    scope: str  # "run" -> telemetry.run_events, "step" -> telemetry.step_events
    doc: str
    fields: tuple[Field, ...]


_RUN_COMMON = (
    Field("status", "str", "run status after this event"),
    Field("slo_tier", "str", "SLO tier of the run (that of its step with the tightest queue target)"),
)
_STEP_COMMON = (
    Field("step_type", "str", "llm | tool | http | agent"),
    Field("slo_tier", "str", "SLO tier of the step"),
    Field("agent", "str", "the agent step that grew this step (an LLM turn or a tool call); absent for the "
                          "steps of the run spec", column=False, optional=True),
)
_USAGE = (
    Field("tokens", "int", "tokens (prompt + completion) involved"),
    Field("cost_usd", "float", "cost in USD, 6 decimals"),
)

CATALOG: Final[dict[EventKind, KindSpec]] = {
    spec.kind: spec
    for spec in (
        KindSpec(EventKind.RUN_SUBMITTED, "run", "a run spec was validated and stored",
                 (*_RUN_COMMON, Field("steps", "int", "number of steps"),
                  Field("budget_tokens", "int", "run token limit, 0 when none"),
                  Field("budget_cost_usd", "float", "run cost limit, 0 when none"),
                  Field("labels", "json", "run labels"))),
        KindSpec(EventKind.RUN_STARTED, "run", "the first step of the run was claimed",
                 (*_RUN_COMMON, Field("queue_lag_ms", "float", "submission to first claim"))),
        KindSpec(EventKind.RUN_SUCCEEDED, "run", "every step succeeded",
                 (*_RUN_COMMON, Field("duration_ms", "float", "submission to completion"),
                  Field("queue_target_ms", "int", "SLO queue target of the tier"),
                  Field("outputs", "json", "the spec's outputs resolved ({} when it has none)",
                        column=False))),
        KindSpec(EventKind.RUN_FAILED, "run", "a step failed for good or was denied",
                 (*_RUN_COMMON, Field("duration_ms", "float", "submission to completion"),
                  Field("queue_target_ms", "int", "SLO queue target of the tier"),
                  Field("error_kind", "str", "error kind of the step that failed the run"))),
        KindSpec(EventKind.RUN_CANCELED, "run", "the run was canceled",
                 (*_RUN_COMMON, Field("duration_ms", "float", "submission to cancel"),
                  Field("queue_target_ms", "int", "SLO queue target of the tier"))),
        KindSpec(EventKind.STEP_QUEUED, "step", "dependencies met; the step waits for a worker",
                 (*_STEP_COMMON, Field("queue_target_ms", "int", "SLO queue target"),
                  Field("priority_boost", "int", "slack credit in ms"))),
        KindSpec(EventKind.STEP_STARTED, "step", "a worker claimed an attempt and runs it",
                 (*_STEP_COMMON, Field("queue_lag_ms", "float", "time ready (or retry due) to claim"),
                  Field("worker", "str", "worker id holding the lease"),
                  Field("inputs", "json", "the step's inputs with their ${{ }} references resolved, after the "
                                          "pre-hook guardrails; {} when its inputs hold no reference",
                        column=False))),
        KindSpec(EventKind.STEP_SUCCEEDED, "step", "the attempt succeeded (terminal for the attempt)",
                 (*_STEP_COMMON, *_USAGE, Field("duration_ms", "float", "attempt duration"),
                  Field("tool", "str", "tool name, model or host"),
                  Field("provider", "str", "provider of the executor"),
                  Field("model", "str", "LLM model, empty otherwise"),
                  Field("input_tokens", "int", "prompt tokens"),
                  Field("output_tokens", "int", "completion tokens"),
                  Field("cached_tokens", "int", "cached prompt tokens"),
                  Field("recovered_after_ms", "float",
                        "first failure of this step to this success, 0 without a prior failure"))),
        KindSpec(EventKind.STEP_FAILED, "step", "the attempt failed (terminal for the attempt)",
                 (*_STEP_COMMON, *_USAGE, Field("duration_ms", "float", "attempt duration"),
                  Field("error_kind", "str", "timeout|rate_limited|http_5xx|http_4xx|validation|crash"),
                  Field("error", "str", "short error message"),
                  Field("tool", "str", "tool name, model or host"),
                  Field("provider", "str", "provider of the executor"),
                  Field("final", "bool", "no attempt follows"))),
        KindSpec(EventKind.STEP_RETRY_SCHEDULED, "step", "a failed attempt will be retried",
                 (*_STEP_COMMON, Field("next_attempt", "int", "attempt number of the retry"),
                  Field("backoff_ms", "float", "delay before the retry is due"),
                  Field("error_kind", "str", "why the previous attempt failed"))),
        KindSpec(EventKind.STEP_DEFERRED, "step", "back-pressure: in-flight caps would be exceeded",
                 (*_STEP_COMMON, Field("reason", "str", "which cap"),
                  Field("delay_ms", "float", "delay before the step is eligible again"))),
        KindSpec(EventKind.STEP_DENIED, "step", "a budget or policy denied the attempt (terminal)",
                 (*_STEP_COMMON, Field("error_kind", "str", "budget_exceeded | policy_denied"),
                  Field("reason", "str", "why"), Field("pack", "str", "denying pack, if any"),
                  Field("tool", "str", "the tool an agent's denied tool call asked for", optional=True))),
        KindSpec(EventKind.STEP_SKIPPED, "step", "the run failed or was canceled before the step ran",
                 (*_STEP_COMMON, Field("reason", "str", "why"))),
        KindSpec(EventKind.POLICY_DECISION, "step", "a guardrail pack evaluated a step",
                 (*_STEP_COMMON, Field("pack", "str", "pack name"), Field("hook", "str", "pre | post"),
                  Field("effect", "str", "allow | deny | modify"), Field("reason", "str", "why"),
                  Field("raw", "json", "the pack's own result"),
                  Field("wait_ms", "float", "human_approval: request to answer (or timeout); 0 for other packs"))),
        KindSpec(EventKind.BUDGET_RESERVED, "step", "tokens/cost reserved before an attempt",
                 (*_STEP_COMMON, *_USAGE, Field("source", "str", "policy | cost_hint | estimate"),
                  Field("tokens_limit", "int", "tightest token limit, 0 when none"),
                  Field("cost_limit_usd", "float", "tightest cost limit, 0 when none"),
                  Field("tokens_remaining", "int", "limit minus used minus reserved, after this"),
                  Field("cost_remaining_usd", "float", "limit minus used minus reserved, after this"),
                  Field("tokens_projected_burn", "int",
                        "used + reserved (this reservation included) in the scope of the tightest token limit"),
                  Field("cost_projected_burn_usd", "float",
                        "used + reserved (this reservation included) in the scope of the tightest cost limit"),
                  Field("budget_active", "bool", "some token or cost limit applies to the run"))),
        KindSpec(EventKind.BUDGET_RECONCILED, "step", "an attempt's reservation settled to actual usage",
                 (*_STEP_COMMON, Field("tokens_reserved", "int", "reserved for the attempt"),
                  Field("tokens_used", "int", "actually used"),
                  Field("cost_reserved_usd", "float", "reserved for the attempt"),
                  Field("cost_used_usd", "float", "actually used"),
                  Field("tokens_limit", "int", "tightest token limit, 0 when none"),
                  Field("tokens_remaining", "int", "tightest limit minus used, after this"),
                  Field("cost_remaining_usd", "float", "tightest limit minus used, after this"),
                  Field("cost_limit_usd", "float", "tightest cost limit, 0 when none"),
                  Field("budget_active", "bool", "some token or cost limit applies to the run"))),
        KindSpec(EventKind.TOOL_CALL, "step", "a tool or http step called its target",
                 (*_STEP_COMMON, Field("tool", "str", "tool name or host"),
                  Field("provider", "str", "python | http | provider name"),
                  Field("ok", "bool", "succeeded"), Field("error_kind", "str", "empty on success"),
                  Field("latency_ms", "float", "call latency"),
                  Field("call_id", "str", "the model's id of an agent's tool call (`tool_calls[i].id`)",
                        column=False, optional=True))),
        KindSpec(EventKind.RUN_FORKED, "run", "a run was forked: on the new run and on the run it was forked from",
                 (*_RUN_COMMON,
                  Field("forked_from", "str", "the run whose record the fork reuses", column=False),
                  Field("fork", "str", "the new run", column=False),
                  Field("from_step", "str", "the first step the fork executes again", column=False),
                  Field("actor", "str", "who forked it"),
                  Field("reused", "int", "steps taken from the record, not executed", column=False),
                  Field("patched", "json", "ids of the steps whose inputs were patched", column=False))),
        KindSpec(EventKind.STEP_REUSED, "step", "a fork took the step's recorded result instead of running it "
                                                "(no attempt, no budget, no call)",
                 (*_STEP_COMMON,
                  Field("status", "str", "the recorded status the step keeps", column=False),
                  Field("forked_from", "str", "the run the result was recorded in", column=False),
                  Field("tool", "str", "the tool a reused agent tool call ran", optional=True))),
        KindSpec(EventKind.APPROVAL_REQUESTED, "step", "the step (or agent tool call) waits for a person's approval",
                 (*_STEP_COMMON, Field("timeout_ms", "int", "how long the wait may last, 0 for no limit"),
                  Field("tool", "str", "the tool an agent's call would run, empty for a step"))),
        KindSpec(EventKind.APPROVAL_GRANTED, "step", "a person approved: the step is queued",
                 (*_STEP_COMMON, Field("actor", "str", "who approved"), Field("reason", "str", "why, may be empty"),
                  Field("wait_ms", "float", "request to answer"))),
        KindSpec(EventKind.APPROVAL_DENIED, "step", "a person denied, or the wait timed out (approval_timeout)",
                 (*_STEP_COMMON, Field("actor", "str", "who denied; empty on a timeout"),
                  Field("reason", "str", "why"), Field("wait_ms", "float", "request to answer or timeout"),
                  Field("error_kind", "str", "policy_denied | approval_timeout"))),
        KindSpec(EventKind.RUN_PAUSED, "run", "no new step of the run starts until it is resumed",
                 (*_RUN_COMMON, Field("actor", "str", "who paused it; empty at a breakpoint"),
                  Field("breakpoint", "str", "the step the run stopped before, empty for a pause"))),
        KindSpec(EventKind.RUN_RESUMED, "run", "a paused run goes on",
                 (*_RUN_COMMON, Field("actor", "str", "who resumed it"),
                  Field("patched", "json", "ids of the steps whose inputs the resume changed", column=False))),
        KindSpec(EventKind.STEP_PATCHED, "step", "an operator replaced the inputs of a step not yet started",
                 (*_STEP_COMMON, Field("actor", "str", "who changed them"),
                  Field("changed", "json", "input keys added, changed or removed", column=False))),
        KindSpec(EventKind.COMPENSATION_QUEUED, "step", "a step failed for good: its compensation step is queued",
                 (*_STEP_COMMON, Field("compensates", "str", "the step that failed"),
                  Field("error_kind", "str", "how it failed"))),
    )
}

RUN_KINDS: Final = frozenset(k for k, s in CATALOG.items() if s.scope == "run")
STEP_KINDS: Final = frozenset(k for k, s in CATALOG.items() if s.scope == "step")
TERMINAL_ATTEMPT_KINDS: Final = frozenset(
    {EventKind.STEP_SUCCEEDED, EventKind.STEP_FAILED, EventKind.STEP_DENIED}
)


class Metric(StrEnum):
    """OpenTelemetry instrument names (Prometheus replaces dots by underscores)."""

    BUDGET_TOKENS_REMAINING = "fleetforge.budget.tokens_remaining"
    BUDGET_COST_REMAINING = "fleetforge.budget.cost_remaining"
    BUDGET_TOKENS_PROJECTED_BURN = "fleetforge.budget.tokens_projected_burn"
    BUDGET_COST_PROJECTED_BURN = "fleetforge.budget.cost_projected_burn"
    QUEUE_LAG_SECONDS = "fleetforge.queue.lag_seconds"
    STEP_RETRIES = "fleetforge.step.retries"
    POLICY_EVENTS = "fleetforge.policy.events"
    RUN_DURATION = "fleetforge.run.duration"
    STEP_DURATION = "fleetforge.step.duration"
    GENAI_TOKEN_USAGE = "gen_ai.client.token.usage"
    GENAI_OPERATION_DURATION = "gen_ai.client.operation.duration"
    DELIVERY_SENT = "fleetforge.delivery.sent"
    DELIVERY_FAILED = "fleetforge.delivery.failed"
    DELIVERY_RETRIED = "fleetforge.delivery.retried"
    DELIVERY_BATCH_SIZE = "fleetforge.delivery.batch_size"
    DELIVERY_LATENCY = "fleetforge.delivery.publish_latency"
    OUTBOX_BACKLOG = "fleetforge.outbox.backlog"
    OUTBOX_LAG = "fleetforge.outbox.lag_seconds"
    BUDGET_TOKENS_LIMIT = "fleetforge.budget.tokens_limit"
    BUDGET_COST_LIMIT = "fleetforge.budget.cost_limit"
    RETENTION_READER_LAG = "fleetforge.retention.reader_lag_seconds"
    RETENTION_BLOCKED = "fleetforge.retention.blocked"
    RETENTION_PRUNED = "fleetforge.retention.pruned"
    WORKER_INFLIGHT_STEPS = "fleetforge.worker.inflight_steps"


class Attr(StrEnum):
    """Span and metric attribute keys."""

    RUN_ID = "run_id"
    STEP_ID = "step_id"
    WORKSPACE = "workspace"
    APP = "app"
    STEP_TYPE = "step_type"
    SLO_TIER = "slo_tier"
    ATTEMPT = "attempt"
    EFFECT = "effect"
    PACK = "pack"
    HOOK = "hook"
    ERROR_KIND = "error.type"
    CONSUMER = "consumer"
    TABLE = "table"
    GENAI_OPERATION = "gen_ai.operation.name"
    GENAI_PROVIDER = "gen_ai.provider.name"
    GENAI_MODEL = "gen_ai.request.model"
    GENAI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
    GENAI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    GENAI_TOKEN_TYPE = "gen_ai.token.type"
    STATUS = "status"
    REASON = "reason"
    RAW = "raw"
    WORKER = "worker"
    GENAI_TOOL_NAME = "gen_ai.tool.name"
    GENAI_TOOL_CALL_ID = "gen_ai.tool.call.id"
    GENAI_AGENT_NAME = "gen_ai.agent.name"
    TOOL_PROVIDER = "fleetforge.tool.provider"
    BUDGET_TOKENS_RESERVED = "fleetforge.budget.tokens_reserved"
    BUDGET_TOKENS_LEFT = "fleetforge.budget.tokens_left"
    FINAL = "final"  # a failed attempt with no retry after it
    SPAN_KIND = "fleetforge.span.kind"  # run | step | llm | tool | http | agent | guardrail


class GenAIOperation(StrEnum):
    """OTel GenAI operation names: of an agent step, of each of its LLM turns, of each tool call."""

    INVOKE_AGENT = "invoke_agent"
    CHAT = "chat"
    EXECUTE_TOOL = "execute_tool"


class KafkaHeader(StrEnum):
    """Headers of every event message on the bus (value = the envelope JSON, key = run_id)."""

    EVENT_ID = "event.id"
    KIND = "kind"
    TRACEPARENT = "traceparent"
    OUTBOX_POSITION = "fleetforge.outbox.position"
