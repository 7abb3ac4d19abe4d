"""The Target seam: where a restore writes the volume back.

Writes arrive in increasing volume-offset order (the address table is sorted), so a target can be
a stream-friendly writer (thin file, block device, qcow2, physical layout). A target is only
opened after the archive's header and tables have checked out.
"""

from __future__ import annotations

from typing import Protocol

from volpack.extents import Extents


class Target(Protocol):
    description: str

    def prepare(self, volume_size: int, used_bytes: Extents) -> None:
        """Check capacity and layout before the first write; raise TargetError to refuse."""
        ...

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write volume bytes at ``offset`` (calls come in increasing offset order)."""
        ...

    def finish(self) -> None:
        """Zero or punch the unused ranges as the target needs, set the size, flush, fsync, and
        publish (rename a temporary file). Report close/fsync errors as TargetError."""
        ...

    def abort(self) -> None:
        """Stop after a failure: never delete a pre-existing target; drop a temporary file."""
        ...
