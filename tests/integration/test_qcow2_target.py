"""The qcow2 restore target against qemu: every image it writes must pass ``qemu-img check`` and
equal its source per ``qemu-img compare``; existing targets survive failures."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from volpack.errors import TargetError
from volpack.extents import Extents
from volpack.source.qcow2 import open_qcow2
from volpack.targets.qcow2 import open_qcow2_target

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img and qemu-io (Debian package qemu-utils) are needed as oracles",
)

MiB = 1 << 20


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


def qemu_check_clean(image: Path) -> None:
    # Exit 0 means no errors, no leaks and no corruptions.
    proc = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def qemu_compare_equal(a: Path, b: Path) -> None:
    proc = subprocess.run(["qemu-img", "compare", str(a), str(b)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def copy_volume(source: Path, target: Path, *, cluster_size: int, chunk: int) -> None:
    """What a restore does: data runs in increasing order, cut into ``chunk``-byte writes."""
    with open_qcow2(str(source)) as src:
        used = src.data_extents()
        tgt = open_qcow2_target(str(target), force=True, cluster_size=cluster_size)
        tgt.prepare(src.size, used)
        buf = bytearray(chunk)
        for start, end in used:
            for pos in range(start, end, chunk):
                n = min(chunk, end - pos)
                view = memoryview(buf)[:n]
                src.read_into(pos, view)
                tgt.write_at(pos, view)
        tgt.finish()


def make_source(tmp_path: Path, size: str = "24M") -> Path:
    image = tmp_path / "src.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), size)
    run(
        "qemu-io",
        "-c", "write -P 0xab 0 1M",
        "-c", "write -P 0x11 1100000 5000",
        "-c", "write -z 2M 256k",
        "-c", "write -P 0x22 3M 512k",
        "-c", "write -P 0x33 9999999 12345",
        "-c", f"write -P 0x44 {int(size[:-1]) * MiB - 70000} 70000",
        str(image),
    )  # fmt: skip
    return image


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
@pytest.mark.parametrize("chunk", [1000, 65536, 3 * MiB + 512])
def test_written_image_is_clean_and_equal_to_its_source(tmp_path, cluster_size, chunk):
    source = make_source(tmp_path)
    target = tmp_path / "out.qcow2"
    copy_volume(source, target, cluster_size=cluster_size, chunk=chunk)
    qemu_check_clean(target)
    qemu_compare_equal(source, target)
    info = run("qemu-img", "info", "--output=json", str(target)).stdout
    assert f'"cluster-size": {cluster_size}' in info


def test_written_image_is_thin(tmp_path):
    source = make_source(tmp_path, "64M")
    target = tmp_path / "out.qcow2"
    copy_volume(source, target, cluster_size=65536, chunk=MiB)
    assert os.path.getsize(target) < 4 * MiB


def test_many_refcount_blocks_and_a_multi_cluster_refcount_table_stay_consistent(tmp_path):
    # 512-byte clusters: one refcount block covers 128 KiB, one table cluster 64 blocks (8 MiB).
    raw = tmp_path / "noise.raw"
    raw.write_bytes(np.random.default_rng(5).bytes(20 * MiB))
    source = tmp_path / "src.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", str(raw), str(source))
    target = tmp_path / "out.qcow2"
    copy_volume(source, target, cluster_size=512, chunk=4 * MiB)
    qemu_check_clean(target)
    qemu_compare_equal(source, target)


def test_volume_size_not_a_multiple_of_the_cluster_size_round_trips(tmp_path):
    size = 1_000_001  # not even a multiple of 512, which qemu-img create would round to
    volume = bytearray(size)
    volume[:5000] = b"\x07" * 5000
    volume[size - 3333 :] = b"\x09" * 3333
    target = tmp_path / "out.qcow2"
    tgt = open_qcow2_target(str(target), force=False, cluster_size=65536)
    tgt.prepare(size, Extents.from_pairs([(0, 5000), (size - 3333, size)]))
    tgt.write_at(0, memoryview(volume)[:5000])
    tgt.write_at(size - 3333, memoryview(volume)[size - 3333 :])
    tgt.finish()
    qemu_check_clean(target)
    raw = tmp_path / "out.raw"
    run("qemu-img", "convert", "-O", "raw", str(target), str(raw))
    # qemu drops a partial last sector, so the header says the size rounded up to 512 B.
    got = raw.read_bytes()
    assert len(got) == 1_000_448
    assert got[:size] == bytes(volume) and not any(got[size:])
    with open_qcow2(str(target)) as back:
        assert back.size == 1_000_448


def test_an_empty_volume_gives_a_valid_empty_image(tmp_path):
    target = tmp_path / "out.qcow2"
    tgt = open_qcow2_target(str(target), force=False)
    tgt.prepare(0, Extents.empty())
    tgt.finish()
    qemu_check_clean(target)
    assert '"virtual-size": 0' in run("qemu-img", "info", "--output=json", str(target)).stdout


def test_refuses_to_replace_an_existing_file_without_force(tmp_path):
    target = tmp_path / "out.qcow2"
    target.write_bytes(b"precious")
    with pytest.raises(TargetError, match="already exists; use --force"):
        open_qcow2_target(str(target), force=False)
    assert target.read_bytes() == b"precious"


def test_abort_keeps_the_existing_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.qcow2"
    target.write_bytes(b"precious")
    tgt = open_qcow2_target(str(target), force=True)
    tgt.prepare(4 * MiB, Extents.span(0, MiB))
    tgt.write_at(0, memoryview(b"\x01" * MiB))
    tgt.abort()
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.qcow2"]


def test_refuses_writes_out_of_order_or_past_the_volume(tmp_path):
    tgt = open_qcow2_target(str(tmp_path / "out.qcow2"), force=False)
    tgt.prepare(MiB, Extents.span(0, MiB))
    tgt.write_at(65536, memoryview(b"\x01" * 100))
    with pytest.raises(TargetError, match="out of order"):
        tgt.write_at(0, memoryview(b"\x01" * 100))
    with pytest.raises(TargetError, match="past the"):
        tgt.write_at(MiB - 10, memoryview(b"\x01" * 100))
    tgt.abort()


@pytest.mark.parametrize("cluster_size", [256, 3000, 4 * MiB])
def test_refuses_cluster_sizes_qemu_cannot_open(tmp_path, cluster_size):
    with pytest.raises(TargetError, match="power of two between 512 B and 2 MiB"):
        open_qcow2_target(str(tmp_path / "out.qcow2"), force=False, cluster_size=cluster_size)


def test_refuses_a_volume_whose_l1_table_qemu_would_reject(tmp_path):
    tgt = open_qcow2_target(str(tmp_path / "out.qcow2"), force=False, cluster_size=512)
    with pytest.raises(TargetError, match="use a larger cluster size"):
        tgt.prepare(1 << 50, Extents.empty())
