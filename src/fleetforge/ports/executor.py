"""How a step attempt is executed: one Executor per step type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetforge.domain.models import ErrorKind, StepSpec

__all__ = ["AgentUnits", "ExecutionContext", "ExecutionResult", "Executor", "HeldUnit", "StepFailure", "Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and cost an attempt consumed (cost in USD)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # part of input_tokens served from the provider's prompt cache
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ExecutionContext:
    """What an executor knows about the attempt it runs."""

    run_id: str
    step: StepSpec
    attempt: int
    seed: int  # run seed; executors derive their randomness from (seed, step id, attempt)
    inputs: dict[str, Any]  # the step's inputs after pre-hook policies (possibly redacted)
    deadline_s: float
    workspace: str = "default"
    app: str = "default"
    units: AgentUnits | None = None  # agent claims: records the turns and tool calls an in-process agent makes


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """A successful attempt."""

    output: dict[str, Any]
    usage: Usage = field(default_factory=Usage)
    tool: str = ""  # tool name, model or host
    provider: str = ""
    model: str = ""
    latency_ms: float = 0.0


class StepFailure(Exception):
    """A failed attempt, already classified into the taxonomy."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        usage: Usage | None = None,
        tool: str = "",
        provider: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.usage = usage or Usage()
        self.tool = tool
        self.provider = provider
        self.retry_after_s = retry_after_s


class Executor(Protocol):
    """Runs one attempt of a step of its type. Raises StepFailure on failure, never anything else."""

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult: ...

    def estimate(self, step: StepSpec) -> tuple[int, float]:
        """Tokens and USD an attempt is expected to use, for budget reservation."""
        ...

    def target(self, step: StepSpec) -> tuple[str, str]:
        """(tool, provider) the step calls, for events before it runs."""
        ...


@dataclass(frozen=True, slots=True)
class HeldUnit:
    """A turn or tool call an agent runs inside its own attempt, as the store sees it when it starts.

    `output` set: the unit already succeeded (a node running again): use it, do not call anything.
    `refusal` set: a guardrail denied this tool call: answer it to the model as a tool error.
    Otherwise run it with `inputs` (after the pre-hook guardrails) and report through `AgentUnits.finish`."""

    step_id: str
    attempt: int
    inputs: dict[str, Any]
    output: dict[str, Any] | None = None
    refusal: str = ""
    handle: object = None


class AgentUnits(Protocol):
    """Durable units of an agent that holds its worker (a graph step): each turn and tool call is a child
    step with its own reservation, guardrail decisions, ledger row and events. Raises StepFailure when the
    agent step must end (a budget denial, a denied turn)."""

    database: str
    """The store's database (a SQLite path or a PostgreSQL DSN), for checkpoints kept beside the runs."""
    schema: str
    """The PostgreSQL store's schema, where those checkpoints go ('' on SQLite)."""

    async def turn(self, inputs: dict[str, Any], key: str) -> HeldUnit:
        """Start an LLM turn (`inputs`: model, messages, tools); `key` recognises it when a node runs again."""
        ...

    async def call(self, call_id: str, tool: str, args: dict[str, Any]) -> HeldUnit:
        """Start the tool call the model asked for with id `call_id`."""
        ...

    async def finish(self, unit: HeldUnit, result: ExecutionResult | None = None,
                     failure: StepFailure | None = None) -> dict[str, Any]:
        """Record how a started unit ended; returns its output after the post-hook guardrails."""
        ...
