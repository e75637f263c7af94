"""How a step attempt is executed: one Executor per step type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetforge.domain.models import ErrorKind, StepSpec

__all__ = ["ExecutionContext", "ExecutionResult", "Executor", "StepFailure", "Usage"]


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
