"""Persistent dirty bitmaps read offline agree with what qemu itself exports over NBD
(``qemu-nbd -B NAME`` read by ``nbdinfo --map=qemu:dirty-bitmap:NAME``)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from volpack.extents import Extents
from volpack.source.qcow2 import open_qcow2
from volpack.source.qcow2_format import read_header

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img and qemu-io (Debian package qemu-utils) are needed to build images",
)

needs_nbd = pytest.mark.skipif(
    shutil.which("qemu-nbd") is None or shutil.which("nbdinfo") is None,
    reason="qemu-nbd (qemu-utils) and nbdinfo (libnbd-bin) are the dirty-bitmap oracle",
)


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def qemu_dirty(image: Path, name: str) -> Extents:
    out = run(
        "nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{name}", "--",
        "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, str(image), "]",
    )  # fmt: skip
    runs = [(e["offset"], e["offset"] + e["length"]) for e in json.loads(out) if e["type"] & 1]
    return Extents.from_pairs(runs)


def build(tmp_path: Path, *opts: str) -> Path:
    image = tmp_path / "vm.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", ",".join(opts or ("compat=1.1",)),
        str(image), "64M")  # fmt: skip
    run("qemu-io", "-c", "write -P 1 0 1M", str(image))  # before the bitmaps: not dirty
    run("qemu-img", "bitmap", "--add", str(image), "daily")
    run("qemu-img", "bitmap", "--add", "-g", "512k", str(image), "coarse")
    run(
        "qemu-io", "-c", "write -P 2 3M 100k", "-c", "write -z 20M 8k",
        "-c", "write -P 3 63M 1M", "-c", "discard 40M 64k", str(image),
    )  # fmt: skip
    return image


@needs_nbd
@pytest.mark.parametrize("cluster", ["64k", "2M"])
def test_dirty_bitmaps_match_what_qemu_exports(tmp_path, cluster):
    image = build(tmp_path, f"cluster_size={cluster}")
    with open_qcow2(str(image)) as src:
        maps = src.dirty_bitmaps()
    assert set(maps) == {"daily", "coarse"}
    for name, got in maps.items():
        assert got == qemu_dirty(image, name), name
    assert maps["daily"].first == 3 << 20
    assert maps["coarse"].contains(maps["daily"])


def test_bitmap_names_and_granularity_are_in_info_details(tmp_path):
    image = build(tmp_path)
    with open_qcow2(str(image)) as src:
        details = {b["name"]: b for b in src.info.details["dirty_bitmaps"]}
    assert details["daily"]["granularity"] == 65536
    assert details["coarse"]["granularity"] == 512 * 1024
    assert details["daily"]["enabled"] and details["daily"]["usable"]
    assert details["daily"]["dirty_bytes"] > 0


def test_a_bitmap_marked_in_use_is_listed_but_not_trusted(tmp_path):
    image = build(tmp_path)
    fd = os.open(image, os.O_RDONLY)
    try:
        ext = read_header(fd, str(image), os.fstat(fd).st_size).bitmaps
    finally:
        os.close(fd)
    # Set the in_use flag (byte 12..15 of the first directory entry), as a crashed qemu leaves it.
    with open(image, "r+b") as f:
        f.seek(ext.directory_offset + 12)
        flags = struct.unpack(">I", f.read(4))[0]
        f.seek(ext.directory_offset + 12)
        f.write(struct.pack(">I", flags | 1))
    with open_qcow2(str(image)) as src:
        maps = src.dirty_bitmaps()
        details = {b["name"]: b for b in src.info.details["dirty_bitmaps"]}
    first = next(iter(details))
    assert first not in maps
    assert details[first]["in_use"] and not details[first]["usable"]
    assert len(maps) == 1


def test_an_image_without_bitmaps_has_none(tmp_path):
    image = tmp_path / "plain.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M")
    with open_qcow2(str(image)) as src:
        assert src.dirty_bitmaps() == {}
        assert src.info.details["dirty_bitmaps"] == []
