"""qcow2 images as volumes: the guest disk, read offline through L1/L2 and the backing chain.

The chain (top image, qcow2 or raw backing files, external data files) is resolved once into
sorted runs of guest bytes → (layer, host offset, kind); ``read_into`` follows those runs with
one preadv per run. Read-only: it never writes an image, never takes locks qemu would honour,
and never guesses — damaged metadata raises SourceError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import zstandard

from volpack.errors import SourceError
from volpack.exactio import Subject, preadv_upto
from volpack.extents import Extents
from volpack.source.base import PM_COMPRESSED, PM_ZERO, PhysicalMap, SourceInfo
from volpack.source.qcow2_bitmaps import Bitmap, read_bitmaps
from volpack.source.qcow2_format import (
    AUTOCLEAR_DATA_FILE_RAW,
    COMPRESSION_NAMES,
    COMPRESSION_ZSTD,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    MAGIC,
    Header,
    feature_names,
    read_header,
)
from volpack.source.qcow2_tables import KIND_COMPRESSED, KIND_DATA, KIND_ZERO, Runs, layer_runs

MAX_CHAIN = 64  # backing files followed before the chain is called absurd
_CACHE_CLUSTERS = 8  # decompressed clusters kept (sequential reads hit the same one often)


@dataclass(frozen=True, slots=True)
class _Layer:
    path: str  # the image (qcow2 or raw)
    fmt: str  # "qcow2" or "raw"
    data_path: str  # the file holding guest data: the image or its external data file
    fd: int
    data_fd: int
    size: int  # guest bytes this layer describes
    header: Header | None  # None for raw layers
    reads: Subject  # names data_path in read errors


def _open_file(path: str, what: str) -> tuple[int, os.stat_result]:
    from volpack.source.checks import check_volume_path

    check_volume_path(path)  # a backing file named after a FIFO must not block the open
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceError(f"{path}: {what} does not exist; check the path") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: {what} is a directory, not an image") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot open {what}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        os.close(fd)
        raise SourceError(f"{path}: {what} is not a regular file or block device")
    return fd, st


def _reads(data_path: str) -> Subject:
    return Subject(data_path, SourceError, on_error="the image's storage may be failing")


def _file_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _beside(image: str, name: str) -> str:
    """A backing or data file name, resolved like qemu does: relative to the image's directory."""
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(image), name)


def _raw_runs(fd: int, size: int, layer: int) -> Runs:
    """Data runs of a raw layer from SEEK_DATA/SEEK_HOLE (whole file when that is unsupported)."""
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    try:
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            if hole <= data:
                break
            starts.append(data)
            ends.append(hole)
            pos = hole
    except OSError:
        starts, ends = [0], [size]
    s = np.array(starts, np.int64)
    n = s.size
    return Runs(
        s,
        np.array(ends, np.int64),
        np.full(n, KIND_DATA, np.int8),
        s.copy(),
        np.zeros(n, np.int64),
        np.full(n, layer, np.int16),
    )


