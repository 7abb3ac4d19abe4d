"""Restore ``--layout physical``: write the volume back onto PV images or devices at the physical
offsets the archive's physical map records (the second table put to use).

The target checks before the first write that the given PVs are the recorded ones (PV uuid when
they carry an LVM label, sizes always, and the LV layout their own VG metadata describes). It
writes only inside the recorded runs: never LVM or thin metadata, never outside the LV.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from typing import Any

import numpy as np

from volpack.errors import SourceError, TargetError, UsageError
from volpack.exactio import Subject, pwrite_all
from volpack.extents import Extents
from volpack.format.description import SourceDescription
from volpack.format.reader import Head
from volpack.physmap import PM_UNKNOWN, PhysicalMap

_ZERO_CHUNK = 4 << 20


class PhysicalTarget:
    """Scatters volume writes to (device, physical offset) through a recorded physical map."""

    def __init__(
        self,
        pv_paths: tuple[str, ...],
        pmap: PhysicalMap,
        *,
        force: bool,
        source_details: Mapping[str, Any] | None = None,
    ) -> None:
        self.pmap = pmap
        self.details = source_details or {}
        self.description = f"physical layout on {', '.join(pv_paths)}"
        if not force:
            raise TargetError(
                f"{', '.join(pv_paths) or 'physical layout'}: writes into existing physical "
                "volumes; use --force"
            )
        if not pv_paths:
            raise UsageError("--layout physical: give the physical volumes with --pv")
        if np.any(pmap.device < 0) or np.any(pmap.offsets < 0) or np.any(pmap.flags & PM_UNKNOWN):
            raise TargetError(
                "physical layout: the archive's physical map has runs without a known location; "
                "restore with the raw layout instead"
            )
        self.paths = self._match(tuple(pv_paths))
        self.fds: list[int] = []
        self._ends = pmap.starts + pmap.lengths
        self._used = Extents.empty()
        self._size = 0

    # -- matching the given PVs to the recorded devices ------------------------------------------
    def _match(self, given: tuple[str, ...]) -> list[str]:
        from volpack.source.lvm_metadata import read_pv_label

        recorded = self.details.get("pvs") or []
        uuids = [p.get("uuid") for p in recorded] if len(recorded) == len(self.pmap.devices) else []
        labels: dict[str, str | None] = {}
        for path in given:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise TargetError(f"{path}: cannot open ({exc.strerror})") from None
            try:
                labels[path] = read_pv_label(fd, path).uuid
            except SourceError:
                labels[path] = None
            finally:
                os.close(fd)
        labelled = [p for p in given if labels[p] is not None]
        if uuids and labelled:
            if len(labelled) != len(given):
                blank = ", ".join(p for p in given if labels[p] is None)
                raise TargetError(
                    f"{blank}: no LVM label while the other PVs have one; give "
                    "either the original PVs or blank images only"
                )
            by_uuid = {labels[p]: p for p in given}
            out = []
            for uuid, dev in zip(uuids, self.pmap.devices, strict=True):
                if uuid not in by_uuid:
                    raise TargetError(
                        f"physical layout: no given PV has uuid {uuid} (recorded as {dev}); "
                        "give the PVs of the backed-up VG"
                    )
                out.append(by_uuid[uuid])
            return out  # other PVs of the VG may be given too; they are not written
        if len(given) != len(self.pmap.devices):
            raise TargetError(
                f"physical layout: the archive records {len(self.pmap.devices)} devices "
                f"({', '.join(self.pmap.devices)}) but {len(given)} were given"
            )
        return list(given)

    def _check_layout(self) -> None:
        """When the targets carry the VG, its LV must map exactly as recorded."""
        from volpack.source.lvm import open_lvm

        vg, lv = self.details.get("vg"), self.details.get("lv")
        if not vg or not lv:
            return
        try:
            src = open_lvm(f"lvm:{vg}/{lv}", tuple(self.paths))
        except SourceError as exc:
            if "LABELONE" in str(exc):
                return  # blank images: only sizes can be checked
            raise TargetError(
                f"physical layout: the target PVs do not hold {vg}/{lv} as recorded ({exc})"
            ) from None
        try:
            now = src.physical_map()
        finally:
            src.close()
        index = {os.path.abspath(p): i for i, p in enumerate(self.paths)}
        remap = np.array([index.get(os.path.abspath(d), -1) for d in now.devices] or [-1])
        same = (
            len(now) == len(self.pmap)
            and np.array_equal(now.starts, self.pmap.starts)
            and np.array_equal(now.lengths, self.pmap.lengths)
            and np.array_equal(now.offsets, self.pmap.offsets)
            and np.array_equal(remap[now.device] if len(now) else now.device, self.pmap.device)
        )
        if not same:
            raise TargetError(
                f"physical layout: {vg}/{lv} on the target PVs is laid out differently from the "
                "archive's physical map (resized, moved or re-created); restore the raw layout "
                "onto the LV instead"
            )

    # -- the Target protocol ---------------------------------------------------------------------
    def prepare(self, volume_size: int, used_bytes: Extents) -> None:
        self._check_layout()
        recorded = self.details.get("pvs") or []
        for i, path in enumerate(self.paths):
            sel = self.pmap.device == i
            need = int((self.pmap.offsets[sel] + self.pmap.lengths[sel]).max()) if sel.any() else 0
            if i < len(recorded) and len(recorded) == len(self.paths):
                need = max(need, int(recorded[i].get("dev_size") or 0))
            try:
                st = os.stat(path)
                is_dev = stat.S_ISBLK(st.st_mode)
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | (os.O_EXCL if is_dev else 0))
            except OSError as exc:
                raise TargetError(f"{path}: cannot open for writing ({exc.strerror})") from None
            self.fds.append(fd)
            size = os.lseek(fd, 0, os.SEEK_END)
            if size < need:
                raise TargetError(
                    f"{path}: {size} bytes, but the recorded layout needs {need}; give the "
                    "original PV or one at least that large"
                )
        unplaced = used_bytes.subtract(Extents.from_arrays(self.pmap.starts, self._ends))
        if unplaced.total():
            s, e = next(iter(unplaced))
            raise TargetError(
                f"physical layout: used bytes [{s}, {e}) have no recorded physical location "
                f"({unplaced.total()} bytes in all); restore the raw layout instead"
            )
        self._used = used_bytes
        self._size = volume_size

    def write_at(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        i = int(np.searchsorted(self._ends, offset, side="right"))
        pos = offset
        while pos < end:
            if i >= len(self.pmap) or int(self.pmap.starts[i]) > pos:
                stop = min(end, int(self.pmap.starts[i]) if i < len(self.pmap) else end)
                if np.frombuffer(data[pos - offset : stop - offset], np.uint8).any():
                    raise TargetError(
                        f"physical layout: data at volume offset {pos} has no recorded physical "
                        "location; restore the raw layout instead"
                    )
                pos = stop
                continue
            stop = min(end, int(self._ends[i]))
            phys = int(self.pmap.offsets[i]) + pos - int(self.pmap.starts[i])
            self._pwrite(int(self.pmap.device[i]), data[pos - offset : stop - offset], phys)
            pos = stop
            i += 1

    def _pwrite(self, dev: int, data: memoryview, phys: int) -> None:
        pwrite_all(self.fds[dev], data, phys, Subject(self.paths[dev], TargetError))

    def finish(self) -> None:
        # The LV must read as the archive says: zeros wherever the archive holds no data.
        unused = self._used.complement(0, self._size)
        zeros = memoryview(bytes(_ZERO_CHUNK))
        for s, e in unused.intersect(Extents.from_arrays(self.pmap.starts, self._ends)):
            for pos in range(s, e, _ZERO_CHUNK):
                self.write_at(pos, zeros[: min(_ZERO_CHUNK, e - pos)])
        errors = []
        for fd, path in zip(self.fds, self.paths, strict=False):
            try:
                os.fsync(fd)
            except OSError as exc:
                errors.append(f"{path}: fsync failed ({exc.strerror})")
            try:
                os.close(fd)
            except OSError as exc:
                errors.append(f"{path}: close failed ({exc.strerror})")
        self.fds = []
        if errors:
            raise TargetError("; ".join(errors) + "; the restored data may not be durable")

    def abort(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


# Source kinds whose physical map names places this target may write: an LVM LV's PV extents
# belong to the LV alone. A file's map (FIEMAP) points into the host filesystem's disk, a qcow2
# map into the image file's clusters: writing there would overwrite other files. Allow-listed, so
# a new source kind is refused until it is known to be safe.
PHYSICAL_LAYOUT_KINDS = ("lvm",)


def check_physical_layout_kind(archive_url: str, source: SourceDescription) -> None:
    """UsageError unless the archive's recorded source is a kind ``--layout physical`` is for."""
    if source.kind not in PHYSICAL_LAYOUT_KINDS:
        raise UsageError(
            f"{archive_url}: --layout physical is for LVM logical volumes, but this archive was "
            f"made from a {source.kind or 'unrecorded'} source ({source.path or '?'}); restore "
            "it without --layout physical"
        )


def open_physical_for_archive(
    archive_url: str, head: Head, pv_paths: tuple[str, ...], *, force: bool
) -> PhysicalTarget:
    """The physical-layout target for an archive whose head was just read: refuse a source kind
    the layout is not for, then match ``pv_paths`` to the recorded devices."""
    check_physical_layout_kind(archive_url, head.desc.source)
    return open_physical_target(
        pv_paths, head.pmap, force=force, source_details=head.desc.source.details
    )


def open_physical_target(
    pv_paths: tuple[str, ...],
    physical_map: PhysicalMap,
    *,
    force: bool,
    source_details: Mapping[str, Any] | None = None,
) -> PhysicalTarget:
    """A Target writing through ``physical_map`` onto ``pv_paths``. ``source_details`` is the
    archive's recorded source details (PV uuids, sizes, VG/LV) used to check the targets."""
    return PhysicalTarget(tuple(pv_paths), physical_map, force=force, source_details=source_details)
