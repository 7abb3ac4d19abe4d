"""Restore target that writes a thin qcow2 v3 image (for ``restore --target-format qcow2``).

Data clusters are allocated in arrival order right after the header cluster and written as they
come (all-zero clusters are left unallocated); L2 tables stay in memory and, on ``finish``, L2,
L1 and refcount structures are appended and the header written, then the temporary file is
renamed over the target. It never touches an existing target before success; a new image is made
0600 unless a mode is given, a replaced one keeps its mode and owner.
"""

from __future__ import annotations

import os
import stat
import struct

import numpy as np

from volpack.atomic import discard, publish
from volpack.errors import TargetError
from volpack.exactio import Subject, pwritev_all
from volpack.extents import Extents, unique
from volpack.targets.raw import check_new_file, create_file_temp
from volpack.units import check_mode, human
from volpack.writeback import Writeback

COPIED = np.uint64(1 << 63)  # refcount is exactly one: qemu may write in place
MAX_L1_BYTES = 32 << 20  # qemu refuses larger active L1 tables
REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu's default
_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")  # the 104-byte version 3 header


def _check_cluster_size(cluster_size: int) -> int:
    if cluster_size < 512 or cluster_size > 2 << 20 or cluster_size & (cluster_size - 1):
        raise TargetError(
            f"qcow2 cluster size {cluster_size} is not a power of two between 512 B and 2 MiB"
        )
    return cluster_size.bit_length() - 1


