"""qcow2 on-disk header: fixed fields, feature bits and header extensions, parsed and bounded.

Only the qcow2 source reads this module. It decodes and checks the first cluster of an image
(docs/interop/qcow2.txt in QEMU); it never reads L1/L2 tables or guest data and never writes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace

from volpack.errors import SourceError
from volpack.exactio import Subject, pread_exact
from volpack.source.probe import QCOW2_MAGIC as MAGIC

# Incompatible feature bits this reader implements (dirty and corrupt only affect writers).
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

_INCOMPAT_NAMES = {
    0: "dirty bit",
    1: "corrupt bit",
    2: "external data file",
    3: "compression type",
    4: "extended L2 entries",
}

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21  # 2 MiB, QEMU's implementation limit
MAX_L1_BYTES = 32 << 20  # QEMU's limit on the active L1 table
MAX_NAME = 1023  # backing file and data file names
MAX_VIRTUAL_SIZE = (1 << 63) - 1

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
_V3 = struct.Struct(">QQQII")  # bytes 72..104
_EXT = struct.Struct(">II")
_BITMAPS_EXT = struct.Struct(">IIQQ")


@dataclass(frozen=True, slots=True)
class BitmapsExtension:
    nb_bitmaps: int
    directory_size: int
    directory_offset: int
    consistent: bool  # autoclear bit 0: the extension may be trusted


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of a qcow2 header that reading needs, already checked against the file size."""

    path: str
    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    incompatible: int
    compatible: int
    autoclear: int
    refcount_order: int
    header_length: int
    compression_type: int
    nb_snapshots: int
    backing_file: str | None
    backing_format: str | None
    data_file: str | None
    bitmaps: BitmapsExtension | None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible & INCOMPAT_EXTL2)

    @property
    def has_data_file(self) -> bool:
        return bool(self.incompatible & INCOMPAT_DATA_FILE)

    @property
    def l2_entries(self) -> int:
        """Guest clusters described by one L2 table."""
        return self.cluster_size // (16 if self.extended_l2 else 8)


