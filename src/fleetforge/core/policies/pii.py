"""PII guardrail: finds emails, phones, card numbers, SSNs, IPv4 addresses and IBANs in a payload.

The one PII redactor of the house. Besides the pack, it says what a run must keep redacted
(`redaction_kinds`) and redacts a run spec before it is stored (`redact_spec`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

from fleetforge.domain.models import PackSpec, RunSpec, StepSpec
from fleetforge.ports.policy import Effect, Hook, PolicyContext, Verdict

__all__ = [
    "KINDS",
    "PACK_NAME",
    "PiiRedactionPack",
    "find_pii",
    "iban_ok",
    "luhn_ok",
    "redact_json",
    "redact_pii",
    "redact_spec",
    "redaction_kinds",
    "step_redaction_kinds",
]

PACK_NAME: Final = "pii_redaction"

KINDS: Final = ("email", "phone", "credit_card", "ssn", "ipv4", "iban")
_MODES: Final = ("redact", "deny", "allow")
_OPTIONS: Final = ("mode", "kinds")
_MAX_PASSES: Final = 8  # each pass shrinks the unredacted text; real inputs settle in one or two


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """True when the IBAN (spaces allowed) has a valid length and mod-97 check digits."""
    iban = candidate.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _card_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


_OCTET: Final = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IBAN: Final = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
_CARD: Final = re.compile(r"(?<![\d.-])(?:\d[ -]?){12,18}\d(?!\d|[.-]\d)")
_SSN: Final = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_EMAIL: Final = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])"
)
_IPV4: Final = re.compile(rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\d|\.\d)")
_PHONE: Final = re.compile(
    r"(?<![\w+.])(?<!\d[ -])(?:\+\d{8,15}|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{2,4}[ .-])"
    r"\d{3,4}[ .-]\d{3,4})(?!\w|[ .-]\d)"
)

# (kind, regex, validator); earlier kinds win when matches of the same length start together.
_DETECTORS: Final[tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...]] = (
    ("iban", _IBAN, iban_ok),
    ("credit_card", _CARD, _card_ok),
    ("ssn", _SSN, None),
    ("email", _EMAIL, None),
    ("ipv4", _IPV4, None),
    ("phone", _PHONE, None),
)
_PRIORITY: Final = {kind: i for i, (kind, _, _) in enumerate(_DETECTORS)}


def find_pii(text: str, kinds: frozenset[str] = frozenset(KINDS)) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) matches in `text`, in order; longer matches win overlaps."""
    found: list[tuple[int, int, str]] = []
    for kind, regex, valid in _DETECTORS:
        if kind in kinds:
            found.extend(
                (m.start(), m.end(), kind) for m in regex.finditer(text) if valid is None or valid(m.group())
            )
    found.sort(key=lambda f: (f[0], f[0] - f[1], _PRIORITY[f[2]]))
    chosen: list[tuple[int, int, str]] = []
    for match in found:
        if not chosen or match[0] >= chosen[-1][1]:
            chosen.append(match)
    return chosen