class Qcow2Target:
    """A thin qcow2 v3 image built in one sequential pass."""

    def __init__(
        self, path: str, *, force: bool, cluster_size: int = 65536, mode: int | None = None
    ) -> None:
        self.path = path
        self._subject = Subject(
            path,
            TargetError,
            on_full="free space or choose another target (nothing was replaced)",
        )
        self.cluster_bits = _check_cluster_size(cluster_size)
        self.cluster_size = cluster_size
        self.description = f"qcow2 image {path} ({human(cluster_size)} clusters)"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise TargetError(f"{path}: cannot stat ({exc.strerror})") from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise TargetError(f"{path}: a qcow2 target must be a regular file or a new name")
        check_new_file(path, exists=st is not None, force=force)
        self.mode = None if mode is None else check_mode(mode)
        self.tmp: str | None = None
        self.fd = -1
        self.size = 0
        self.header_size = 0
        self.l2_entries = cluster_size // 8
        self.l1_size = 0
        self.tables: dict[int, np.ndarray] = {}  # L1 index -> L2 table (host offsets | COPIED)
        self.next_host = cluster_size  # cluster 0 holds the header
        self.end = 0  # where the next write_at may start
        self.partial = bytearray(cluster_size)  # the cluster being filled by unaligned writes
        self.partial_index = -1

    # -- Target protocol ---------------------------------------------------------------------
    def prepare(self, volume_size: int, used_bytes: Extents) -> None:
        cs = self.cluster_size
        self.size = volume_size
        # qemu sees a qcow2 disk in whole 512-byte sectors and drops a partial last one, so the
        # header says the size rounded up (like qemu-img create); the extra bytes read zeros.
        self.header_size = -(-volume_size // 512) * 512
        self.l1_size = -(-self.header_size // (cs * self.l2_entries))
        if self.l1_size * 8 > MAX_L1_BYTES:
            raise TargetError(
                f"{self.path}: a {volume_size}-byte volume needs an L1 table of "
                f"{self.l1_size * 8} B with {human(cs)} clusters (qemu allows {MAX_L1_BYTES}); "
                "use a larger cluster size"
            )
        directory = os.path.dirname(os.path.abspath(self.path))
        vfs = os.statvfs(directory)
        free = vfs.f_bavail * vfs.f_frsize
        need = used_bytes.total() + used_bytes.total() // self.l2_entries + 4 * cs
        if free < need:
            raise TargetError(
                f"{self.path}: {human(free)} ({free} B) free in {directory}, the restore needs "
                f"about {human(need)} ({need} B); free space first"
            )
        self.tmp, self.fd = create_file_temp(self.path, self.mode)
        self._writeback = Writeback(self.fd)

    def write_at(self, offset: int, data: memoryview) -> None:
        if offset < self.end or offset + len(data) > self.size:
            raise TargetError(
                f"{self.path}: write of {len(data)} bytes at {offset} is out of order or past "
                f"the {self.size}-byte volume (next write must start at {self.end} or later)"
            )
        cs = self.cluster_size
        view = memoryview(data).cast("B")
        pos = offset
        while len(view):
            index, within = divmod(pos, cs)
            if index != self.partial_index:
                self._flush_partial()
            if within == 0 and len(view) >= cs:
                whole = len(view) // cs * cs
                self._put_clusters(index, view[:whole])
                view, pos = view[whole:], pos + whole
                continue
            take = min(cs - within, len(view))
            self.partial_index = index
            self.partial[within : within + take] = view[:take]
            view, pos = view[take:], pos + take
            if within + take == cs:
                self._flush_partial()
        self.end = offset + len(data)

    def finish(self) -> None:
        self._flush_partial()
        try:
            self._write_metadata()
            fd, self.fd = self.fd, -1
            assert self.tmp is not None
            publish(fd, self.tmp, self.path, keep_existing=self.mode is None)
        except OSError as exc:
            raise TargetError(
                f"{self.path}: could not complete the qcow2 image ({exc.strerror}); the previous "
                "file, if any, is unchanged"
            ) from None

    def abort(self) -> None:
        discard(self.fd, self.tmp)
        self.fd = -1

    # -- data --------------------------------------------------------------------------------
    def _flush_partial(self) -> None:
        if self.partial_index < 0:
            return
        self._put_clusters(self.partial_index, memoryview(self.partial))
        self.partial[:] = bytes(self.cluster_size)
        self.partial_index = -1

    def _put_clusters(self, first: int, view: memoryview) -> None:
        """Write the non-zero clusters of ``view`` (whole clusters from guest cluster ``first``)
        back to back at the end of the image with one pwritev per IOV_MAX clusters."""
        cs = self.cluster_size
        count = len(view) // cs
        rows = np.frombuffer(view, np.uint64).reshape(count, cs // 8)
        keep = np.flatnonzero(rows.any(axis=1))
        if not keep.size:
            return
        hosts = self.next_host + np.arange(keep.size, dtype=np.int64) * cs
        self._pwrite([view[i * cs : (i + 1) * cs] for i in keep.tolist()], int(hosts[0]))
        self.next_host += keep.size * cs
        self._writeback.wrote(self.next_host)
        guest = first + keep.astype(np.int64)
        tables = guest // self.l2_entries
        for t in unique(tables).tolist():
            sel = tables == t
            table = self.tables.get(t)
            if table is None:
                table = self.tables[t] = np.zeros(self.l2_entries, np.uint64)
            table[guest[sel] % self.l2_entries] = hosts[sel].astype(np.uint64) | COPIED

    def _pwrite(self, iov: list[memoryview], offset: int) -> None:
        pwritev_all(self.fd, iov, offset, self._subject)

    # -- metadata ----------------------------------------------------------------------------
    def _write_metadata(self) -> None:
        cs = self.cluster_size
        l2_order = sorted(self.tables)
        l2_at = self.next_host
        l1_at = l2_at + len(l2_order) * cs
        l1_clusters = -(-self.l1_size * 8 // cs)
        refs_at = l1_at + l1_clusters * cs
        fixed = refs_at // cs  # clusters before the refcount structures (header, data, L2, L1)
        per_block = cs * 8 >> REFCOUNT_ORDER
        blocks = table_clusters = 0
        while True:  # the refcount structures count themselves: iterate to the fixed point
            total = fixed + blocks + table_clusters
            need_blocks = -(-total // per_block)
            need_table = -(-need_blocks * 8 // cs)
            if (need_blocks, need_table) == (blocks, table_clusters):
                break
            blocks, table_clusters = need_blocks, need_table
        table_at = refs_at + blocks * cs
        total = fixed + blocks + table_clusters

        l1 = np.zeros(l1_clusters * cs // 8, ">u8")
        for n, index in enumerate(l2_order):
            l1[index] = np.uint64(l2_at + n * cs) | COPIED
        refcounts = np.zeros(blocks * per_block, ">u2")
        refcounts[:total] = 1
        reftable = np.zeros(table_clusters * cs // 8, ">u8")
        reftable[:blocks] = np.uint64(refs_at) + np.arange(blocks, dtype=np.uint64) * np.uint64(cs)

        iov = [self.tables[i].astype(">u8").data.cast("B") for i in l2_order]
        iov += [a.data.cast("B") for a in (l1, refcounts, reftable)]
        self._pwrite(iov, l2_at)

        header = _HEADER.pack(
            b"QFI\xfb",
            3,  # version
            0,  # backing_file_offset
            0,  # backing_file_size
            self.cluster_bits,
            self.header_size,
            0,  # crypt_method
            self.l1_size,
            l1_at,
            table_at,
            table_clusters,
            0,  # nb_snapshots
            0,  # snapshots_offset
            0,  # incompatible_features
            0,  # compatible_features
            0,  # autoclear_features
            REFCOUNT_ORDER,
            _HEADER.size,  # header_length
        )
        self._pwrite([memoryview(header + bytes(8))], 0)  # + end-of-extensions marker


def open_qcow2_target(
    path: str, *, force: bool, cluster_size: int = 65536, mode: int | None = None
) -> Qcow2Target:
    """A restore target that writes a thin qcow2 v3 image at ``path`` (new ones with ``mode``,
    default 0600)."""
    return Qcow2Target(path, force=force, cluster_size=cluster_size, mode=mode)
