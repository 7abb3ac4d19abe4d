"""The LVM volume group model: PVs, LVs and segments from the parsed VG text, and the mapping of
LV bytes to PV bytes (linear, multi-segment, striped, LV-on-LV) as numpy run tables.

Pure computation on the parsed configuration: no I/O, no device-mapper. Segment types other than
striped/linear are described but never guessed at; callers refuse what they cannot map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from volpack.errors import SourceError

SECTOR = 512
MAX_STACK = 8  # LV areas that point at other LVs (pool data, sub-LVs) never nest deeply
# One run per stripe chunk: 64 Mi runs (a 4 TiB LV in 64 KiB stripes) is 2 GiB of table.
MAX_RUNS = 1 << 26


@dataclass(frozen=True, slots=True)
class PV:
    name: str  # "pv0" in the VG text
    uuid: str
    pe_start: int  # bytes
    pe_count: int
    dev_size: int  # bytes (0 when not recorded)


@dataclass(frozen=True, slots=True)
class Area:
    kind: str  # "pv" or "lv"
    name: str
    start: int  # first extent on that PV (pe) or LV (le)


@dataclass(frozen=True, slots=True)
class Segment:
    start_extent: int
    extent_count: int
    type: str
    stripe_size: int  # bytes; 0 for linear
    areas: tuple[Area, ...]
    params: dict[str, Any]  # thin/thin-pool keys: thin_pool, device_id, metadata, pool, chunk_size


@dataclass(frozen=True, slots=True)
class LV:
    name: str
    uuid: str
    status: tuple[str, ...]
    segments: tuple[Segment, ...]

    @property
    def extent_count(self) -> int:
        last = self.segments[-1] if self.segments else None
        return last.start_extent + last.extent_count if last else 0


@dataclass(frozen=True, slots=True)
class VG:
    name: str
    uuid: str
    seqno: int
    extent_size: int  # bytes
    pvs: dict[str, PV]
    lvs: dict[str, LV]

    def lv(self, name: str) -> LV:
        lv = self.lvs.get(name)
        if lv is None:
            known = ", ".join(sorted(self.lvs)) or "none"
            raise SourceError(f"lvm:{self.name}/{name}: no such LV (the VG has: {known})")
        return lv


def _int(section: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = section.get(key)
    if not isinstance(value, int) or value < minimum:
        raise SourceError(f"{where}: '{key}' is {value!r}, expected an integer >= {minimum}")
    return value


def _str(section: dict[str, Any], key: str, where: str) -> str:
    value = section.get(key)
    if not isinstance(value, str):
        raise SourceError(f"{where}: '{key}' is {value!r}, expected a string")
    return value


def vg_from_config(name: str, cfg: dict[str, Any]) -> VG:
    """Build the VG model from the parsed text of VG ``name``, checking every bound."""
    where = f"lvm:{name}"
    extent_size = _int(cfg, "extent_size", where, 1) * SECTOR
    pvs: dict[str, PV] = {}
    for pv_name, sec in (cfg.get("physical_volumes") or {}).items():
        w = f"{where} {pv_name}"
        if not isinstance(sec, dict):
            raise SourceError(f"{w}: not a section")
        pvs[pv_name] = PV(
            pv_name,
            _str(sec, "id", w),
            _int(sec, "pe_start", w) * SECTOR,
            _int(sec, "pe_count", w),
            int(sec.get("dev_size", 0) or 0) * SECTOR,
        )
    lvs: dict[str, LV] = {}
    for lv_name, sec in (cfg.get("logical_volumes") or {}).items():
        if not isinstance(sec, dict):
            raise SourceError(f"{where}/{lv_name}: not a section")
        lvs[lv_name] = _lv(f"{where}/{lv_name}", lv_name, sec, pvs, extent_size)
    return VG(name, _str(cfg, "id", where), _int(cfg, "seqno", where), extent_size, pvs, lvs)


def _lv(where: str, name: str, sec: dict[str, Any], pvs: dict[str, PV], extent_size: int) -> LV:
    count = _int(sec, "segment_count", where, 1)
    segments = []
    next_extent = 0
    for i in range(1, count + 1):
        seg = sec.get(f"segment{i}")
        if not isinstance(seg, dict):
            raise SourceError(f"{where}: segment{i} of {count} is missing")
        w = f"{where} segment{i}"
        start = _int(seg, "start_extent", w)
        extents = _int(seg, "extent_count", w, 1)
        if start != next_extent:
            raise SourceError(f"{w}: starts at extent {start}, expected {next_extent}")
        next_extent = start + extents
        seg_type = _str(seg, "type", w)
        areas: list[Area] = []
        stripe_size = 0
        if seg_type == "striped":
            raw = seg.get("stripes")
            n = _int(seg, "stripe_count", w, 1)
            if not isinstance(raw, list) or len(raw) != 2 * n:
                raise SourceError(f"{w}: 'stripes' does not list {n} (name, extent) pairs")
            if extents % n:
                raise SourceError(f"{w}: {extents} extents do not split into {n} stripes")
            if n > 1:
                stripe_size = _int(seg, "stripe_size", w, 1) * SECTOR
                if (extents // n * extent_size) % stripe_size:
                    raise SourceError(f"{w}: stripe length is not a multiple of {stripe_size}")
            for area_name, first in zip(raw[0::2], raw[1::2], strict=True):
                if not isinstance(area_name, str) or not isinstance(first, int) or first < 0:
                    raise SourceError(f"{w}: bad stripe entry {area_name!r}, {first!r}")
                kind = "pv" if area_name in pvs else "lv"
                if kind == "pv" and first + extents // n > pvs[area_name].pe_count:
                    raise SourceError(
                        f"{w}: extents {first}..{first + extents // n} lie past the "
                        f"{pvs[area_name].pe_count} extents of {area_name}"
                    )
                areas.append(Area(kind, area_name, first))
        params = {k: v for k, v in seg.items() if k not in ("stripes",)}
        segments.append(Segment(start, extents, seg_type, stripe_size, tuple(areas), params))
    status = tuple(s for s in (sec.get("status") or []) if isinstance(s, str))
    return LV(name, str(sec.get("id", "")), status, tuple(segments))


@dataclass(frozen=True, slots=True, eq=False)
class Runs:
    """Runs of LV bytes → (PV index, PV byte offset), sorted by ``starts``; gaps read as zeros."""

    starts: np.ndarray
    lengths: np.ndarray
    device: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def concat(parts: list[Runs]) -> Runs:
        if not parts:
            z = np.zeros(0, np.int64)
            return Runs(z, z, z, z)
        runs = Runs(*(np.concatenate([getattr(p, f) for p in parts]) for f in Runs.__slots__))
        order = np.argsort(runs.starts, kind="stable")
        return Runs(
            runs.starts[order], runs.lengths[order], runs.device[order], runs.offsets[order]
        )

    def __len__(self) -> int:
        return int(self.starts.size)

    def compose(self, starts: np.ndarray, lengths: np.ndarray, inner: np.ndarray) -> Runs:
        """Runs ``starts[i] .. +lengths[i]`` that live at ``inner[i]`` in the space ``self``
        maps: split them at ``self``'s run boundaries, in O(pieces). Unmapped pieces vanish."""
        if starts.size == 0 or len(self) == 0:
            return Runs.concat([])
        ends = inner + lengths
        first = np.searchsorted(self.starts, inner, side="right") - 1
        last = np.searchsorted(self.starts, ends, side="left") - 1
        first = np.maximum(first, 0)
        count = np.maximum(last - first + 1, 0)
        which = np.repeat(np.arange(starts.size), count)
        idx = np.repeat(first, count) + (
            np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        )
        lo = np.maximum(inner[which], self.starts[idx])
        hi = np.minimum(ends[which], self.starts[idx] + self.lengths[idx])
        keep = hi > lo
        which, idx, lo, hi = which[keep], idx[keep], lo[keep], hi[keep]
        out = Runs(
            starts[which] + (lo - inner[which]),
            hi - lo,
            self.device[idx],
            self.offsets[idx] + (lo - self.starts[idx]),
        )
        return Runs.concat([out])


