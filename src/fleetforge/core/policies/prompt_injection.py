"""Prompt-injection guardrail: weighted heuristic patterns over the strings of a step's inputs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from fleetforge.domain.models import StepType
from fleetforge.ports.policy import Effect, Hook, PolicyContext, Verdict

__all__ = ["PATTERNS", "REDACTION", "InjectionPattern", "PromptInjectionPack"]

REDACTION: Final = "[REDACTED:injection]"
_MODES: Final = ("deny", "redact")
_OPTIONS: Final = ("mode", "threshold")
_LLM_KEYS: Final = ("prompt", "messages")  # what is scanned on llm steps
_TRUSTED_ROLES: Final = frozenset({"system", "developer"})  # operator-written messages, not scanned


@dataclass(frozen=True, slots=True)
class InjectionPattern:
    """One heuristic: its name (reported), its weight in the score (0..1) and its regex."""

    name: str
    weight: float
    regex: re.Pattern[str]


def _p(name: str, weight: float, pattern: str, flags: int = re.IGNORECASE) -> InjectionPattern:
    return InjectionPattern(name, weight, re.compile(pattern, flags))


_NEGATED: Final = r"(?<!\bnever\s)(?<!\bnot\s)(?<!n't\s)"  # "do not ignore ..." is no attack
_VERB: Final = _NEGATED + r"(?:ignore|disregard|forget|override|bypass|skip)"
_FILLER: Final = r"(?:(?:all|any|the|your|my|of|these|those|previous|prior)\s+)*"

PATTERNS: Final[tuple[InjectionPattern, ...]] = (
    _p(
        "ignore_previous_instructions",
        0.9,
        rf"\b{_VERB}\s+{_FILLER}(?:previous|prior|above|earlier|preceding)\s+"
        r"(?:instructions?|prompts?|directions?|directives?|rules?|guidelines?|context)\b",
    ),
    _p(
        "disregard_system_prompt",
        0.9,
        rf"\b{_VERB}\s+{_FILLER}(?:system|developer|original|initial)\s+"
        r"(?:prompts?|messages?|instructions?|rules?)\b",
    ),
    _p(
        "persona_override",
        0.9,
        r"\byou\s+are\s+now\s+(?:DAN|jailbroken|unrestricted|unfiltered|uncensored"
        r"|in\s+(?:developer|god|jailbreak|DAN)\s+mode|an?\s+(?:unrestricted|unfiltered|uncensored)\b)\b"
        r"|\bdo\s+anything\s+now\b|\b(?:DAN|developer|jailbreak)\s+mode\s+(?:enabled|activated|on)\b",
    ),
    _p(
        "reveal_system_prompt",
        0.8,
        rf"\b{_NEGATED}(?:reveal|show|print|repeat|output|leak|display|dump|tell\s+me|give\s+me|what\s+(?:is|are))\s+"
        r"(?:me\s+)?(?:your|the)\s+(?:(?:full|entire|exact|original|initial|hidden|secret)\s+)*"
        r"(?:system\s+(?:prompt|message|instructions)|(?:hidden|secret|initial|original)\s+"
        r"(?:instructions|prompt))\b",
    ),
    _p(
        "prompt_delimiter",
        0.7,
        r"\b(?:BEGIN|END)\s+(?:SYSTEM|DEVELOPER)\s+(?:PROMPT|MESSAGE|INSTRUCTIONS)\b"
        r"|<\|im_start\|>\s*(?:system|developer)|<\|(?:system|im_sep|endoftext)\|>|\[/?INST\]|<</?SYS>>",
    ),
    _p(
        "role_override",
        0.6,
        r"^[ \t]*(?:#{1,3}[ \t]*)?(?:system|developer)[ \t]*(?:prompt|message)?[ \t]*:"
        r"|</?(?:system|developer)>|\[(?:system|developer)\]|\bnew\s+system\s+(?:prompt|instructions)\s*:",
        re.IGNORECASE | re.MULTILINE,
    ),
    _p("encoded_blob", 0.3, r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{120,}={0,2}", 0),
)

_WEIGHTS: Final = {p.name: p.weight for p in PATTERNS}


@dataclass(frozen=True, slots=True)
class _Settings:
    mode: str = "deny"
    threshold: float = 0.5


def _parse(options: dict[str, Any]) -> tuple[_Settings, list[str]]:
    problems = [
        f"{key}: got {value!r}, expected no such option (known: {', '.join(_OPTIONS)})"
        for key, value in options.items()
        if key not in _OPTIONS
    ]
    mode = options.get("mode", "deny")
    if mode not in _MODES:
        problems.append(f"mode: got {mode!r}, expected one of {', '.join(_MODES)}")
    threshold = options.get("threshold", 0.5)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or not 0 <= threshold <= 1
    ):
        problems.append(f"threshold: got {threshold!r}, expected a number from 0 to 1")
    if problems:
        return _Settings(), problems
    return _Settings(str(mode), float(threshold)), []


def _redact(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each run of overlapping or touching spans replaced by one REDACTION."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[str] = []
    pos = 0
    for start, end in merged:
        out += (text[pos:start], REDACTION)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _map(value: Any, path: str, fn: Callable[[str, str], str]) -> Any:
    """A copy of `value` with every string replaced by fn(path, string); other leaves are shared."""
    if isinstance(value, str):
        return fn(path, value)
    if isinstance(value, dict):
        return {k: _map(v, f"{path}.{k}" if path else str(k), fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_map(v, f"{path}[{i}]", fn) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def _map_llm(payload: dict[str, Any], fn: Callable[[str, str], str]) -> dict[str, Any]:
    """Like _map, but only `prompt` and non-system `messages` of an llm step."""
    result = dict(payload)
    if "prompt" in payload:
        result["prompt"] = _map(payload["prompt"], "prompt", fn)
    messages = payload.get("messages")
    if isinstance(messages, list):
        result["messages"] = [
            m if isinstance(m, dict) and m.get("role") in _TRUSTED_ROLES else _map(m, f"messages[{i}]", fn)
            for i, m in enumerate(messages)
        ]
    elif "messages" in payload:
        result["messages"] = _map(messages, "messages", fn)
    return result


class PromptInjectionPack:
    """Scores a step's inputs against PATTERNS; denies or redacts at or above `threshold`.

    Every string is scanned, recursively; on llm steps only `prompt` and `messages`, skipping
    messages whose role is system or developer (the operator's own text). The score is
    1 - prod(1 - weight) over the distinct patterns matched.
    """

    name: str = "prompt_injection"
    hooks: frozenset[Hook] = frozenset({Hook.PRE})

    def validate_options(self, options: dict[str, Any]) -> list[str]:
        """Problems with `mode` (deny|redact), `threshold` (0..1) and unknown keys."""
        return _parse(options)[1]

    def evaluate(self, ctx: PolicyContext) -> Verdict:
        """DENY or MODIFY when the score reaches the threshold, ALLOW otherwise."""
        settings, problems = _parse(ctx.options)
        if problems:
            return Verdict(Effect.DENY, "invalid options: " + "; ".join(problems))
        matches: list[dict[str, str]] = []
        seen: set[tuple[str, str]] = set()

        def scan(path: str, text: str) -> str:
            spans: list[tuple[int, int]] = []
            for pattern in PATTERNS:
                found = [m.span() for m in pattern.regex.finditer(text)]
                if found:
                    spans.extend(found)
                    if (pattern.name, path) not in seen:
                        seen.add((pattern.name, path))
                        matches.append({"pattern": pattern.name, "path": path})
            return _redact(text, spans) if spans else text

        if ctx.step.type is StepType.LLM:
            rewritten = _map_llm(ctx.payload, scan)
        else:
            rewritten = _map(ctx.payload, "", scan)
        names = list(dict.fromkeys(m["pattern"] for m in matches))
        score = round(1.0 - math.prod(1.0 - _WEIGHTS[n] for n in names), 4)
        raw: dict[str, Any] = {"score": score, "matches": matches}
        if not names:
            return Verdict(Effect.ALLOW, "no injection detected", raw)
        if score < settings.threshold:
            return Verdict(
                Effect.ALLOW, f"below threshold (score {score:.2f} < {settings.threshold:.2f})", raw
            )
        detail = f"{', '.join(names)} (score {score:.2f} >= threshold {settings.threshold:.2f})"
        if settings.mode == "redact":
            return Verdict(Effect.MODIFY, f"prompt injection redacted: {detail}", raw, rewritten)
        return Verdict(Effect.DENY, f"prompt injection: {detail}", raw)