class Qcow2Source:
    """A qcow2 image (with its backing chain and data files) opened read-only as a volume."""

    def __init__(self, path: str) -> None:
        self._layers: list[_Layer] = []
        self._files: list[tuple[str, int]] = []  # every open file of the chain, for identity()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        try:
            self._open_chain(path)
            self._bitmaps = self._read_bitmaps()
            self._runs = self._resolve()
        except BaseException:
            self.close()
            raise
        self._path = path

    # -- opening -----------------------------------------------------------------------------
    def _open_chain(self, path: str) -> None:
        seen: set[tuple[int, int]] = set()
        fmt: str | None = "qcow2"
        what = "qcow2 image"
        while True:
            if len(self._layers) >= MAX_CHAIN:
                raise SourceError(
                    f"{self._layers[0].path}: qcow2 backing chain is longer than {MAX_CHAIN} "
                    "files; the chain is damaged or absurd"
                )
            fd, st = _open_file(path, what)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                os.close(fd)
                raise SourceError(
                    f"{path}: qcow2 backing chain loops back to this file; fix the chain with "
                    "qemu-img rebase"
                )
            seen.add(key)
            self._files.append((path, fd))
            if fmt is None:
                fmt = "qcow2" if os.pread(fd, 4, 0) == MAGIC else "raw"
            if fmt == "raw":
                size = _file_size(fd)
                self._layers.append(_Layer(path, "raw", path, fd, fd, size, None, _reads(path)))
                return
            try:
                hdr = read_header(fd, path, _file_size(fd))
            except BaseException:
                os.close(fd)
                raise
            data_path, data_fd = path, fd
            if hdr.data_file is not None:
                data_path = _beside(path, hdr.data_file)
                try:
                    data_fd, _ = _open_file(data_path, f"external data file of {path}")
                except BaseException:
                    os.close(fd)
                    raise
                self._files.append((data_path, data_fd))
            self._layers.append(
                _Layer(path, "qcow2", data_path, fd, data_fd, hdr.size, hdr, _reads(data_path))
            )
            if hdr.backing_file is None:
                return
            fmt = hdr.backing_format
            if fmt not in (None, "raw", "qcow2"):
                raise SourceError(
                    f"{path}: backing file {hdr.backing_file} is in format {fmt}, which volpack "
                    "does not read; convert the chain with qemu-img convert -O qcow2"
                )
            if hdr.backing_file.startswith("json:") or "://" in hdr.backing_file:
                raise SourceError(
                    f"{path}: backing file {hdr.backing_file} is not a local file; volpack reads "
                    "local chains only (qemu-img convert the image to a standalone qcow2 first)"
                )
            path = _beside(path, hdr.backing_file)
            what = f"backing file of {self._layers[-1].path}"

    def _read_bitmaps(self) -> list[Bitmap]:
        top = self._layers[0]
        if top.header is None or top.header.bitmaps is None:
            return []
        return read_bitmaps(top.fd, top.header, _file_size(top.fd))

    def _resolve(self) -> Runs:
        """Compose the chain: each guest byte comes from the first layer that says anything."""
        size = self._layers[0].size
        limit = size
        holes = Extents.span(0, size)
        parts: list[Runs] = []
        for index, layer in enumerate(self._layers):
            # Past the end of any layer the rest of the chain is invisible: it reads zeros.
            limit = min(limit, layer.size)
            holes = holes.clip(0, limit)
            if not len(holes):
                break
            if layer.header is None:
                runs = _raw_runs(layer.fd, layer.size, index)
            else:
                hdr = layer.header
                runs = layer_runs(
                    layer.fd, hdr, _file_size(layer.fd), _file_size(layer.data_fd), index
                )
            found = runs.clip(limit).within(holes)
            parts.append(found)
            holes = holes.subtract(Extents.from_arrays(found.starts, found.ends))
        return Runs.concat(parts).sorted()

    # -- the Source protocol -----------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._layers[0].size

    @property
    def info(self) -> SourceInfo:
        top = self._layers[0]
        hdr = top.header
        if hdr is None:  # pragma: no cover - the top layer is always qcow2
            raise SourceError(f"{top.path}: not a qcow2 image")
        details = {
            "format": "qcow2",
            "version": hdr.version,
            "cluster_size": hdr.cluster_size,
            "virtual_size": hdr.size,
            "extended_l2": hdr.extended_l2,
            "compression": COMPRESSION_NAMES.get(hdr.compression_type, "zlib"),
            "incompatible_features": feature_names(hdr.incompatible),
            "dirty": bool(hdr.incompatible & INCOMPAT_DIRTY),
            "corrupt": bool(hdr.incompatible & INCOMPAT_CORRUPT),
            "snapshots": hdr.nb_snapshots,
            "data_file": top.data_path if hdr.data_file is not None else None,
            "data_file_raw": bool(hdr.autoclear & AUTOCLEAR_DATA_FILE_RAW),
            "backing_chain": [
                {"path": layer.path, "format": layer.fmt, "size": layer.size}
                for layer in self._layers[1:]
            ],
            "dirty_bitmaps": [b.describe() for b in self._bitmaps],
        }
        return SourceInfo("qcow2", top.path, details)

    def data_extents(self) -> Extents:
        return self._runs.extents(KIND_DATA, KIND_COMPRESSED)

    def zero_extents(self) -> Extents:
        """Ranges the format itself marks as zeros (zero clusters and subclusters)."""
        return self._runs.extents(KIND_ZERO)

    def physical_map(self) -> PhysicalMap:
        runs = self._runs
        flags = np.zeros(len(runs), np.uint32)
        flags[runs.kinds == KIND_COMPRESSED] = PM_COMPRESSED
        flags[runs.kinds == KIND_ZERO] = PM_ZERO
        offsets = np.where(runs.kinds == KIND_ZERO, -1, runs.hosts).astype(np.int64)
        return PhysicalMap(
            tuple(layer.data_path for layer in self._layers),
            runs.starts.copy(),
            (runs.ends - runs.starts).astype(np.int64),
            runs.layers.astype(np.int32),
            offsets,
            flags,
        )

    def dirty_bitmaps(self) -> dict[str, Extents]:
        """Byte runs marked dirty in each consistent persistent bitmap of the top image.

        Bitmaps that are in use (not saved cleanly) or whose extension is flagged inconsistent
        are left out: trusting them would make an incremental miss changes.
        """
        return {b.name: b.extents for b in self._bitmaps if b.usable}

    def dirty_extents(self, bitmap: str) -> Extents:
        """The dirty byte runs of one usable bitmap (the NBD source's shape)."""
        found = self.dirty_bitmaps().get(bitmap)
        if found is None:
            raise SourceError(
                f"{self._path}: no usable persistent dirty bitmap {bitmap!r} (usable: "
                f"{', '.join(map(repr, self.dirty_bitmaps())) or 'none'}); create one with "
                f"qemu-img bitmap --add --enable IMAGE {bitmap}"
            )
        return found

    def read_into(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if offset < 0 or end > self.size:
            raise SourceError(
                f"{self._path}: read of {len(buf)} bytes at {offset} is outside the "
                f"{self.size}-byte guest disk"
            )
        out = np.frombuffer(buf, np.uint8)
        runs = self._runs
        i = int(np.searchsorted(runs.ends, offset, side="right"))
        j = int(np.searchsorted(runs.starts, end, side="left"))
        pos = offset
        for start, stop, kind, host, csize, layer in zip(
            runs.starts[i:j].tolist(),
            runs.ends[i:j].tolist(),
            runs.kinds[i:j].tolist(),
            runs.hosts[i:j].tolist(),
            runs.csizes[i:j].tolist(),
            runs.layers[i:j].tolist(),
            strict=True,
        ):
            s, e = max(start, offset), min(stop, end)
            if s > pos:
                out[pos - offset : s - offset] = 0
            if kind == KIND_DATA:
                self._pread(layer, buf[s - offset : e - offset], host + (s - start))
            elif kind == KIND_COMPRESSED:
                cs = self._cluster_size(layer)
                base = start - start % cs
                cluster = self._inflate(layer, base, host, csize)
                buf[s - offset : e - offset] = cluster[s - base : e - base]
            else:
                out[s - offset : e - offset] = 0
            pos = e
        if pos < end:
            out[pos - offset :] = 0

    def identity(self) -> tuple[object, ...]:
        """Size, mtime and inode of every file in the chain, taken now (fstat of the open files)."""
        out = []
        for path, fd in self._files:
            st = os.fstat(fd)
            out.append((path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        return tuple(out)

    def close(self) -> None:
        fds = {layer.fd for layer in self._layers} | {layer.data_fd for layer in self._layers}
        self._layers = []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Qcow2Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def _cluster_size(self, layer: int) -> int:
        hdr = self._layers[layer].header
        return hdr.cluster_size if hdr is not None else 512

    def _pread(self, layer: int, view: memoryview, host: int) -> None:
        data = self._layers[layer]
        got = preadv_upto(data.data_fd, (view,), host, data.reads)
        if got < len(view):
            # A last cluster that qemu never wrote to the end reads as zeros.
            np.frombuffer(view, np.uint8)[got:] = 0

    def _inflate(self, layer: int, guest: int, host: int, csize: int) -> bytes:
        key = (layer, host)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        hdr = self._layers[layer].header
        if hdr is None:  # pragma: no cover - raw layers have no compressed runs
            raise SourceError(f"{self._layers[layer].path}: compressed data in a raw file")
        cs = hdr.cluster_size
        raw = os.pread(self._layers[layer].fd, csize, host)
        try:
            if hdr.compression_type == COMPRESSION_ZSTD:
                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
                data = reader.read(cs)
            else:
                data = zlib.decompressobj(-12).decompress(raw, cs)
        except (zlib.error, zstandard.ZstdError) as exc:
            raise SourceError(
                f"{hdr.path}: compressed cluster at guest offset {guest} (host offset {host}, "
                f"{csize} bytes) does not decompress: {exc}; the image is damaged"
            ) from None
        if len(data) != cs:
            raise SourceError(
                f"{hdr.path}: compressed cluster at guest offset {guest} (host offset {host}) "
                f"decompresses to {len(data)} bytes, not {cs}; the image is damaged"
            )
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > _CACHE_CLUSTERS:
                self._cache.popitem(last=False)
        return data


def open_qcow2(path: str) -> Qcow2Source:
    """Open a qcow2 image read-only as a volume (the guest disk)."""
    return Qcow2Source(path)
