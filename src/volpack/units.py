"""Parsing and printing sizes: ``4096``, ``4K``, ``4KiB``, ``1.5G``. K/M/G/T are powers of 1000 when
written with a trailing ``B`` (``4KB``) and powers of 1024 otherwise, like dd and qemu-img.
"""

from __future__ import annotations

import re

from volpack.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?)(b?)\s*$", re.IGNORECASE)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from a size string; K/M/G and Ki/Mi/Gi are binary, KB/MB/GB decimal."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"{what} '{text}': not a size; use bytes or a suffix like 4K, 64Mi, 1G")
    number, unit, binary, byte = m.groups()
    power = _POW[unit.lower()]
    base = 1000 if (byte and not binary and power) else 1024
    value = float(number) * base**power
    if value != int(value):
        raise UsageError(f"{what} '{text}': not a whole number of bytes")
    return int(value)


def human(n: int | float) -> str:
    """1536 → '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