def _replace(text: str, matches: list[tuple[int, int, str]]) -> str:
    out: list[str] = []
    pos = 0
    for start, end, kind in matches:
        out += (text[pos:start], f"[REDACTED:{kind}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact_pii(text: str, kinds: frozenset[str] = frozenset(KINDS)) -> tuple[str, list[str]]:
    """`text` with each match replaced by '[REDACTED:kind]', and the kind of each match.

    Rescans until nothing is found: a redaction can change the context a later match needed
    (e.g. the characters before an email), and the result must hold no detectable PII.
    """
    found: list[str] = []
    for _ in range(_MAX_PASSES):
        matches = find_pii(text, kinds)
        if not matches:
            break
        found += (kind for _, _, kind in matches)
        text = _replace(text, matches)
    return text, found


def redact_json(value: Any, kinds: frozenset[str] = frozenset(KINDS)) -> tuple[Any, list[str]]:
    """A copy of the JSON value `value` with every string redacted (`redact_pii`), recursively, and
    the kind of each match. Dict keys are kept as they are."""
    found: list[str] = []

    def scan(text: str) -> str:
        redacted, kinds_found = redact_pii(text, kinds)
        found.extend(kinds_found)
        return redacted

    return _map(value, scan), found


def _map(value: Any, fn: Callable[[str], str]) -> Any:
    """A copy of `value` with every string replaced by fn(string); dict keys and other leaves kept."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [_map(v, fn) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


@dataclass(frozen=True, slots=True)
class _Settings:
    mode: str = "redact"
    kinds: frozenset[str] = frozenset(KINDS)


def _parse(options: dict[str, Any]) -> tuple[_Settings, list[str]]:
    problems = [
        f"{key}: got {value!r}, expected no such option (known: {', '.join(_OPTIONS)})"
        for key, value in options.items()
        if key not in _OPTIONS
    ]
    mode = options.get("mode", "redact")
    if mode not in _MODES:
        problems.append(f"mode: got {mode!r}, expected one of {', '.join(_MODES)}")
    kinds = options.get("kinds", list(KINDS))
    if not isinstance(kinds, list | tuple) or not kinds or any(k not in KINDS for k in kinds):
        problems.append(f"kinds: got {kinds!r}, expected a non-empty list drawn from {', '.join(KINDS)}")
    if problems:
        return _Settings(), problems
    return _Settings(str(mode), frozenset(kinds)), []


def redaction_kinds(packs: Iterable[PackSpec]) -> frozenset[str]:
    """The kinds the pii_redaction packs among `packs` redact (mode `redact`); empty when none does.

    Data a step keeps (its inputs, output, error and policy decisions) is redacted with the kinds of
    the run's packs and the step's own; the run's labels with those of every pack of the run.
    """
    kinds: frozenset[str] = frozenset()
    for pack in packs:
        if pack.name == PACK_NAME:
            settings, problems = _parse(pack.options)
            if not problems and settings.mode == "redact":
                kinds |= settings.kinds
    return kinds


def step_redaction_kinds(spec: RunSpec, step: StepSpec) -> frozenset[str]:
    """What `step` of `spec` keeps redacted: the kinds of the run's packs and of the step's own."""
    return redaction_kinds((*spec.packs, *step.policy.packs))


def redact_spec(spec: RunSpec) -> RunSpec:
    """`spec` as it may be stored: the inputs of each step whose packs redact, redacted with their
    kinds, and the labels (names and values) and run inputs with the kinds of every pack of the run.

    A spec whose packs do not redact is returned as it is.
    """
    steps = tuple(_redact_step(spec, step) for step in spec.steps)
    every = redaction_kinds((*spec.packs, *(p for s in spec.steps for p in s.policy.packs)))
    labels, inputs = spec.labels, spec.inputs
    if every:
        labels = {redact_pii(k, every)[0]: redact_pii(v, every)[0] for k, v in spec.labels.items()}
        inputs = redact_json(spec.inputs, every)[0]  # run inputs may flow into any step
    if labels == spec.labels and inputs == spec.inputs and all(
            a is b for a, b in zip(steps, spec.steps, strict=True)):
        return spec
    return replace(spec, steps=steps, labels=labels, inputs=inputs)


def _redact_step(spec: RunSpec, step: StepSpec) -> StepSpec:
    kinds = step_redaction_kinds(spec, step)
    if not kinds:
        return step
    inputs, found = redact_json(step.inputs, kinds)
    return replace(step, inputs=inputs) if found else step


_MARKER: Final = re.compile(r"\[REDACTED:(" + "|".join(KINDS) + r")\]")


def _markers(value: Any, kinds: frozenset[str], counts: dict[str, int]) -> None:
    """Count the redaction markers of `kinds` in every string of `value`."""

    def count(text: str) -> str:
        for m in _MARKER.finditer(text):
            if m.group(1) in kinds:
                counts[m.group(1)] += 1
        return text

    _map(value, count)


class PiiRedactionPack:
    """Redacts, denies or only reports PII in step inputs (pre) and outputs (post).

    Every string value is scanned, recursively; dict keys are not. Card numbers must pass Luhn
    and IBANs mod-97, so random digit runs are not flagged.

    In redact mode the inputs were redacted when the run was submitted (`redact_spec`), so before
    a step the pack also counts the markers it left: the decision reports what was redacted from
    the inputs the executor receives, whenever that happened.
    """

    name: str = PACK_NAME
    hooks: frozenset[Hook] = frozenset({Hook.PRE, Hook.POST})

    def validate_options(self, options: dict[str, Any]) -> list[str]:
        """Problems with `mode` (redact|deny|allow), `kinds` (subset of KINDS) and unknown keys."""
        return _parse(options)[1]

    def evaluate(self, ctx: PolicyContext) -> Verdict:
        """MODIFY (a redacted copy), DENY or ALLOW when PII is found; ALLOW when none is."""
        settings, problems = _parse(ctx.options)
        if problems:
            return Verdict(Effect.DENY, "invalid options: " + "; ".join(problems))
        counts = dict.fromkeys(KINDS, 0)

        def scan(text: str) -> str:
            redacted, found = redact_pii(text, settings.kinds)
            for kind in found:
                counts[kind] += 1
            return redacted

        rewritten = _map(ctx.payload, scan)
        if ctx.hook is Hook.PRE and settings.mode == "redact":
            _markers(ctx.payload, settings.kinds, counts)
        found = {kind: n for kind, n in counts.items() if n}
        raw: dict[str, Any] = {"found": found}
        if not found:
            return Verdict(Effect.ALLOW, "no pii found", raw)
        summary = ", ".join(f"{kind}={n}" for kind, n in found.items())
        if settings.mode == "deny":
            return Verdict(Effect.DENY, f"pii found: {summary}", raw)
        if settings.mode == "allow":
            return Verdict(Effect.ALLOW, f"pii found (allowed): {summary}", raw)
        return Verdict(Effect.MODIFY, f"pii redacted: {summary}", raw, rewritten)
