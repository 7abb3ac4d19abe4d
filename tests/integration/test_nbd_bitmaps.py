"""Dirty bitmaps over NBD: a persistent qcow2 bitmap enabled with qemu-img, writes and a discard
made with qemu-io, exported by ``qemu-nbd -B``; the dirty runs volpack reads equal
``nbdinfo --map=qemu:dirty-bitmap:NAME`` and the qcow2 reader's own decoding of the bitmap."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.integration.nbd_servers import need, qemu_nbd, url

from volpack.errors import SourceError
from volpack.extents import Extents
from volpack.source.nbd import NbdSource
from volpack.source.qcow2 import open_qcow2

GiB = 1 << 30
KiB = 1 << 10


def run(*argv: str) -> None:
    need(argv[0])
    subprocess.run(argv, check=True, capture_output=True)


def tracked_image(path: Path, size: int, ops: list[str]) -> Path:
    """A qcow2 with an enabled persistent bitmap 'cbt', then ``ops`` run through qemu-io."""
    run("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size))
    run("qemu-img", "bitmap", "--add", "--enable", str(path), "cbt")
    argv = ["qemu-io", "-f", "qcow2"]
    for op in ops:
        argv += ["-c", op]
    run(*argv, str(path))
    return path


def nbdinfo_dirty(src_url: str, bitmap: str) -> Extents:
    need("nbdinfo")
    out = subprocess.run(
        ["nbdinfo", f"--map=qemu:dirty-bitmap:{bitmap}", "--json", src_url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Extents.from_pairs(
        (e["offset"], e["offset"] + e["length"]) for e in json.loads(out) if e["type"] & 1
    )


OPS = [
    "write -P 0xaa 1M 64k",
    "write -P 0xbb 5G 100k",  # past 4 GiB: the status walk takes several requests
    "write -z 7G 64k",  # zeroed: dirty though it reads as zeros
    "discard 9G 128k",  # trimmed: dirty too (an incremental must carry it)
]


def test_dirty_extents_over_nbd_equal_nbdinfo_and_the_qcow2_bitmap_past_4_gib(tmp_path):
    img = tracked_image(tmp_path / "d.qcow2", 10 * GiB, OPS)
    q = open_qcow2(str(img))
    try:
        from_file = q.dirty_extents("cbt")
    finally:
        q.close()
    sock = tmp_path / "s.sock"
    with qemu_nbd(img, sock, "qcow2", bitmap="cbt"):
        src = NbdSource(url(sock))
        try:
            got = src.dirty_extents("cbt")
            assert src.dirty_bitmaps() == {"cbt": got}
            assert "qemu:dirty-bitmap:cbt" in src.info.details["meta_contexts"]
            # The source still reads and maps through the same connection.
            assert len(src.data_extents()) > 0
        finally:
            src.close()
        want = nbdinfo_dirty(url(sock), "cbt")
    assert got == want
    assert got == from_file
    G = GiB
    assert got == Extents.from_pairs(
        [(1 << 20, (1 << 20) + 64 * KiB), (5 * G, 5 * G + 128 * KiB), (7 * G, 7 * G + 64 * KiB)]
        + [(9 * G, 9 * G + 128 * KiB)]
    )


def test_a_bitmap_the_server_does_not_export_is_one_line_naming_it_and_how_to_expose_it(tmp_path):
    img = tracked_image(tmp_path / "d.qcow2", 64 << 20, ["write 0 64k"])
    sock = tmp_path / "s.sock"
    with qemu_nbd(img, sock, "qcow2"):  # no -B
        src = NbdSource(url(sock))
        try:
            with pytest.raises(SourceError) as exc:
                src.dirty_extents("cbt")
        finally:
            src.close()
    msg = str(exc.value)
    assert "\n" not in msg
    assert "'cbt'" in msg and "qemu-nbd -B cbt" in msg and "block-export-add" in msg
    assert "offers none" in msg


def test_a_qcow2_bitmap_that_does_not_exist_is_one_line_naming_it(tmp_path):
    img = tracked_image(tmp_path / "d.qcow2", 64 << 20, ["write 0 64k"])
    q = open_qcow2(str(img))
    try:
        with pytest.raises(SourceError, match="no usable persistent dirty bitmap 'nope'"):
            q.dirty_extents("nope")
    finally:
        q.close()
