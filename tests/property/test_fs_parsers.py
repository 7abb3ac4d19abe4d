"""Property and fuzz tests for the filesystem and partition parsers.

Random allocation patterns are written into real mkfs-made ext4 and FAT images (through an
overlay, the image file is never changed): the detector must report exactly the pattern plus the
filesystem's own metadata. Mutated metadata of every supported filesystem must never raise
anything but volpack's errors, and the regions must still tile the volume.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volpack.detect.layout import analyse
from volpack.extents import Extents

MiB = 1 << 20
SETTINGS = settings(
    max_examples=int(os.environ.get("VOLPACK_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _tool(*cmd, stdin=None):
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} not installed (apt packages are listed in scripts/test.sh)")
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, input=stdin)


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


class Overlay:
    """read_at over an image file with some byte ranges replaced."""

    def __init__(self, path, patches=()):
        self.path = path
        self.size = os.path.getsize(path)
        self.patches = list(patches)

    def read_at(self, offset, length):
        with open(self.path, "rb") as f:
            f.seek(offset)
            buf = bytearray(f.read(length).ljust(length, b"\0"))
        for at, data in self.patches:
            lo, hi = max(at, offset), min(at + len(data), offset + length)
            if lo < hi:
                buf[lo - offset : hi - offset] = data[lo - at : hi - at]
        return bytes(buf)

    def analyse(self):
        return analyse(self.read_at, self.size)


# -- ext4: random bitmaps --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory):
    img = _sparse(tmp_path_factory.mktemp("ext4") / "e.img", 256 * MiB)
    # 32-byte descriptors, no group checksums: bitmaps and free counts are all there is.
    _tool(
        "mkfs.ext4",
        "-q",
        "-F",
        "-b",
        "4096",
        "-O",
        "^64bit,^metadata_csum,^uninit_bg,^resize_inode",
        img,
    )
    return img


@SETTINGS
@given(runs=st.lists(st.tuples(st.integers(0, 65535), st.integers(1, 3000)), max_size=12))
def test_ext4_used_map_is_exactly_the_bitmap_pattern_plus_metadata(ext4_image, runs):
    base = Overlay(ext4_image)
    (regions, warnings) = base.analyse()
    metadata = regions[0].used
    gdt = bytearray(base.read_at(4096, 4096))
    groups = 2
    bitmaps = []
    for g in range(groups):
        (where,) = struct.unpack_from("<I", gdt, 32 * g)
        bits = np.unpackbits(
            np.frombuffer(base.read_at(where * 4096, 4096), np.uint8), bitorder="little"
        )
        bitmaps.append((where, bits))
    pattern = Extents.from_pairs((s, min(s + n, 65536)) for s, n in runs)
    patches = []
    for g, (where, bits) in enumerate(bitmaps):
        bits = bits.copy()
        for s, e in pattern.clip(g * 32768, (g + 1) * 32768):
            bits[s - g * 32768 : e - g * 32768] = 1
        patches.append((where * 4096, np.packbits(bits, bitorder="little").tobytes()))
        struct.pack_into("<H", gdt, 32 * g + 12, int(32768 - bits.sum()))
    patches.append((4096, bytes(gdt)))
    regions, warnings = Overlay(ext4_image, patches).analyse()
    assert warnings == []
    expected = metadata.union(pattern.scale_in(4096))
    assert regions[0].used == expected


# -- FAT16: random cluster chains ------------------------------------------------------------


@pytest.fixture(scope="module", params=["12", "16", "32"])
def fat_image(tmp_path_factory, request):
    size = {"12": 2 * MiB, "16": 24 * MiB, "32": 64 * MiB}[request.param]
    img = _sparse(tmp_path_factory.mktemp("fat") / f"f{request.param}.img", size)
    _tool("mkfs.vfat", "-F", request.param, "-s", "1", img)
    return img, int(request.param)


def _set_entry(fat: bytearray, bits: int, cluster: int, value: int) -> None:
    if bits == 16:
        struct.pack_into("<H", fat, 2 * cluster, value & 0xFFFF)
    elif bits == 32:
        struct.pack_into("<I", fat, 4 * cluster, value & 0x0FFFFFFF)
    else:
        at = cluster * 3 // 2
        pair = struct.unpack_from("<H", fat, at)[0]
        # Odd clusters take the high 12 bits of the byte pair, even ones the low 12.
        shift, keep = (4, 0x000F) if cluster & 1 else (0, 0xF000)
        pair = (pair & keep) | ((value & 0xFFF) << shift)
        struct.pack_into("<H", fat, at, pair)


@SETTINGS
@given(picks=st.lists(st.floats(0, 1, exclude_max=True), max_size=200))
def test_fat_used_map_is_exactly_the_allocated_clusters_plus_metadata(fat_image, picks):
    image, bits = fat_image
    base = Overlay(image)
    boot = base.read_at(0, 512)
    bps, spc, reserved, fats, root_entries, total16 = struct.unpack_from("<HBHBHH", boot, 11)
    (fat16,) = struct.unpack_from("<H", boot, 22)
    (total32, fat32) = struct.unpack_from("<II", boot, 32)
    fat_sectors = fat16 or fat32
    total = total16 or total32
    root_sectors = -(-(root_entries * 32) // bps)
    data_sectors = reserved + fats * fat_sectors + root_sectors
    clusters = (total - data_sectors) // spc
    data_start = data_sectors * bps
    fat = bytearray(base.read_at(reserved * bps, fat_sectors * bps))
    # Clusters mkfs already allocated (the FAT32 root directory) stay allocated.
    regions, _w = base.analyse()
    chosen = sorted({2 + int(p * clusters) for p in picks})
    for c in chosen:
        _set_entry(fat, bits, c, 0x0FFFFFFF)  # end of chain, truncated to the entry width
    patches = [((reserved + i * fat_sectors) * bps, bytes(fat)) for i in range(fats)]
    new_regions, warnings = Overlay(image, patches).analyse()
    assert warnings == []
    cb = spc * bps
    expected = regions[0].used.union(
        Extents.from_pairs((data_start + (c - 2) * cb, data_start + (c - 1) * cb) for c in chosen)
    )
    assert new_regions[0].used == expected


# -- fuzz: mutated metadata of every filesystem ---------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    out = {}
    out["ext4"] = _sparse(d / "ext4.img", 16 * MiB)
    _tool("mkfs.ext4", "-q", "-F", "-b", "1024", out["ext4"])
    # No metadata checksums, and a journal left needing recovery (a transaction holding a copy
    # of the first block bitmap): mutations reach the jbd2 parser.
    out["ext4-journal"] = _sparse(d / "ext4j.img", 16 * MiB)
    _tool("mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^metadata_csum", out["ext4-journal"])
    with open(out["ext4-journal"], "rb") as f:
        f.seek(2048)
        (bitmap,) = struct.unpack("<I", f.read(4))
        f.seek(bitmap * 1024)
        (d / "bitmap.bin").write_bytes(f.read(1024))
    (d / "jw.cmd").write_text(f"jo\njw -b {bitmap} {d / 'bitmap.bin'}\njc\n")
    _tool("debugfs", "-w", "-f", d / "jw.cmd", out["ext4-journal"])
    out["fat12"] = _sparse(d / "fat12.img", 2 * MiB)
    _tool("mkfs.vfat", "-F", "12", out["fat12"])
    out["fat32"] = _sparse(d / "fat32.img", 40 * MiB)
    _tool("mkfs.vfat", "-F", "32", out["fat32"])
    out["ntfs"] = _sparse(d / "ntfs.img", 8 * MiB)
    _tool("mkntfs", "-q", "-F", "-Q", out["ntfs"])
    out["xfs"] = _sparse(d / "xfs.img", 300 * MiB)
    _tool("mkfs.xfs", "-q", "-f", out["xfs"])
    out["btrfs"] = _sparse(d / "btrfs.img", 128 * MiB)
    _tool("mkfs.btrfs", "-q", "-f", out["btrfs"])
    out["swap"] = _sparse(d / "swap.img", 4 * MiB)
    _tool("mkswap", out["swap"])
    out["gpt"] = _sparse(d / "gpt.img", 8 * MiB)
    _tool("sfdisk", "-q", out["gpt"], stdin=b"label: gpt\nsize=2MiB\nsize=2MiB\n")
    out["mbr"] = _sparse(d / "mbr.img", 8 * MiB)
    _tool(
        "sfdisk", "-q", out["mbr"], stdin=b"label: dos\nsize=2MiB\nsize=4MiB, type=5\nsize=1MiB\n"
    )
    used = {}
    for name, path in out.items():
        regions, _w = Overlay(path).analyse()
        runs = Extents.empty()
        for r in regions:
            if r.used is not None:
                runs = runs.union(r.used)
        used[name] = list(runs)[:64]
    return out, used


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize(
    "name",
    ["ext4", "ext4-journal", "fat12", "fat32", "ntfs", "xfs", "btrfs", "swap", "gpt", "mbr"],
)
def test_mutated_metadata_gives_warnings_and_fallback_regions_never_exceptions(images, name, data):
    paths, used = images
    runs = used[name]
    patches = []
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        start, end = data.draw(st.sampled_from(runs), label="run")
        # Metadata sits in the first blocks of most runs; aim there more often.
        hi = min(end, start + data.draw(st.sampled_from([64, 4096, 1 << 16]), label="span"))
        at = data.draw(st.integers(start, max(start, hi - 1)), label="offset")
        patches.append((at, data.draw(st.binary(min_size=1, max_size=8), label="bytes")))
    ov = Overlay(paths[name], patches)
    # Damage is a warning and a used=None region; not even a volpack error escapes.
    regions, warnings = ov.analyse()
    assert regions[0].start == 0 and regions[-1].end == ov.size
    assert all(a.end == b.start for a, b in zip(regions, regions[1:], strict=False))
    for r in regions:
        if r.used is not None and len(r.used):
            assert r.start <= r.used.first and r.used.last <= r.end
    assert all(isinstance(w, str) and "\n" not in w for w in warnings)
