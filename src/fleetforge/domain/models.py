"""Pure data: run specs, statuses, error kinds and the rows the stores keep."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "NOT_STARTED",
    "TERMINAL_RUN",
    "TERMINAL_STEP",
    "ApprovalSpec",
    "BudgetLimit",
    "BudgetRow",
    "CostHint",
    "ErrorKind",
    "ExecutionSpec",
    "PackSpec",
    "PolicySpec",
    "RunRow",
    "RunSpec",
    "RunStatus",
    "SloSpec",
    "StepRow",
    "StepSpec",
    "StepStatus",
    "StepType",
]


class StepType(StrEnum):
    LLM = "llm"
    TOOL = "tool"
    HTTP = "http"
    AGENT = "agent"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # by an operator or at a breakpoint: no new step starts until it is resumed
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class StepStatus(StrEnum):
    PENDING = "pending"  # waiting for dependencies
    QUEUED = "queued"  # ready; eligible once not_before has passed
    RUNNING = "running"  # leased by a worker
    WAITING_APPROVAL = "waiting_approval"  # asked a person; no worker, lease or connection held
    PAUSED = "paused"  # ready, held because its run is paused (or stopped at its breakpoint)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # attempts exhausted or a non-retriable error
    DENIED = "denied"  # budget or policy said no
    SKIPPED = "skipped"  # the run ended before this step could run
    CANCELED = "canceled"


NOT_STARTED = frozenset(
    {StepStatus.PENDING, StepStatus.QUEUED, StepStatus.WAITING_APPROVAL, StepStatus.PAUSED}
)
"""Open steps no attempt of which runs now: skipped when their run fails, canceled with it."""
TERMINAL_RUN = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED})
TERMINAL_STEP = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.DENIED, StepStatus.SKIPPED, StepStatus.CANCELED}
)


class ErrorKind(StrEnum):
    """The one failure taxonomy every executor maps into."""

    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    HTTP_5XX = "http_5xx"
    HTTP_4XX = "http_4xx"
    VALIDATION = "validation"
    CRASH = "crash"
    POLICY_DENIED = "policy_denied"
    BUDGET_EXCEEDED = "budget_exceeded"
    MAX_TURNS = "max_turns"  # an agent step reached max_turns without a final answer
    APPROVAL_TIMEOUT = "approval_timeout"  # nobody approved or denied within approval.timeout_ms

    @property
    def retriable(self) -> bool:
        return self in {ErrorKind.TIMEOUT, ErrorKind.RATE_LIMITED, ErrorKind.HTTP_5XX, ErrorKind.CRASH}


@dataclass(frozen=True, slots=True)
class CostHint:
    tokens: int = 0
    usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ExecutionSpec:
    max_attempts: int = 3
    retry_backoff_ms: int = 200
    retry_backoff_factor: float = 2.0
    deadline_ms: int = 30_000
    cost_hint: CostHint | None = None
    compensation: str | None = None  # id of the step queued when this one fails for good


@dataclass(frozen=True, slots=True)
class ApprovalSpec:
    """A person approves before the step runs; with `tools` (agent steps), before each call of those tools."""

    timeout_ms: int | None = None  # None: wait until answered
    tools: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """A token and/or cost limit; None means unlimited."""

    tokens: int | None = None
    cost: float | None = None

    @property
    def empty(self) -> bool:
        return self.tokens is None and self.cost is None


@dataclass(frozen=True, slots=True)
class SloSpec:
    tier: str = "standard"
    queue_target_ms: int = 5_000
    priority_boost: int = 0


@dataclass(frozen=True, slots=True)
class PackSpec:
    """A guardrail pack reference with its options (`mode`, lists, ratios...)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    budget: BudgetLimit | None = None
    slo: SloSpec = field(default_factory=SloSpec)
    packs: tuple[PackSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class StepSpec:
    id: str
    type: str  # a StepType member for the built-in types (domain.steptypes registers them)
    inputs: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    policy: PolicySpec = field(default_factory=PolicySpec)
    approval: ApprovalSpec | None = None


@dataclass(frozen=True, slots=True)
class RunSpec:
    steps: tuple[StepSpec, ...]
    workspace: str = "default"
    app: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    budget: BudgetLimit | None = None
    seed: int = 0
    packs: tuple[PackSpec, ...] = ()  # applied to every step, before the step's own packs
    inputs: dict[str, Any] = field(default_factory=dict)  # run inputs, `${{ inputs.x }}` in step inputs
    input_schema: dict[str, Any] | None = None  # a JSON Schema the inputs were checked against at submit
    outputs: dict[str, Any] = field(default_factory=dict)  # name -> template, resolved when the run succeeds
    breakpoints: tuple[str, ...] = ()  # step ids the run pauses before


@dataclass(slots=True)
class RunRow:
    id: str
    workspace: str
    app: str
    status: RunStatus
    spec: dict[str, Any]
    seed: int
    slo_tier: str
    queue_target_ms: int
    trace_id: str
    created_us: int
    started_us: int | None = None
    finished_us: int | None = None
    error_kind: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] | None = None  # the run's resolved outputs, set when it succeeds


@dataclass(slots=True)
class StepRow:
    run_id: str
    step_id: str
    type: str  # a StepType member for the built-in types (domain.steptypes registers them)
    status: StepStatus
    spec: dict[str, Any]
    attempt: int  # attempts started so far
    max_attempts: int
    deps_remaining: int
    due_us: int  # ordering key: ready time + queue target - priority boost (smaller = less slack)
    ready_us: int  # when the step (or its retry) became eligible; queue lag is measured from here
    not_before_us: int
    queue_target_ms: int
    priority_boost: int
    slo_tier: str
    lease_owner: str = ""
    lease_expires_us: int = 0
    started_us: int | None = None
    finished_us: int | None = None
    first_failure_us: int | None = None
    error_kind: str = ""
    output: dict[str, Any] | None = None


@dataclass(slots=True)
class BudgetRow:
    """Budget state of one scope (`run:<id>` or `app:<workspace>/<app>`). Cost is in micro-USD."""

    scope: str
    tokens_limit: int | None
    cost_limit_micros: int | None
    tokens_reserved: int = 0
    tokens_used: int = 0
    cost_reserved_micros: int = 0
    cost_used_micros: int = 0
