"""LVM logical volumes as sources, read offline from the PV images or devices (``lvm:VG/LV``).

The newest VG text across the given PVs says where each LV extent lives; thin LVs add the pool's
thin metadata. The result is one run table (LV bytes → PV bytes) that is both the physical map
and the read path. Nothing here activates, locks or writes anything, and no device-mapper is used.
"""

from __future__ import annotations

import array
import fcntl
import os
import stat
from typing import Any

import numpy as np

from volpack.errors import SourceError, UsageError
from volpack.exactio import Subject, preadv_exact
from volpack.extents import Extents
from volpack.source.base import PhysicalMap, SourceInfo
from volpack.source.lvm_metadata import PVLabel, parse_config, read_metadata, read_pv_label
from volpack.source.lvm_thin import ThinMap, ThinPool
from volpack.source.lvm_thin_delta import mapping_delta, mapping_digest
from volpack.source.lvm_vg import (
    LV,
    VG,
    Runs,
    check_readable,
    describe_segments,
    lv_runs,
    vg_from_config,
)

BLKGETSIZE64 = 0x80081272
PREFIX = "lvm:"


def parse_lvm_path(path: str) -> tuple[str, str]:
    """``lvm:VG/LV`` → (VG, LV)."""
    name = path[len(PREFIX) :] if path.startswith(PREFIX) else path
    vg, sep, lv = name.partition("/")
    if not sep or not vg or not lv or "/" in lv:
        raise UsageError(f"{path}: not an LVM volume name; write lvm:VG/LV")
    return vg, lv


