"""The Target seam: where a restore writes the volume back.

Writes arrive in increasing volume-offset order (the address table is sorted), so a target can be
a stream-friendly writer (thin file, block device, qcow2, physical layout). A target is only
opened after the archive's header and tables have checked out.
"""

from __future__ import annotations

from typing import Protocol

from volpack.errors import TargetError
from volpack.extents import Extents


class Target(Protocol):
    description: str

    def prepare(self, volume_size: int, used_bytes: Extents) -> None:
        """Check capacity and layout before the first write; raise TargetError to refuse."""
        ...

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write volume bytes at ``offset`` (calls come in increasing offset order). ``data``
        is valid only during the call (its buffer serves the next frame): copy what must
        outlive it."""
        ...

    def finish(self) -> None:
        """Zero or punch the unused ranges as the target needs, set the size, flush, fsync, and
        publish (rename a temporary file). Report close/fsync errors as TargetError."""
        ...

    def abort(self) -> None:
        """Stop after a failure: never delete a pre-existing target; drop a temporary file."""
        ...


def writable_limit(
    subject: str, kind: str, capacity: int, volume_size: int, used: Extents, allow_smaller: bool
) -> int:
    """How much of the volume a fixed-size target (a device, an NBD export) of ``capacity`` bytes
    takes: all of it, or with ``allow_smaller`` as much as fits when every used byte does."""
    highest = used.last
    if capacity < volume_size:
        if not allow_smaller:
            raise TargetError(
                f"{subject}: {kind} holds {capacity} B, the volume is {volume_size} B; use a "
                f"larger {kind}, or --allow-smaller (needs at least {highest} B, the end of the "
                "highest used block)"
            )
        if capacity < highest:
            raise TargetError(
                f"{subject}: {kind} holds {capacity} B, the highest used byte ends at "
                f"{highest} B; use {'an' if kind[0] in 'aeiou' else 'a'} {kind} of at least that "
                "size"
            )
    return min(volume_size, capacity)
