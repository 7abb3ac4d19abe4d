"""The Source seam: what every volume in the pipeline offers (size, data runs, physical map, bytes).

A Source is opened read-only and reads bytes; it never decides which blocks are *used* (that is
detect/) and never knows about archives (that is format/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from volpack.errors import UsageError
from volpack.extents import Extents
from volpack.physmap import PM_COMPRESSED as PM_COMPRESSED
from volpack.physmap import PM_ENCODED as PM_ENCODED
from volpack.physmap import PM_SHARED as PM_SHARED
from volpack.physmap import PM_UNKNOWN as PM_UNKNOWN
from volpack.physmap import PM_UNWRITTEN as PM_UNWRITTEN
from volpack.physmap import PM_ZERO as PM_ZERO
from volpack.physmap import PhysicalMap as PhysicalMap


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the archive records about where a volume came from (JSON-able)."""

    kind: str  # "file", "blockdev", "qcow2", "lvm", …
    path: str
    details: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """A volume opened read-only."""

    @property
    def size(self) -> int:
        """Volume size in bytes."""
        ...

    @property
    def info(self) -> SourceInfo: ...

    def data_extents(self) -> Extents:
        """Byte runs that may hold data; everything else is known to read as zeros (holes)."""
        ...

    def physical_map(self) -> PhysicalMap: ...

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the volume bytes at ``offset``; bytes past ``size`` are an error.
        Safe to call from several threads at once (the zero scan and the writer read in parallel)."""
        ...

    def identity(self) -> tuple[object, ...]:
        """A value that changes when the volume changes (size, mtime, …) for the point-in-time check."""
        ...

    def close(self) -> None: ...


def scratch_option(address: str, opts: list[str]) -> str:
    """The ``scratch=DIR`` option of a live-VM source address (``qmp:``, ``libvirt:``), the only
    one they take; "" when absent (the system temp dir)."""
    scratch = ""
    for opt in opts:
        key, _, value = opt.partition("=")
        if key != "scratch" or not value:
            raise UsageError(f"{address}: unknown option {opt!r}; only scratch=DIR is known")
        scratch = value
    return scratch