class _PVFile:
    """One PV image or device, opened read-only (exclusively for devices: a busy PV is refused)."""

    def __init__(self, path: str) -> None:
        from volpack.source.checks import check_volume_path

        self.path = path
        check_volume_path(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SourceError(f"{path}: cannot open physical volume ({exc.strerror})") from None
        self.is_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_device or stat.S_ISREG(st.st_mode)):
            raise SourceError(f"{path}: not an image file or block device; give PVs with --pv")
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_EXCL if self.is_device else 0)
        try:
            self.fd = os.open(path, flags)
        except OSError as exc:
            raise SourceError(
                f"{path}: cannot open physical volume ({exc.strerror}); an active VG holds its "
                "PVs busy: deactivate it or back up a snapshot"
            ) from None
        try:
            if self.is_device:
                buf = array.array("B", bytes(8))
                fcntl.ioctl(self.fd, BLKGETSIZE64, buf, True)
                self.size = int.from_bytes(buf.tobytes(), "little")
            else:
                self.size = os.fstat(self.fd).st_size
            self.label: PVLabel = read_pv_label(self.fd, path)
        except BaseException:
            # A file given with --pv that is no PV: no object is made, so none would close it.
            self.close()
            raise

    def stamp(self) -> tuple[object, ...]:
        st = os.fstat(self.fd)
        return (self.size, 0 if self.is_device else st.st_mtime_ns)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RunReader:
    """Reads a byte range through a run table; gaps between runs read as zeros."""

    def __init__(self, fds: list[int], runs: Runs, size: int, where: str) -> None:
        self.fds = fds
        self.runs = runs
        self.size = size
        self.where = where
        self._ends = runs.starts + runs.lengths
        # Offsets in its messages are physical: where the PV holds the bytes.
        self._pv = Subject(
            f"{where} on its physical volume",
            SourceError,
            at_end="the PV image is truncated",
            on_error="the PV may be failing",
        )

    def read_into(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if offset < 0 or end > self.size:
            raise SourceError(
                f"{self.where}: read of {len(buf)} bytes at {offset} is past the end "
                f"({self.size} bytes)"
            )
        runs = self.runs
        i = int(np.searchsorted(self._ends, offset, side="right"))
        pos = offset
        while pos < end:
            start = int(runs.starts[i]) if i < len(runs) else end
            if start > pos:  # a gap: zeros without touching any device
                stop = min(start, end)
                buf[pos - offset : stop - offset] = bytes(stop - pos)
                pos = stop
                continue
            stop = min(int(self._ends[i]), end)
            phys = int(runs.offsets[i]) + (pos - start)
            preadv_exact(
                self.fds[int(runs.device[i])], (buf[pos - offset : stop - offset],), phys, self._pv
            )
            pos = stop
            i += 1

    def read_at(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        self.read_into(offset, memoryview(out))
        return bytes(out)


class LvmSource:
    """One LV of a VG found on the given PVs."""

    def __init__(self, path: str, pv_paths: tuple[str, ...], *, thin_snapshot: bool = False):
        self.path = path
        self.vg_name, self.lv_name = parse_lvm_path(path)
        if not pv_paths:
            raise UsageError(f"{path}: no physical volumes given; add --pv IMAGE for each PV")
        self._pvs: list[_PVFile] = []
        try:
            for p in pv_paths:
                self._pvs.append(_PVFile(p))
            self._open(thin_snapshot)
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------------
    def _open(self, thin_snapshot: bool) -> None:
        self.vg = self._newest_vg()
        lv = self.vg.lv(self.lv_name)
        check_readable(self.vg, lv)
        self.lv = lv
        by_uuid: dict[str, _PVFile] = {}
        for pv in self._pvs:
            twin = by_uuid.get(pv.label.uuid)
            if twin is not None and os.path.realpath(twin.path) != os.path.realpath(pv.path):
                raise SourceError(
                    f"{pv.path}: carries PV uuid {pv.label.uuid} like {twin.path}; a cloned PV "
                    "is ambiguous: give only one of them"
                )
            by_uuid[pv.label.uuid] = pv
        # Every extent the VG places on a given PV must lie inside it, before any table is built.
        for vg_pv in self.vg.pvs.values():
            found = by_uuid.get(vg_pv.uuid)
            need = vg_pv.pe_start + vg_pv.pe_count * self.vg.extent_size
            if found is not None and found.size < need:
                raise SourceError(
                    f"{found.path}: PV is {found.size} bytes but the VG places extents up to "
                    f"{need}; the image is truncated"
                )
        thin = self._thin_segment(lv)
        if thin is None:
            runs = lv_runs(self.vg, lv)
            self.thin: dict[str, Any] | None = None
            self._data = Extents.span(0, lv.extent_count * self.vg.extent_size)
        else:
            runs = self._open_thin(lv, thin, by_uuid, thin_snapshot)
        self._size = lv.extent_count * self.vg.extent_size
        # Keep only the PVs this LV touches, in VG order; the physical map names them by path.
        order = list(self.vg.pvs)
        used = sorted(set(runs.device.tolist()))
        devices: list[_PVFile] = []
        for index in used:
            needed = self.vg.pvs[order[index]]
            found = by_uuid.get(needed.uuid)
            if found is None:
                raise SourceError(
                    f"{self.path}: needs PV {needed.uuid} ({needed.name}) which is not among the "
                    "given --pv paths; add it"
                )
            devices.append(found)
        remap = np.full(max(used, default=0) + 1, -1, np.int64)
        remap[used] = np.arange(len(used))
        self._runs = Runs(runs.starts, runs.lengths, remap[runs.device], runs.offsets)
        self._devices = devices
        self._reader = RunReader([d.fd for d in devices], self._runs, self._size, self.path)

    def _newest_vg(self) -> VG:
        best: tuple[int, str, dict[str, Any]] | None = None
        for pv in self._pvs:
            for copy in read_metadata(pv.fd, pv.label, pv.size):
                cfg = parse_config(copy.text, f"{pv.path} metadata")
                section = cfg.get(self.vg_name)
                if not isinstance(section, dict):
                    continue
                seqno = section.get("seqno")
                if not isinstance(seqno, int):
                    raise SourceError(f"{pv.path}: VG {self.vg_name} metadata has no seqno")
                if best is not None and seqno == best[0] and section != best[2]:
                    raise SourceError(
                        f"{self.path}: two different metadata copies share seqno {seqno}; the "
                        "VG metadata is inconsistent (run vgck)"
                    )
                if best is None or seqno > best[0]:
                    best = (seqno, pv.path, section)
        if best is None:
            names = ", ".join(p.path for p in self._pvs)
            raise SourceError(f"{self.path}: VG {self.vg_name} is not on the given PVs ({names})")
        return vg_from_config(self.vg_name, best[2])

    @staticmethod
    def _thin_segment(lv: LV) -> Any:
        thin = [s for s in lv.segments if s.type == "thin"]
        if not thin:
            return None
        if len(lv.segments) != 1:
            raise SourceError(f"{lv.name}: a thin LV with {len(lv.segments)} segments is invalid")
        return thin[0]

    def _open_thin(self, lv: LV, seg: Any, by_uuid: dict[str, _PVFile], snap: bool) -> Runs:
        where = f"{self.path}"
        if "external_origin" in seg.params:
            raise SourceError(f"{where}: thin LVs with an external origin are not supported")
        pool_name = seg.params.get("thin_pool")
        dev_id = seg.params.get("device_id")
        if not isinstance(pool_name, str) or not isinstance(dev_id, int):
            raise SourceError(f"{where}: thin segment lacks thin_pool or device_id")
        pool = self.vg.lv(pool_name)
        pseg = pool.segments[0] if pool.segments else None
        if pseg is None or pseg.type != "thin-pool" or len(pool.segments) != 1:
            raise SourceError(f"{where}: pool {pool_name} is not a thin-pool LV")
        meta_lv = self.vg.lv(str(pseg.params.get("metadata")))
        data_lv = self.vg.lv(str(pseg.params.get("pool")))
        meta_runs = lv_runs(self.vg, meta_lv)
        data_runs = lv_runs(self.vg, data_lv)
        # The thin metadata lives on the same PVs; read it through the VG's own PV numbering.
        order = list(self.vg.pvs)
        fds = []
        for name in order:
            found = by_uuid.get(self.vg.pvs[name].uuid)
            fds.append(found.fd if found is not None else -1)
        if any(fds[d] < 0 for d in set(meta_runs.device.tolist())):
            raise SourceError(f"{where}: a PV of the pool metadata {meta_lv.name} is not given")
        meta_size = meta_lv.extent_count * self.vg.extent_size
        meta = RunReader(fds, meta_runs, meta_size, f"{self.vg.name}/{meta_lv.name}")
        tp = ThinPool(meta.read_at, meta_size, f"lvm:{self.vg.name}/{pool_name}", snapshot=snap)
        chunk = pseg.params.get("chunk_size")
        if chunk is None or int(chunk) * 512 != tp.data_block_size:
            raise SourceError(
                f"{where}: VG says chunk size {chunk} sectors but the pool metadata says "
                f"{tp.data_block_size // 512}; metadata and VG disagree"
            )
        vg_trans = pseg.params.get("transaction_id")
        if vg_trans != tp.transaction_id:
            raise SourceError(
                f"{where}: pool transaction id is {tp.transaction_id} but the VG expects "
                f"{vg_trans}; the pool is active or its metadata is inconsistent — deactivate "
                "the pool (or use a metadata snapshot) and retry"
            )
        data_size = data_lv.extent_count * self.vg.extent_size
        if tp.data_blocks * tp.data_block_size > data_size:
            raise SourceError(
                f"{where}: pool metadata counts {tp.data_blocks} data blocks, past the "
                f"{data_size} bytes of {data_lv.name}"
            )
        details = tp.devices().get(dev_id)
        if details is None:
            raise SourceError(f"{where}: thin device {dev_id} is missing from the pool metadata")
        tmap = tp.device_map(dev_id)
        if tmap.total() != details.mapped_blocks:
            raise SourceError(
                f"{where}: thin device {dev_id} maps {tmap.total()} blocks but its details "
                f"record {details.mapped_blocks}; the pool metadata is inconsistent"
            )
        bs = tp.data_block_size
        size = lv.extent_count * self.vg.extent_size
        starts = tmap.virt * bs
        keep = starts < size  # mappings past a reduced LV's end are unreachable
        starts = starts[keep]
        lengths = np.minimum(tmap.length[keep] * bs, size - starts)
        runs = data_runs.compose(starts, lengths, tmap.data[keep] * bs)
        self._data = Extents.from_arrays(starts, starts + lengths)
        self._pool, self._tmap = tp, tmap
        self.thin = {
            "pool": pool_name,
            "device_id": dev_id,
            "metadata_lv": meta_lv.name,
            "data_lv": data_lv.name,
            "chunk_size": bs,
            "transaction_id": tp.transaction_id,
            "mapped_blocks": details.mapped_blocks,
            "metadata_snapshot": snap,
            "mapping_root": tp.mapping_root,
            "creation_time": details.creation_time,
            # What a later backup looks for: a device that still maps exactly these blocks.
            "mapping_digest": mapping_digest(tmap),
        }
        return runs

    # -- the change hint ---------------------------------------------------------------------------
    def thin_delta(self, base: dict[str, Any]) -> tuple[Extents, int] | str:
        """The byte runs whose thin mapping differs from a device of the pool that still maps
        exactly what a base archive read (``base``: the source details its DESC records), and
        that device's id; or why there is no such device. The base's own device comes first; the
        device being read never counts (its old mapping is gone)."""
        if self.thin is None:
            return f"{self.path} is not a thin volume"
        recorded = base.get("thin")
        if not isinstance(recorded, dict) or not isinstance(recorded.get("mapping_digest"), str):
            return "the base archive records no thin mapping (it is not of a thin volume)"
        if base.get("vg_uuid") != self.vg.uuid or recorded.get("pool") != self.thin["pool"]:
            return f"the base archive was read from another pool than {self.thin['pool']}"
        if recorded.get("chunk_size") != self.thin["chunk_size"]:
            return "the base archive's pool has another chunk size"
        this = self.thin["device_id"]
        devices = self._pool.devices()
        first = recorded.get("device_id")
        order = [first] + sorted(d for d in devices if d != first)
        for dev_id in order:
            if not isinstance(dev_id, int) or dev_id == this or dev_id not in devices:
                continue
            found = devices[dev_id]
            if found.mapped_blocks != recorded.get("mapped_blocks"):
                continue  # cheap: a device with another block count maps something else
            ref: ThinMap = self._pool.device_map(dev_id)
            if mapping_digest(ref) == recorded["mapping_digest"]:
                chunk = self.thin["chunk_size"]
                changed = mapping_delta(ref, self._tmap).scale_in(chunk).clip(0, self._size)
                return changed, dev_id
        return (
            f"no other device of pool {self.thin['pool']} still maps what the base archive read "
            f"(thin device {first}); keep a thin snapshot of the backed-up state until the next "
            "backup to use the pool's mappings as a hint"
        )

    # -- the Source protocol ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def info(self) -> SourceInfo:
        pvs = []
        for dev in self._devices:
            pv = next(p for p in self.vg.pvs.values() if p.uuid == dev.label.uuid)
            pvs.append(
                {
                    "path": os.path.abspath(dev.path),
                    "uuid": pv.uuid,
                    "name": pv.name,
                    "pe_start": pv.pe_start,
                    "pe_count": pv.pe_count,
                    "dev_size": dev.label.device_size,
                }
            )
        details: dict[str, Any] = {
            "vg": self.vg.name,
            "vg_uuid": self.vg.uuid,
            "seqno": self.vg.seqno,
            "extent_size": self.vg.extent_size,
            "lv": self.lv.name,
            "lv_uuid": self.lv.uuid,
            "segments": describe_segments(self.vg, self.lv),
            "pvs": pvs,
        }
        if self.thin is not None:
            details["thin"] = dict(self.thin)
        return SourceInfo("lvm", self.path, details)

    def data_extents(self) -> Extents:
        return self._data

    def physical_map(self) -> PhysicalMap:
        r = self._runs
        n = len(r)
        return PhysicalMap(
            tuple(os.path.abspath(d.path) for d in self._devices),
            r.starts.astype(np.int64),
            r.lengths.astype(np.int64),
            r.device.astype(np.int32),
            r.offsets.astype(np.int64),
            np.zeros(n, np.uint32),
        )

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._reader.read_into(offset, buf)

    def identity(self) -> tuple[object, ...]:
        thin = (self.thin or {}).get("transaction_id"), (self.thin or {}).get("mapping_root")
        return (self.vg.uuid, self.vg.seqno, thin, tuple(d.stamp() for d in self._devices))

    def close(self) -> None:
        for pv in self._pvs:
            pv.close()


def open_lvm(path: str, pvs: tuple[str, ...], *, thin_snapshot: bool = False) -> LvmSource:
    """Open ``lvm:VG/LV`` from the PV images or devices ``pvs`` (matched by PV uuid)."""
    return LvmSource(path, tuple(pvs), thin_snapshot=thin_snapshot)
