"""Parsing and printing sizes: ``4096``, ``4K``, ``4KiB``, ``1.5G``. K/M/G/T are powers of 1000 when
written with a trailing ``B`` (``4KB``) and powers of 1024 otherwise, like dd and qemu-img.

The one size parser of volpack: every size option and URL size parameter goes through it, so bad
sizes get the same one-line UsageError everywhere. Exact (rational) arithmetic, bounded result.
Also durations (``90s``, ``24h``, ``7d``) and octal file modes (``0640``).
"""

from __future__ import annotations

import re
from fractions import Fraction

from volpack.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?)(b?)\s*$", re.IGNORECASE)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
# Sizes become 64-bit signed fields (offsets, lengths); anything larger is a typo, not a size.
MAX_SIZE = (1 << 63) - 1
REMEDY = "use a size like 4096, 4K or 4Ki"


def _problem(text: str) -> str:
    """Why ``text`` is not a size, in a few words."""
    t = text.strip()
    if not t:
        return "empty"
    if t.startswith("-"):
        return "negative"
    if re.match(r"^\+?0x", t, re.IGNORECASE):
        return "hexadecimal is not accepted"
    if re.fullmatch(r"\+?\d+(\.\d+)?e[+-]?\d+", t, re.IGNORECASE):
        return "exponent notation is not accepted"
    unit = re.fullmatch(r"\d+(?:\.\d+)?\s*([a-z]+)", t, re.IGNORECASE)
    if unit:
        return f"unknown unit '{unit.group(1)}' (units: K, M, G, T, P, E; Ki… binary, KB… decimal)"
    return "not a number"


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from a size string; K/M/G and Ki/Mi/Gi are binary, KB/MB/GB decimal.

    ``what`` names the option or parameter in the message (``--block-size``)."""
    shown = text if text.strip() else repr(text)
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"{what} {shown}: {_problem(text)}; {REMEDY}")
    number, unit, binary, byte = m.groups()
    power = _POW[unit.lower()]
    base = 1000 if (byte and not binary and power) else 1024
    value = Fraction(number) * base**power
    if value.denominator != 1:
        raise UsageError(f"{what} {shown}: not a whole number of bytes; {REMEDY}")
    if value > MAX_SIZE:
        raise UsageError(f"{what} {shown}: more than 2^63-1 bytes (8 EiB); {REMEDY}")
    return int(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds from ``30s``, ``90m``, ``24h``, ``7d``, ``2w`` (or ``0``); a unit is required."""
    m = _DURATION.match(text)
    if not m:
        raise UsageError(
            f"{what} '{text}': not a duration; use a number with s, m, h, d or w, like 24h"
        )
    number, unit = m.groups()
    if not unit:
        if float(number) != 0:
            raise UsageError(
                f"{what} '{text}': no unit; write {number}s, {number}m, {number}h or {number}d"
            )
        return 0.0
    return float(number) * _SECONDS[unit]


def human_duration(seconds: float) -> str:
    """3725 → '1.0 h'; the largest unit that keeps the number at least 1."""
    for unit in ("w", "d", "h", "m"):
        if seconds >= _SECONDS[unit]:
            return f"{seconds / _SECONDS[unit]:.1f} {unit}"
    return f"{seconds:.0f} s"


def parse_mode(text: str, what: str = "--mode") -> int:
    """Permission bits from octal ``640``, ``0640`` or ``0o640`` (0 to 0777)."""
    digits = text.strip()
    digits = digits[2:] if digits[:2].lower() == "0o" else digits
    if not re.fullmatch(r"[0-7]{1,4}", digits) or int(digits, 8) > 0o777:
        raise UsageError(
            f"{what} '{text}': not a file mode; use octal permission bits 000 to 777, like 0640"
        )
    return int(digits, 8)


def check_mode(mode: int, what: str = "mode") -> int:
    """``mode`` if it is a number of permission bits (0 to 0o777); else a UsageError."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise UsageError(f"{what} {mode!r}: not permission bits; use 0 to 0o777, like 0o640")
    return mode


def human(n: int | float) -> str:
    """1536 → '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