def _name(raw: bytes, what: str, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(
            f"{path}: qcow2 {what} is not valid UTF-8; the image is damaged"
        ) from None


def _feature_names(data: bytes) -> dict[int, str]:
    """Incompatible-feature names from the feature name table (for messages about unknown bits)."""
    names: dict[int, str] = {}
    for pos in range(0, len(data) - 47, 48):
        kind, bit = data[pos], data[pos + 1]
        if kind == 0 and bit < 64:
            names[bit] = data[pos + 2 : pos + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
    return names


def read_header(fd: int, path: str, file_size: int) -> Header:
    """Parse and check the header cluster of the qcow2 image open on ``fd``."""
    head = os.pread(fd, 4096, 0)
    fixed = _decode_fixed(head, path)
    _refuse_encryption(fixed, path)
    ext = _parse_extensions(_header_cluster(fd, head, fixed.cluster_size), fixed, path)
    _check_features(fixed, ext, path)
    _check_l1(fixed, file_size, path)
    backing_file = _read_backing_name(fd, fixed, path)
    return Header(
        path=path,
        version=fixed.version,
        cluster_bits=fixed.cluster_bits,
        size=fixed.size,
        l1_size=fixed.l1_size,
        l1_table_offset=fixed.l1_table_offset,
        incompatible=fixed.incompatible,
        compatible=fixed.compatible,
        autoclear=fixed.autoclear,
        refcount_order=fixed.refcount_order,
        header_length=fixed.header_length,
        # The stored byte means something only with the compression-type feature bit.
        compression_type=(
            fixed.compression_type
            if fixed.incompatible & INCOMPAT_COMPRESSION
            else COMPRESSION_ZLIB
        ),
        nb_snapshots=fixed.nb_snapshots,
        backing_file=backing_file,
        backing_format=ext.backing_format,
        data_file=ext.data_file,
        bitmaps=ext.bitmaps,
    )


@dataclass(frozen=True, slots=True)
class _Fixed:
    """The fixed header fields; a version 2 header has the version 3 ones at their defaults."""

    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    nb_snapshots: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = _V2.size
    compression_type: int = COMPRESSION_ZLIB  # as stored

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


@dataclass(frozen=True, slots=True)
class _Extensions:
    """What the header extensions say that reading needs."""

    feature_names: dict[int, str]  # incompatible bit -> name, for messages about unknown bits
    backing_format: str | None
    data_file: str | None
    bitmaps: BitmapsExtension | None


def _decode_fixed(head: bytes, path: str) -> _Fixed:
    """The magic, the version 2 fields and, for version 3, the fields after them."""
    if len(head) < _V2.size or head[:4] != MAGIC:
        raise SourceError(f"{path}: not a qcow2 image (no QFI\\xfb magic); use --source-format raw")
    (
        _magic,
        version,
        backing_offset,
        backing_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        _refcount_table_offset,
        _refcount_table_clusters,
        nb_snapshots,
        _snapshots_offset,
    ) = _V2.unpack_from(head)
    if version not in (2, 3):
        raise SourceError(f"{path}: qcow2 version {version} is not supported (only 2 and 3)")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise SourceError(
            f"{path}: qcow2 cluster_bits {cluster_bits} is outside 9..21 (512 B..2 MiB); "
            "the image is damaged or unsupported"
        )
    fixed = _Fixed(
        version=version,
        backing_offset=backing_offset,
        backing_size=backing_size,
        cluster_bits=cluster_bits,
        size=size,
        crypt_method=crypt_method,
        l1_size=l1_size,
        l1_table_offset=l1_table_offset,
        nb_snapshots=nb_snapshots,
    )
    return _decode_v3(head, fixed, path) if version == 3 else fixed


def _decode_v3(head: bytes, v2: _Fixed, path: str) -> _Fixed:
    if len(head) < 104:
        raise SourceError(f"{path}: qcow2 v3 header is truncated ({len(head)} of 104 bytes)")
    incompatible, compatible, autoclear, refcount_order, header_length = _V3.unpack_from(head, 72)
    if header_length < 104 or header_length % 8 or header_length > v2.cluster_size:
        raise SourceError(
            f"{path}: qcow2 header_length {header_length} is invalid "
            f"(needs a multiple of 8 in 104..{v2.cluster_size}); the image is damaged"
        )
    compression_type = COMPRESSION_ZLIB
    if header_length > 104:
        compression_type = head[104] if len(head) > 104 else 0
    return replace(
        v2,
        incompatible=incompatible,
        compatible=compatible,
        autoclear=autoclear,
        refcount_order=refcount_order,
        header_length=header_length,
        compression_type=compression_type,
    )


def _refuse_encryption(fixed: _Fixed, path: str) -> None:
    if fixed.crypt_method:
        method = fixed.crypt_method
        kind = {1: "AES", 2: "LUKS"}.get(method, f"method {method}")
        raise SourceError(
            f"{path}: qcow2 image is encrypted ({kind}); decrypt it first "
            "(qemu-img convert with --object secret) and back up the plain image"
        )


def _header_cluster(fd: int, head: bytes, cluster_size: int) -> bytes:
    """The first cluster, where the header extensions live (less if the file is shorter)."""
    if cluster_size > len(head):
        head += os.pread(fd, cluster_size - len(head), len(head))
    return head[:cluster_size]


def _parse_extensions(cluster: bytes, fixed: _Fixed, path: str) -> _Extensions:
    """The header extensions after the header, up to the end marker or the end of the cluster."""
    pos = fixed.header_length
    names: dict[int, str] = {}
    backing_format = data_file = None
    bitmaps = None
    seen = 0
    while pos + 8 <= len(cluster):
        ext_type, ext_len = _EXT.unpack_from(cluster, pos)
        if ext_type == EXT_END:
            break
        seen += 1
        if seen > 1024 or pos + 8 + ext_len > len(cluster):
            raise SourceError(
                f"{path}: qcow2 header extension at byte {pos} (type {ext_type:#x}, "
                f"length {ext_len}) runs past the header cluster; the image is damaged"
            )
        data = cluster[pos + 8 : pos + 8 + ext_len]
        if ext_type == EXT_BACKING_FORMAT:
            backing_format = _name(data, "backing format", path)
        elif ext_type == EXT_DATA_FILE:
            data_file = _name(data, "data file name", path)
        elif ext_type == EXT_FEATURE_NAMES:
            names = _feature_names(data)
        elif ext_type == EXT_BITMAPS and ext_len >= _BITMAPS_EXT.size:
            nb, _reserved, dir_size, dir_offset = _BITMAPS_EXT.unpack_from(data)
            consistent = bool(fixed.autoclear & AUTOCLEAR_BITMAPS)
            bitmaps = BitmapsExtension(nb, dir_size, dir_offset, consistent)
        pos += 8 + (ext_len + 7) // 8 * 8
    return _Extensions(names, backing_format, data_file, bitmaps)


def _check_features(fixed: _Fixed, ext: _Extensions, path: str) -> None:
    """Refuse incompatible features this reader does not implement, or implements only in part."""
    incompatible = fixed.incompatible
    unknown = incompatible & ~INCOMPAT_KNOWN
    if unknown:
        names = ext.feature_names
        bits = [b for b in range(64) if unknown >> b & 1]
        shown = ", ".join(f"bit {b} ({names[b]})" if b in names else f"bit {b}" for b in bits)
        raise SourceError(
            f"{path}: qcow2 image uses incompatible feature {shown} that volpack does not "
            "implement; convert it with qemu-img convert -O qcow2 first"
        )
    if incompatible & INCOMPAT_COMPRESSION and fixed.compression_type not in COMPRESSION_NAMES:
        raise SourceError(
            f"{path}: qcow2 compression type {fixed.compression_type} is not supported (zlib, zstd)"
        )
    if incompatible & INCOMPAT_EXTL2 and fixed.cluster_bits < 14:
        raise SourceError(
            f"{path}: qcow2 extended L2 entries need clusters of 16 KiB or more, "
            f"found {fixed.cluster_size} B; the image is damaged"
        )
    if incompatible & INCOMPAT_DATA_FILE and ext.data_file is None:
        raise SourceError(
            f"{path}: qcow2 image keeps its data in an external file but does not name it; "
            "rebuild the header with qemu-img amend -o data_file=FILE"
        )


def _check_l1(fixed: _Fixed, file_size: int, path: str) -> None:
    """The virtual size, and an active L1 table large enough for it and inside the file."""
    size, l1_size, l1_offset = fixed.size, fixed.l1_size, fixed.l1_table_offset
    if size > MAX_VIRTUAL_SIZE:
        raise SourceError(f"{path}: qcow2 virtual size {size} is absurd; the image is damaged")
    cluster_size = fixed.cluster_size
    l2_span = cluster_size * (cluster_size // (16 if fixed.incompatible & INCOMPAT_EXTL2 else 8))
    l1_needed = -(-size // l2_span)
    if l1_size < l1_needed or l1_size * 8 > MAX_L1_BYTES:
        raise SourceError(
            f"{path}: qcow2 L1 table has {l1_size} entries, but virtual size {size} needs "
            f"{l1_needed} (limit {MAX_L1_BYTES // 8}); the image is damaged"
        )
    if l1_size and (l1_offset % cluster_size or l1_offset + l1_size * 8 > max(file_size, 0)):
        raise SourceError(
            f"{path}: qcow2 L1 table at offset {l1_offset} ({l1_size} entries) is unaligned "
            f"or past the end of the {file_size}-byte file; the image is damaged"
        )


def _read_backing_name(fd: int, fixed: _Fixed, path: str) -> str | None:
    if not fixed.backing_offset:
        return None
    if fixed.backing_size == 0 or fixed.backing_size > MAX_NAME:
        raise SourceError(
            f"{path}: qcow2 backing file name length {fixed.backing_size} is outside 1..{MAX_NAME}"
        )
    name = Subject(f"{path}: qcow2 backing file name", SourceError, at_end="the image is damaged")
    raw = pread_exact(fd, fixed.backing_size, fixed.backing_offset, name)
    return _name(raw, "backing file name", path)


def feature_names(incompatible: int) -> list[str]:
    """Names of the known incompatible features set in ``incompatible`` (for info.details)."""
    return [name for bit, name in _INCOMPAT_NAMES.items() if incompatible >> bit & 1]
