"""PII guardrail: finds emails, phones, card numbers, SSNs, IPv4 addresses and IBANs in a payload."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from fleetforge.ports.policy import Effect, Hook, PolicyContext, Verdict

__all__ = ["KINDS", "PiiRedactionPack", "find_pii", "iban_ok", "luhn_ok", "redact_pii"]

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


class PiiRedactionPack:
    """Redacts, denies or only reports PII in step inputs (pre) and outputs (post).

    Every string value is scanned, recursively; dict keys are not. Card numbers must pass Luhn
    and IBANs mod-97, so random digit runs are not flagged.
    """

    name: str = "pii_redaction"
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
