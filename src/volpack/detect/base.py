"""Shared shapes for used-block detectors.

A detector looks at a byte range of a volume through ``ReadAt`` and says which bytes are used.
Detectors only read; they never write and never raise anything but volpack errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from volpack.extents import Extents

# read_at(offset, length) -> exactly ``length`` bytes of the volume (zeros in holes).
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True, eq=False)
class Region:
    """One detector's verdict over ``[start, end)`` bytes of the volume.

    ``used`` holds absolute byte runs inside the region. ``used is None`` means the detector does
    not know (unknown partition type, gap): the caller falls back to holes + zero scan there.
    """

    start: int
    end: int
    detector: str  # "ext4", "gpt", "holes", "zeros", "all-used", …
    used: Extents | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class Detection:
    """The used map of a volume (in blocks) and how it was decided."""

    block_size: int
    used: Extents  # block runs
    regions: tuple[Region, ...]
    warnings: tuple[str, ...] = ()
