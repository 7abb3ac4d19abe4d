"""qcow2 cluster mapping: the active L1/L2 tables of one image decoded into runs of guest bytes.

Only the qcow2 source uses this. It turns L2 entries (standard or extended, with subclusters) into
merged ``Runs`` with numpy, checking every host offset against the file it points into; it reads
metadata only, never guest data, and knows nothing about backing chains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volpack.errors import SourceError
from volpack.exactio import Subject, pread_exact, preadv_exact
from volpack.extents import Extents
from volpack.source.qcow2_format import Header

KIND_DATA = 1  # bytes stored at ``host`` (+ offset into the run) in the layer's data file
KIND_ZERO = 2  # the format says zeros; the backing file is not consulted
KIND_COMPRESSED = 3  # one guest cluster stored compressed at ``host`` (``csize`` bytes)

OFFSET_MASK = np.uint64(0x00FFFFFFFFFFFE00)
_U64 = np.uint64
_I64 = np.int64
# L2 entries decoded at once: bounds the temporary arrays on huge images (a mixed extended-L2
# cluster expands into 32 subcluster rows, so those batches are smaller).
_BATCH_ENTRIES = 1 << 20
_BATCH_ENTRIES_EXTL2 = 1 << 17


@dataclass(frozen=True, slots=True, eq=False)
class Runs:
    """Sorted, disjoint runs of guest bytes ``[starts, ends)`` with where each one lives.

    ``hosts`` is the host offset of ``starts`` for data runs and the offset of the compressed
    stream for compressed runs (whose guest cluster starts at ``starts`` rounded down to the
    layer's cluster size); ``layers`` indexes the chain, 0 being the top image.
    """

    starts: np.ndarray
    ends: np.ndarray
    kinds: np.ndarray
    hosts: np.ndarray
    csizes: np.ndarray
    layers: np.ndarray

    @staticmethod
    def empty() -> Runs:
        z = np.zeros(0, _I64)
        return Runs(z, z, np.zeros(0, np.int8), z, z, np.zeros(0, np.int16))

    @staticmethod
    def concat(parts: list[Runs]) -> Runs:
        if not parts:
            return Runs.empty()
        return Runs(*(np.concatenate([getattr(p, f) for p in parts]) for f in Runs.__slots__))

    def __len__(self) -> int:
        return int(self.starts.size)

    def take(self, index: np.ndarray) -> Runs:
        return Runs(*(getattr(self, f)[index] for f in Runs.__slots__))

    def sorted(self) -> Runs:
        return self.take(np.argsort(self.starts, kind="stable"))

    def merged(self) -> Runs:
        """Join neighbours of one layer and kind that continue each other (data: also on host)."""
        if self.starts.size < 2:
            return self
        s, e, k, h, layer = self.starts, self.ends, self.kinds, self.hosts, self.layers
        joins = (
            (s[1:] == e[:-1])
            & (k[1:] == k[:-1])
            & (layer[1:] == layer[:-1])
            & (
                (k[1:] == KIND_ZERO)
                | ((k[1:] == KIND_DATA) & (h[1:] == h[:-1] + (e[:-1] - s[:-1])))
            )
        )
        first = np.flatnonzero(np.concatenate([[True], ~joins]))
        last = np.append(first[1:], s.size) - 1
        out = self.take(first)
        return Runs(out.starts, e[last].copy(), out.kinds, out.hosts, out.csizes, out.layers)

    def clip(self, end: int) -> Runs:
        """Only what lies below ``end``."""
        keep = self.starts < end
        out = self.take(np.flatnonzero(keep))
        return Runs(
            out.starts, np.minimum(out.ends, end), out.kinds, out.hosts, out.csizes, out.layers
        )

    def within(self, holes: Extents) -> Runs:
        """The parts of these runs that fall inside ``holes`` (data host offsets follow the cut)."""
        if not len(self) or not len(holes):
            return Runs.empty()
        lo = np.searchsorted(self.ends, holes.starts, side="right")
        hi = np.searchsorted(self.starts, holes.ends, side="left")
        counts = np.maximum(hi - lo, 0)
        total = int(counts.sum())
        if total == 0:
            return Runs.empty()
        hole = np.repeat(np.arange(len(holes)), counts)
        offset_in_group = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = np.repeat(lo, counts) + offset_in_group
        src = self.take(idx)
        starts = np.maximum(src.starts, holes.starts[hole])
        ends = np.minimum(src.ends, holes.ends[hole])
        hosts = np.where(src.kinds == KIND_DATA, src.hosts + (starts - src.starts), src.hosts)
        return Runs(starts, ends, src.kinds, hosts, src.csizes, src.layers)

    def extents(self, *kinds: int) -> Extents:
        keep = np.isin(self.kinds, kinds)
        return Extents.from_arrays(self.starts[keep], self.ends[keep])


def read_l1(fd: int, hdr: Header, file_size: int) -> np.ndarray:
    """The L2 table offsets of the active L1 table, one per entry (0 = unallocated)."""
    needed = -(-hdr.size // (hdr.cluster_size * hdr.l2_entries))
    if needed == 0:
        return np.zeros(0, _U64)
    l1 = Subject(f"{hdr.path}: qcow2 L1 table", SourceError, at_end="the image is damaged")
    raw = pread_exact(fd, needed * 8, hdr.l1_table_offset, l1)
    l2 = np.frombuffer(raw, ">u8").astype(_U64) & OFFSET_MASK
    ends = l2.astype(_I64) + hdr.cluster_size
    bad = np.flatnonzero((l2 % _U64(hdr.cluster_size) != 0) | (ends > file_size))
    bad = bad[l2[bad] != 0]
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            f"{hdr.path}: qcow2 L1 entry {i} points to an L2 table at offset {int(l2[i])}, "
            f"unaligned or past the end of the {file_size}-byte file; the image is damaged"
        )
    return l2


def _read_tables(fd: int, hdr: Header, offsets: np.ndarray) -> np.ndarray:
    """The L2 tables at ``offsets`` as rows of a big-endian uint64 array (few preadv calls)."""
    cs = hdr.cluster_size
    buf = np.empty((offsets.size, cs), np.uint8)
    order = np.argsort(offsets, kind="stable")
    host = offsets[order].astype(_I64)
    # Tables that sit back to back on the host are read by one preadv scattering into rows.
    breaks = np.flatnonzero(np.diff(host) != cs) + 1
    l2 = Subject(f"{hdr.path}: qcow2 L2 tables", SourceError, at_end="the image is damaged")
    for group in np.split(np.arange(order.size), breaks):
        rows = [memoryview(buf[j]) for j in order[group].tolist()]
        preadv_exact(fd, rows, int(host[group[0]]), l2)
    return buf.view(">u8").astype(_U64)


def layer_runs(fd: int, hdr: Header, file_size: int, data_size: int, layer: int) -> Runs:
    """Every guest range of this image that is not unallocated, merged, clipped to its size.

    ``data_size`` is the size of the file holding guest clusters (the external data file, or the
    image itself); data offsets beyond it are damage.
    """
    l1 = read_l1(fd, hdr, file_size)
    present = np.flatnonzero(l1)
    limit = _BATCH_ENTRIES_EXTL2 if hdr.extended_l2 else _BATCH_ENTRIES
    per_batch = max(1, limit // hdr.l2_entries)
    parts: list[Runs] = []
    for b in range(0, present.size, per_batch):
        idx = present[b : b + per_batch]
        table = _read_tables(fd, hdr, l1[idx])
        base = idx.astype(_I64) * hdr.l2_entries
        if hdr.extended_l2:
            table = table.reshape(idx.size, hdr.l2_entries, 2)
            desc, bitmap = table[:, :, 0].ravel(), table[:, :, 1].ravel()
        else:
            desc, bitmap = table.ravel(), None
        clusters = (base[:, None] + np.arange(hdr.l2_entries, dtype=_I64)).ravel()
        # Entries past the virtual size describe nothing the guest can see.
        visible = clusters * hdr.cluster_size < hdr.size
        parts.append(
            _decode(
                hdr,
                desc[visible],
                None if bitmap is None else bitmap[visible],
                clusters[visible],
                file_size,
                data_size,
                layer,
            )
        )
    runs = Runs.concat(parts).sorted().merged()
    return runs.clip(hdr.size)


def _decode(
    hdr: Header,
    desc: np.ndarray,
    bitmap: np.ndarray | None,
    clusters: np.ndarray,
    file_size: int,
    data_size: int,
    layer: int,
) -> Runs:
    cs = hdr.cluster_size
    compressed = (desc >> _U64(62)) & _U64(1) == 1
    offset = desc & OFFSET_MASK
    copied = desc >> _U64(63) == 1
    # With an external data file, host offset 0 is a real cluster when the copied bit says so.
    has_host = (offset != 0) | (copied & hdr.has_data_file)
    parts: list[Runs] = []
    if compressed.any():
        parts.append(_compressed(hdr, desc[compressed], clusters[compressed], file_size, layer))
    std = ~compressed
    if bitmap is None:
        zero = std & ((desc & _U64(1)) == 1) & (hdr.version >= 3)
        data = std & ~zero & has_host
        parts.append(_whole(clusters[zero], KIND_ZERO, None, cs, layer))
        parts.append(_whole(clusters[data], KIND_DATA, offset[data], cs, layer))
        _check_data(hdr, clusters[data], offset[data], cs, data_size)
    else:
        alloc = bitmap & _U64(0xFFFFFFFF)
        zbits = bitmap >> _U64(32)
        bad = std & (((alloc & zbits) != 0) | ((alloc != 0) & ~has_host))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SourceError(
                f"{hdr.path}: qcow2 extended L2 entry for guest offset {int(clusters[i]) * cs} "
                f"has an invalid subcluster bitmap {int(bitmap[i]):#018x}; the image is damaged"
            )
        full = _U64(0xFFFFFFFF)
        all_data = std & (alloc == full)
        all_zero = std & (zbits == full)
        mixed = std & ~all_data & ~all_zero & ((alloc | zbits) != 0)
        parts.append(_whole(clusters[all_zero], KIND_ZERO, None, cs, layer))
        parts.append(_whole(clusters[all_data], KIND_DATA, offset[all_data], cs, layer))
        _check_data(hdr, clusters[all_data], offset[all_data], cs, data_size)
        if mixed.any():
            sub = cs // 32
            bit = np.arange(32, dtype=_U64)
            a = ((alloc[mixed][:, None] >> bit) & _U64(1)) == 1
            z = ((zbits[mixed][:, None] >> bit) & _U64(1)) == 1
            starts = clusters[mixed][:, None] * cs + bit.astype(_I64) * sub
            hosts = offset[mixed][:, None].astype(_I64) + bit.astype(_I64) * sub
            for mask, kind in ((a, KIND_DATA), (z, KIND_ZERO)):
                s = starts[mask]
                h = hosts[mask] if kind == KIND_DATA else np.full(s.size, -1, _I64)
                parts.append(_units(s, sub, kind, h, layer))
            some = mixed & (alloc != 0)
            _check_data(hdr, clusters[some], offset[some], cs, data_size)
    return Runs.concat(parts)


def _whole(clusters: np.ndarray, kind: int, hosts: np.ndarray | None, cs: int, layer: int) -> Runs:
    h = np.full(clusters.size, -1, _I64) if hosts is None else hosts.astype(_I64)
    return _units(clusters * cs, cs, kind, h, layer)


def _units(starts: np.ndarray, length: int, kind: int, hosts: np.ndarray, layer: int) -> Runs:
    n = starts.size
    return Runs(
        starts.astype(_I64),
        starts.astype(_I64) + length,
        np.full(n, kind, np.int8),
        hosts.astype(_I64),
        np.zeros(n, _I64),
        np.full(n, layer, np.int16),
    )


def _check_data(hdr: Header, clusters: np.ndarray, hosts: np.ndarray, cs: int, size: int) -> None:
    hosts = hosts.astype(_I64)
    bad = np.flatnonzero((hosts % cs != 0) | (hosts >= size))
    if bad.size:
        i = int(bad[0])
        where = hdr.data_file or hdr.path
        raise SourceError(
            f"{hdr.path}: qcow2 L2 entry for guest offset {int(clusters[i]) * cs} points to host "
            f"offset {int(hosts[i])}, unaligned or past the end of the {size}-byte {where}; "
            "the image is damaged"
        )


def _compressed(
    hdr: Header, desc: np.ndarray, clusters: np.ndarray, file_size: int, layer: int
) -> Runs:
    if hdr.has_data_file:
        raise SourceError(
            f"{hdr.path}: qcow2 image with an external data file has compressed clusters, which "
            "the format forbids; the image is damaged"
        )
    x = 62 - (hdr.cluster_bits - 8)
    coffset = (desc & _U64((1 << x) - 1)).astype(_I64)
    sectors = ((desc >> _U64(x)) & _U64((1 << (62 - x)) - 1)).astype(_I64) + 1
    csize = sectors * 512 - (coffset & 511)
    bad = np.flatnonzero(coffset >= file_size)
    if bad.size:
        i = int(bad[0])
        raise SourceError(
            f"{hdr.path}: qcow2 compressed cluster at guest offset {int(clusters[i]) * hdr.cluster_size} "
            f"points to host offset {int(coffset[i])}, past the end of the {file_size}-byte file; "
            "the image is damaged"
        )
    # The last sector of the last compressed cluster may reach past the end of the file.
    csize = np.minimum(csize, file_size - coffset)
    runs = _units(clusters * hdr.cluster_size, hdr.cluster_size, KIND_COMPRESSED, coffset, layer)
    return Runs(runs.starts, runs.ends, runs.kinds, runs.hosts, csize, runs.layers)
