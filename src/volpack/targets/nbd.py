"""Restore into an NBD export (``nbd://HOST[:PORT]/EXPORT``, ``nbd+unix:///EXPORT?socket=PATH``).

The same contract as a block device: overwriting an export needs ``--force``; prepare checks the
export is writable and large enough (or holds every used byte with ``--allow-smaller``); writes
go in increasing order without waiting for each reply (every reply is checked before the restore
ends), unused ranges are zeroed (WRITE_ZEROES) unless ``--assume-zeroed``, and a FLUSH ends the
restore. Never trims or resizes the export.
"""

from __future__ import annotations

from volpack.errors import TargetError
from volpack.extents import Extents
from volpack.source.nbd_client import NbdClient
from volpack.targets.base import writable_limit


class NbdTarget:
    """An NBD export written in place."""

    def __init__(self, url: str, *, force: bool, allow_smaller: bool, assume_zeroed: bool) -> None:
        self.url = url
        self.description = f"NBD export {url}"
        if not force:
            raise TargetError(
                f"{url}: is an NBD export; restoring overwrites all of it, add --force"
            )
        self._client = NbdClient(url, TargetError, write=True)
        self.capacity = self._client.export.size
        self.allow_smaller = allow_smaller
        self.assume_zeroed = assume_zeroed
        self.limit = 0
        self.zeroed_to = 0

    def prepare(self, volume_size: int, used_bytes: Extents) -> None:
        if self._client.export.read_only:
            raise TargetError(
                f"{self.url}: the export is read-only; export it writable (qemu-nbd without -r)"
            )
        self.limit = writable_limit(
            self.url, "export", self.capacity, volume_size, used_bytes, self.allow_smaller
        )

    def _zero(self, start: int, end: int) -> None:
        if not self.assume_zeroed:
            # Sent without waiting, as the writes are; finish() settles every reply.
            self._client.zero_behind(start, end)

    def write_at(self, offset: int, data: memoryview) -> None:
        self._zero(self.zeroed_to, offset)
        # Sent now, replies checked while the next frame is decoded; finish() settles them all.
        self._client.write_behind(data, offset)
        self.zeroed_to = offset + len(data)

    def finish(self) -> None:
        self._zero(self.zeroed_to, self.limit)
        self._client.flush()
        self._client.close()

    def abort(self) -> None:
        self._client.close()


def open_nbd_target(
    url: str, *, force: bool, allow_smaller: bool = False, assume_zeroed: bool = False
) -> NbdTarget:
    return NbdTarget(url, force=force, allow_smaller=allow_smaller, assume_zeroed=assume_zeroed)