def pv_order(vg: VG) -> list[str]:
    """PV names in a fixed order (the VG text order); ``Runs.device`` indexes this list."""
    return list(vg.pvs)


def lv_runs(vg: VG, lv: LV, depth: int = 0) -> Runs:
    """Where every byte of a thick LV lives on the PVs. Raises for thin and other segment types."""
    if depth > MAX_STACK:
        raise SourceError(f"lvm:{vg.name}/{lv.name}: LVs stacked more than {MAX_STACK} deep")
    order = {name: i for i, name in enumerate(pv_order(vg))}
    x = vg.extent_size
    parts = []
    for seg in lv.segments:
        if seg.type != "striped":
            raise SourceError(
                f"lvm:{vg.name}/{lv.name}: segment type '{seg.type}' at extent "
                f"{seg.start_extent} is not supported (linear, striped and thin are)"
            )
        n = len(seg.areas)
        seg_start = seg.start_extent * x
        per_area = seg.extent_count // n * x
        chunk = seg.stripe_size if n > 1 else per_area
        rows = per_area // chunk
        if rows * n > MAX_RUNS:
            raise SourceError(
                f"lvm:{vg.name}/{lv.name}: segment at extent {seg.start_extent} has {rows * n} "
                f"stripe chunks, more than {MAX_RUNS} physical-map runs; not supported"
            )
        c = np.arange(rows * n, dtype=np.int64)
        stripe = c % n
        starts = seg_start + c * chunk
        lengths = np.full(c.size, chunk, np.int64)
        local = (c // n) * chunk  # byte offset inside the stripe's area
        for k, area in enumerate(seg.areas):
            sel = stripe == k
            if area.kind == "pv":
                pv = vg.pvs[area.name]
                base = pv.pe_start + area.start * x
                parts.append(
                    Runs(
                        starts[sel],
                        lengths[sel],
                        np.full(int(sel.sum()), order[area.name], np.int64),
                        base + local[sel],
                    )
                )
            else:
                sub_lv = vg.lv(area.name)
                if area.start + seg.extent_count // n > sub_lv.extent_count:
                    raise SourceError(
                        f"lvm:{vg.name}/{lv.name}: segment at extent {seg.start_extent} reaches "
                        f"past the {sub_lv.extent_count} extents of {sub_lv.name}"
                    )
                sub = lv_runs(vg, sub_lv, depth + 1)
                parts.append(sub.compose(starts[sel], lengths[sel], area.start * x + local[sel]))
    return Runs.concat(parts)


def check_readable(vg: VG, lv: LV) -> None:
    """Refuse LVs whose own extents are not their contents: the COW store of an old-style
    snapshot holds exception chunks, not the snapshot's view of the origin."""
    for other in vg.lvs.values():
        for seg in other.segments:
            if seg.type == "snapshot" and seg.params.get("cow_store") == lv.name:
                raise SourceError(
                    f"lvm:{vg.name}/{lv.name}: is the copy-on-write store of an old-style "
                    f"snapshot of {seg.params.get('origin')}; reading a snapshot's contents is "
                    "not supported: back up the origin with the VG inactive, or use thin snapshots"
                )


def describe_segments(vg: VG, lv: LV) -> list[dict[str, Any]]:
    """JSON-able segment list for ``info``/``map``."""
    out = []
    for seg in lv.segments:
        item: dict[str, Any] = {
            "start_extent": seg.start_extent,
            "extent_count": seg.extent_count,
            "type": seg.type,
        }
        if seg.stripe_size:
            item["stripe_size"] = seg.stripe_size
        if seg.areas:
            item["areas"] = [
                {"pv" if a.kind == "pv" else "lv": a.name, "start": a.start} for a in seg.areas
            ]
        for key in ("thin_pool", "device_id", "metadata", "pool", "chunk_size", "transaction_id"):
            if key in seg.params:
                item[key] = seg.params[key]
        out.append(item)
    return out
