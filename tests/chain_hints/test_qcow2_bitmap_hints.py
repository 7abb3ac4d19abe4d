"""qcow2 persistent dirty bitmaps as change hints, made and written by the real qemu-img and qemu-io.

The oracle is ``qemu-img compare`` between the image and the restored chain. A hint is checked
before it is trusted: a bitmap left in use by a killed writer, or one that misses a write in a
sampled hash block, falls back to hash compare with a warning (exit 1). A miss in an unsampled
block is the documented limit of ``--bitmap``: only hash compare finds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import one_error_line
from volpack import open_archive as volpack_open
from volpack.extents import Extents
from volpack.pipeline.changes import SAMPLE_MIN, sample_indices

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img and qemu-io (Debian package qemu-utils) are needed to build images",
)

KiB, MiB = 1 << 10, 1 << 20
# The tests below but the last give their chains 1 MiB hash blocks (--hash-block), larger than the
# bitmaps' 64 KiB granules, to cover hash blocks in part (FINE); the last uses the default.
HASH_BLOCK = MiB
SIZE = 64 * MiB


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def volpack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def backup(*args: str, code: int = 0, hash_block: str = "1M") -> dict:
    r = volpack("backup", *args, "--json", "--hash-block", hash_block)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def io(image: Path, *commands: str) -> None:
    run("qemu-io", *(x for c in commands for x in ("-c", c)), str(image))


def make_image(tmp_path: Path) -> Path:
    image = tmp_path / "vm.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), str(SIZE))
    io(image, "write -P 0xaa 0 2M", "write -P 0x11 10M 3M", "write -P 0x22 40M 1M")
    return image


def restores_equal(inc: Path, image: Path, tmp_path: Path) -> bool:
    out = tmp_path / f"{inc.stem}.raw"
    r = volpack("restore", str(inc), str(out), "--force")
    assert r.returncode == 0, r.stderr
    cmp = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", str(image), str(out)],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode in (0, 1), cmp.stderr
    return cmp.returncode == 0


def test_bitmap_incremental_reads_only_dirty_blocks_and_the_sample_and_restores_the_image(
    tmp_path,
):
    image = make_image(tmp_path)
    full = backup(str(image), str(tmp_path / "full.vpk"))
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    io(image, "write -P 0xbb 10M 64k", "write -P 0xbb 50M 4k")
    inc = backup(
        str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "daily",
    )  # fmt: skip
    ch = inc["changes"]
    assert ch["method"] == "bitmap:daily" and ch["warnings"] == []
    assert ch["sampled"] >= SAMPLE_MIN
    # Only the sampled hash blocks were read to check the hint: never the whole used volume.
    # Of those, the ones holding data (0-1, 11-12, 40) are read whole, the others not at all.
    sampled = sampled_blocks([10, 50])
    # Both dirty hash blocks are covered in part (FINE) and checked too: the rest of hash
    # block 10 (the base's data) is read and compared with the base's bytes. Both are hashed as
    # the chain will hold them, from the base's bytes with the new blocks put over them, as the
    # archive is written: finding the changes reads nothing else of the source.
    assert ch["sampled"] == len(sampled) + 2
    kept = HASH_BLOCK - 64 * KiB
    assert ch["read_bytes"] == HASH_BLOCK * len(sampled & {0, 1, 11, 12, 40}) + kept
    assert ch["read_bytes"] < full["used_bytes"]
    # The incremental holds the two dirty 64 KiB bitmap granules (the 4 KiB write's granule
    # beside it is zero), not two whole hash blocks, nor the 6 MiB of the full.
    assert inc["used_bytes"] == 64 * KiB + 4 * KiB
    with volpack_open(str(tmp_path / "inc.vpk")) as arch:
        assert arch.header.fine
    assert restores_equal(tmp_path / "inc.vpk", image, tmp_path)
    r = volpack("verify", str(tmp_path / "inc.vpk"), "--chain")
    assert r.returncode == 0, r.stderr


def test_zeroes_and_trims_after_the_bitmap_reach_the_restored_chain(tmp_path):
    """The trim scenario that brings stale data back in other tools: every byte must match."""
    image = tmp_path / "vm.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), str(SIZE))
    io(image, "write -P 0xaa 0 2M")
    backup(str(image), str(tmp_path / "full.vpk"))
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    io(image, "write -z 0 64k", "discard 64k 64k", "write -P 0xbb 128k 64k")
    inc = backup(
        str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "daily",
    )  # fmt: skip
    assert inc["changes"]["method"] == "bitmap:daily"
    out = tmp_path / "chain.raw"
    assert volpack("restore", str(tmp_path / "inc.vpk"), str(out)).returncode == 0
    got = out.read_bytes()
    assert got[: 128 << 10] == bytes(128 << 10)  # zeroed and trimmed: not 0xaa again
    assert got[128 << 10 : 192 << 10] == b"\xbb" * (64 << 10)
    assert got[192 << 10 : 2 * MiB] == b"\xaa" * (2 * MiB - (192 << 10))
    assert restores_equal(tmp_path / "inc.vpk", image, tmp_path)


def test_bitmap_left_in_use_by_a_killed_writer_is_not_trusted_and_hash_compare_is_right(
    tmp_path,
):
    image = make_image(tmp_path)
    backup(str(image), str(tmp_path / "full.vpk"))
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    # A writer that opened the image with the bitmap enabled sets its in-use flag; killed, it
    # never clears it, and the bitmap misses what it wrote.
    writer = subprocess.Popen(
        ["qemu-io", str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write("write -P 0xcc 20M 64k\nflush\n")
        writer.stdin.flush()
        deadline = time.monotonic() + 30
        seen = ""
        while "wrote" not in seen and time.monotonic() < deadline:
            seen += writer.stdout.readline()
        assert "wrote" in seen, seen
        time.sleep(0.2)  # let the flush land
    finally:
        writer.kill()
        writer.wait()
        for f in (writer.stdin, writer.stdout):
            if f is not None:
                f.close()
    info = json.loads(run("qemu-img", "info", "--output=json", str(image)))
    (flags,) = [b["flags"] for b in info["format-specific"]["data"]["bitmaps"]]
    assert "in-use" in flags
    r = volpack(
        "backup", str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "daily", "--json",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "in use" in r.stderr and "Traceback" not in r.stderr
    ch = json.loads(r.stdout)["changes"]
    assert ch["method"] == "hash-compare" and ch["warnings"]
    assert restores_equal(tmp_path / "inc.vpk", image, tmp_path)


def lying_bitmap(tmp_path: Path, missed_at: int, seen_at: str = "30M") -> Path:
    """A full, then a write the bitmap cannot see (it is added after), then a write it sees."""
    image = make_image(tmp_path)
    backup(str(image), str(tmp_path / "full.vpk"))
    io(image, f"write -P 0xdd {missed_at} 4k")
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    io(image, f"write -P 0xbb {seen_at} 64k")
    return image


def sampled_blocks(hinted: list[int]) -> set[int]:
    """The hash blocks the documented rule samples: max(16, 0.1 %) spread evenly over the blocks
    no hint covers, first and last included (the volume here is 64 hash blocks)."""
    unhinted = Extents.span(0, SIZE // HASH_BLOCK)
    for b in hinted:
        unhinted = unhinted.subtract(Extents.span(b, b + 1))
    return set(sample_indices(unhinted, SAMPLE_MIN).tolist())


def test_a_lying_bitmap_is_caught_when_the_sample_reads_the_missed_block(tmp_path):
    missed = 0  # the first un-hinted hash block is always sampled
    assert missed in sampled_blocks([30])
    image = lying_bitmap(tmp_path, missed * HASH_BLOCK + 8192)
    r = volpack(
        "backup", str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "daily", "--json",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "does not mark hash block 0" in r.stderr
    assert json.loads(r.stdout)["changes"]["method"] == "hash-compare"
    assert restores_equal(tmp_path / "inc.vpk", image, tmp_path)


def test_a_lie_beside_a_marked_write_in_the_same_hash_block_is_caught_and_covered_whole(
    tmp_path,
):
    # Hash block 10 holds the base's data; the bitmap marks 64 KiB of it and misses a write
    # 512 KiB further on. Covering only the marked blocks would keep the base's old bytes there:
    # the check of the hash blocks covered in part compares the rest with the base and finds it.
    image = lying_bitmap(tmp_path, 10 * MiB + 512 * KiB, seen_at="10M")
    r = volpack(
        "backup", str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "daily", "--json",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("volpack: warning:")]
    assert "hash block 10" in line and "covered whole" in line, line
    result = json.loads(r.stdout)
    assert result["changes"]["method"] == "bitmap:daily"
    assert result["used_bytes"] == HASH_BLOCK  # hash block 10 whole, as before FINE
    with volpack_open(str(tmp_path / "inc.vpk")) as arch:
        assert not arch.header.fine
    assert restores_equal(tmp_path / "inc.vpk", image, tmp_path)


def test_a_lie_in_an_unsampled_hash_block_covered_in_part_is_the_same_documented_limit(tmp_path):
    # 64 hash blocks each get a marked 4 KiB write, so all 64 are covered in part and 16 are
    # sampled; the write the bitmap misses lies in hash block 11 (the base's data), unsampled.
    partial_sample = set(sample_indices(Extents.span(0, 64), SAMPLE_MIN).tolist())
    assert 11 not in partial_sample
    image = make_image(tmp_path)
    base = str(tmp_path / "full.vpk")
    backup(str(image), base)
    io(image, f"write -P 0xdd {11 * MiB + 512 * KiB} 4k")
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    io(image, *(f"write -P 0xbb {i * MiB + 256 * KiB} 4k" for i in range(64)))
    inc = tmp_path / "inc.vpk"
    hinted = backup(str(image), str(inc), "--base", base, "--bitmap", "daily")
    assert hinted["changes"]["method"] == "bitmap:daily" and not hinted["changes"]["warnings"]
    # The bitmap's 64 KiB granules: the 4 KiB writes, and the rest of the granule where the
    # base holds data (hash blocks 0, 1, 10, 11, 12, 40).
    assert hinted["used_bytes"] == 64 * 4 * KiB + 6 * 60 * KiB
    # The chain is whole and says what it holds (hash block 11's entry hashes the base's bytes
    # there, not the source's): every check passes ...
    assert volpack("verify", str(inc), "--chain").returncode == 0
    # ... but it does not hold the missed write, as with a miss in an unsampled hash block the
    # hint does not touch: only a hash compare finds it, and it does.
    assert not restores_equal(inc, image, tmp_path)
    compared = backup(str(image), str(tmp_path / "compared.vpk"), "--base", str(inc))
    assert compared["changes"]["method"] == "hash-compare"
    assert restores_equal(tmp_path / "compared.vpk", image, tmp_path)


def test_a_lie_in_an_unsampled_block_is_the_documented_limit_only_hash_compare_finds_it(
    tmp_path,
):
    sampled = sampled_blocks([30])
    missed = next(b for b in range(1, 64) if b not in sampled and b != 30)
    image = lying_bitmap(tmp_path, missed * HASH_BLOCK)
    base = str(tmp_path / "full.vpk")
    hinted = backup(str(image), str(tmp_path / "hinted.vpk"), "--base", base, "--bitmap", "daily")
    # The hint passed its check: the miss is in a block the sample did not read ...
    assert hinted["changes"]["method"] == "bitmap:daily"
    # ... so the chain does not hold that write: this is why --bitmap is a hint, checked only
    # by a sample, and why a periodic hash compare (no --bitmap) is recommended.
    assert not restores_equal(tmp_path / "hinted.vpk", image, tmp_path)
    compared = backup(str(image), str(tmp_path / "compared.vpk"), "--base", base)
    assert compared["changes"]["method"] == "hash-compare"
    assert restores_equal(tmp_path / "compared.vpk", image, tmp_path)


def test_an_unknown_bitmap_name_is_a_usage_error_listing_the_bitmaps(tmp_path):
    image = make_image(tmp_path)
    backup(str(image), str(tmp_path / "full.vpk"))
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    run("qemu-img", "bitmap", "--add", str(image), "weekly")
    r = volpack(
        "backup", str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "hourly",
    )  # fmt: skip
    one_error_line(r, 2, "hourly", "daily, weekly", "qemu-img bitmap --add")
    assert not (tmp_path / "inc.vpk").exists()


def test_bitmap_with_no_hints_is_a_usage_error(tmp_path):
    image = make_image(tmp_path)
    backup(str(image), str(tmp_path / "full.vpk"))
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    r = volpack(
        "backup", str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "daily", "--no-hints",
    )  # fmt: skip
    one_error_line(r, 2, "--bitmap daily", "--no-hints")
    assert not (tmp_path / "inc.vpk").exists()


def test_with_the_default_hash_blocks_a_bitmap_incremental_reads_no_base_bytes(tmp_path):
    """A new chain's hash blocks are the bitmap's 64 KiB granules: every dirty granule is a whole
    hash block, so nothing of the base is read to hash the chain's state, and the hint check
    reads its sampled spots (1 MiB each) and nothing else."""
    image = make_image(tmp_path)
    full = backup(str(image), str(tmp_path / "full.vpk"), hash_block="64K")
    with volpack_open(str(tmp_path / "full.vpk")) as arch:
        assert arch.header.hash_block_size == 64 * KiB
    run("qemu-img", "bitmap", "--add", "--enable", str(image), "daily")
    io(image, "write -P 0xbb 10M 64k", "write -P 0xbb 50M 4k", "write -z 40M 64k")
    inc = backup(
        str(image), str(tmp_path / "inc.vpk"), "--base", str(tmp_path / "full.vpk"),
        "--bitmap", "daily", hash_block="64K",
    )  # fmt: skip
    ch = inc["changes"]
    assert ch["method"] == "bitmap:daily" and ch["warnings"] == []
    # 16 spots of 1 MiB spread over the 64 (the 3 dirty hash blocks are not sampled); only the
    # used bytes in them are read: the MiBs holding data are 0-1, 10-12 and 40
    spots = set(sample_indices(Extents.span(0, SIZE // MiB), SAMPLE_MIN).tolist())
    assert ch["sampled"] >= SAMPLE_MIN * 16 - 3
    assert ch["read_bytes"] == MiB * len(spots & {0, 1, 10, 11, 12, 40}) < full["used_bytes"]
    with volpack_open(str(tmp_path / "inc.vpk")) as arch:
        assert not arch.header.fine  # whole hash blocks: no base bytes needed
    assert inc["used_bytes"] == 64 * KiB + 4 * KiB
    assert inc["zero_blocks"] * 4 * KiB == 64 * KiB + 60 * KiB  # the zeroed granule, the rest
    assert restores_equal(tmp_path / "inc.vpk", image, tmp_path)
