"""The qcow2 source against qemu's own tools: images built by qemu-img/qemu-io, guest bytes
checked against ``qemu-img convert -O raw``, data/zero maps against ``qemu-img map``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from volpack.extents import Extents
from volpack.source import open_source
from volpack.source.base import PM_COMPRESSED, PM_ZERO
from volpack.source.qcow2 import Qcow2Source, open_qcow2

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img and qemu-io (Debian package qemu-utils) are needed as oracles",
)

MiB = 1 << 20


def run(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=cwd).stdout


def create(path: Path, size: str, *opts: str, backing: str | None = None, fmt: str = "qcow2"):
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", ",".join(opts)]
    if backing is not None:
        args += ["-b", backing, "-F", fmt]
    run(*args, str(path), size, cwd=path.parent)


def qemu_io(path: Path, *commands: str) -> None:
    args = ["qemu-io"]
    for c in commands:
        args += ["-c", c]
    run(*args, str(path), cwd=path.parent)


def read_all(src: Qcow2Source, chunk: int = 3 * MiB + 4096 + 7) -> bytes:
    out = bytearray(src.size)
    view = memoryview(out)
    for pos in range(0, src.size, chunk):
        src.read_into(pos, view[pos : pos + chunk])
    return bytes(out)


def assert_reads_like_qemu(image: Path) -> None:
    raw = image.with_suffix(".oracle.raw")
    # qemu 7.2 opens a relative data_file name from the working directory: run beside the image.
    run("qemu-img", "convert", "-O", "raw", str(image), str(raw), cwd=image.parent)
    with open_qcow2(str(image)) as src:
        got = read_all(src)
    want = raw.read_bytes()
    assert len(got) == len(want)
    if got != want:
        diff = int(np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(want, np.uint8))[0])
        pytest.fail(f"{image.name}: first differing byte at guest offset {diff}")


def qemu_map(image: Path) -> tuple[Extents, Extents]:
    """(data ranges, format-zero ranges) as ``qemu-img map`` reports them."""
    entries = json.loads(run("qemu-img", "map", "--output=json", str(image), cwd=image.parent))
    data = [(e["start"], e["start"] + e["length"]) for e in entries if e["data"]]
    zero = [
        (e["start"], e["start"] + e["length"])
        for e in entries
        if e["zero"] and not e["data"] and e.get("present", True)
    ]
    return Extents.from_pairs(data), Extents.from_pairs(zero)


def assert_maps_like_qemu(image: Path, zeros: bool = True) -> None:
    data, zero = qemu_map(image)
    with open_qcow2(str(image)) as src:
        assert src.data_extents() == data
        if zeros:
            assert src.zero_extents() == zero


PATTERN = (
    "write -P 0xab 0 1M",
    "write -P 0x11 1100000 5000",  # not cluster aligned at either end
    "write -z 2M 256k",
    "write -P 0x22 3M 512k",
    "discard 3200k 64k",
    "write -P 0x33 7M 1M",  # up to the last byte
)


@pytest.mark.parametrize("cluster", ["512", "4k", "64k", "2M"])
@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_reads_and_maps_images_of_every_cluster_size_like_qemu(tmp_path, cluster, compat):
    image = tmp_path / "vm.qcow2"
    create(image, "8M", f"cluster_size={cluster}", f"compat={compat}")
    qemu_io(image, *PATTERN)
    assert_reads_like_qemu(image)
    assert_maps_like_qemu(image)


@pytest.mark.parametrize("cluster", ["16k", "64k", "2M"])
def test_reads_extended_l2_subclusters_like_qemu(tmp_path, cluster):
    image = tmp_path / "vm.qcow2"
    create(image, "9M", f"cluster_size={cluster}", "extended_l2=on")
    qemu_io(image, *PATTERN, "write -P 0x44 8300000 1000", "write -z 8400k 3k")
    assert_reads_like_qemu(image)
    assert_maps_like_qemu(image)


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
def test_reads_compressed_clusters_and_flags_them_in_the_physical_map(tmp_path, ctype):
    # Random bytes do not compress, so convert -c keeps those clusters plain: a mixed image.
    plain = tmp_path / "plain.raw"
    with open(plain, "wb") as f:
        f.write(np.random.default_rng(1).bytes(300_000))
        f.seek(MiB + 12345)
        f.write(b"compressible " * 40_000)
        f.truncate(8 * MiB)
    image = tmp_path / "vm.qcow2"
    run(
        "qemu-img",
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        f"compression_type={ctype}",
        str(plain),
        str(image),
    )
    assert_reads_like_qemu(image)
    assert_maps_like_qemu(image, zeros=False)
    with open_qcow2(str(image)) as src:
        pm = src.physical_map()
        assert src.info.details["compression"] == ctype
    assert (pm.flags & PM_COMPRESSED).any()
    assert (pm.flags == 0).any()
    assert pm.devices == (str(image),)


def test_resolves_a_three_deep_backing_chain_with_relative_names(tmp_path):
    base, mid, top = tmp_path / "base.qcow2", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    create(base, "8M", "cluster_size=4k")
    qemu_io(base, "write -P 0x01 0 4M", "write -P 0x02 6M 2M")
    create(mid, "8M", "cluster_size=64k", backing="base.qcow2")
    qemu_io(mid, "write -P 0x03 1M 100k", "write -z 2M 1M", "write -P 0x04 7M 4k")
    create(top, "8M", "cluster_size=64k", "extended_l2=on", backing="mid.qcow2")
    qemu_io(top, "write -P 0x05 1000k 10k", "write -z 6M 2k", "discard 7M 64k")
    assert_reads_like_qemu(top)
    assert_maps_like_qemu(top)
    with open_qcow2(str(top)) as src:
        chain = src.info.details["backing_chain"]
        pm = src.physical_map()
    assert [Path(c["path"]).name for c in chain] == ["mid.qcow2", "base.qcow2"]
    assert set(np.unique(pm.device).tolist()) == {0, 1, 2}
    assert pm.devices[0] == str(top)


def test_raw_backing_shorter_than_the_guest_reads_zeros_past_its_end(tmp_path):
    base = tmp_path / "base.raw"
    with open(base, "wb") as f:
        f.write(b"\x07" * 100_000)
        f.seek(2 * MiB)
        f.write(b"\x08" * 5000)  # hole in between, file ends at 2 MiB + 5000
    top = tmp_path / "top.qcow2"
    create(top, "8M", backing="base.raw", fmt="raw")
    qemu_io(top, "write -P 0x09 50000 1000")
    assert_reads_like_qemu(top)
    assert_maps_like_qemu(top, zeros=False)
    with open_qcow2(str(top)) as src:
        assert src.data_extents().last <= 2 * MiB + 5000


def test_qcow2_backing_shorter_than_the_guest_hides_the_rest_of_the_chain(tmp_path):
    base, mid, top = tmp_path / "base.qcow2", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    create(base, "8M")
    qemu_io(base, "write -P 0x01 0 8M")
    create(mid, "2M", backing="base.qcow2")
    create(top, "8M", backing="mid.qcow2")
    assert_reads_like_qemu(top)
    with open_qcow2(str(top)) as src:
        assert src.data_extents() == Extents.span(0, 2 * MiB)


@pytest.mark.parametrize("raw_flag", ["off", "on"])
def test_reads_images_with_an_external_data_file(tmp_path, raw_flag):
    image = tmp_path / "vm.qcow2"
    create(image, "8M", "data_file=vm.data", f"data_file_raw={raw_flag}")
    qemu_io(image, *PATTERN)
    assert_reads_like_qemu(image)
    assert_maps_like_qemu(image, zeros=raw_flag == "off")
    with open_qcow2(str(image)) as src:
        pm = src.physical_map()
        assert src.info.details["data_file"] == str(tmp_path / "vm.data")
    assert pm.devices == (str(tmp_path / "vm.data"),)
    data = pm.flags == 0
    if raw_flag == "on":
        assert np.array_equal(pm.starts[data], pm.offsets[data])


def test_zero_clusters_are_flagged_and_not_data(tmp_path):
    image = tmp_path / "vm.qcow2"
    create(image, "4M")
    qemu_io(image, "write -P 1 0 1M", "write -z 512k 128k")
    with open_qcow2(str(image)) as src:
        assert src.data_extents() == Extents.from_pairs([(0, 512 * 1024), (640 * 1024, MiB)])
        pm = src.physical_map()
    zero = pm.flags == PM_ZERO
    assert pm.starts[zero].tolist() == [512 * 1024]
    assert pm.lengths[zero].tolist() == [128 * 1024]


def test_open_source_detects_qcow2_by_magic_and_honours_raw(tmp_path):
    image = tmp_path / "vm.qcow2"
    create(image, "1M")
    src = open_source(str(image))
    try:
        assert isinstance(src, Qcow2Source)
        assert src.size == MiB
    finally:
        src.close()
    raw = open_source(str(image), "raw")
    try:
        assert not isinstance(raw, Qcow2Source)
        assert raw.size == os.path.getsize(image)
    finally:
        raw.close()


def test_an_empty_image_has_no_data(tmp_path):
    image = tmp_path / "vm.qcow2"
    create(image, "0")
    with open_qcow2(str(image)) as src:
        assert src.size == 0
        assert len(src.data_extents()) == 0
        src.read_into(0, memoryview(bytearray(0)))


def test_reads_outside_the_guest_disk_are_refused(tmp_path):
    from volpack.errors import SourceError

    image = tmp_path / "vm.qcow2"
    create(image, "1M")
    with open_qcow2(str(image)) as src, pytest.raises(SourceError, match="outside"):
        src.read_into(MiB - 10, memoryview(bytearray(20)))


def test_identity_changes_when_any_file_of_the_chain_changes(tmp_path):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    create(base, "4M")
    create(top, "4M", backing="base.qcow2")
    with open_qcow2(str(top)) as src:
        before = src.identity()
        assert src.identity() == before
        qemu_io(base, "write -P 1 0 64k")
        assert src.identity() != before


@pytest.mark.parametrize("prealloc", ["metadata", "falloc", "full"])
def test_preallocated_images_map_like_qemu(tmp_path, prealloc):
    image = tmp_path / "vm.qcow2"
    create(image, "8M", f"preallocation={prealloc}")
    qemu_io(image, "write -P 1 1M 64k", "write -z 3M 128k")
    assert_reads_like_qemu(image)
    assert_maps_like_qemu(image)


def test_refuses_a_backing_file_that_is_not_a_local_file(tmp_path):
    from volpack.errors import SourceError

    image = tmp_path / "vm.qcow2"
    create(image, "1M")
    run("qemu-img", "rebase", "-u", "-b", "nbd://127.0.0.1:10809/x", "-F", "raw", str(image))
    with pytest.raises(SourceError, match="not a local file"):
        open_qcow2(str(image))


@pytest.mark.parametrize("extl2", ["off", "on"])
def test_decoding_l2_tables_in_many_small_batches_gives_the_same_volume(
    tmp_path, monkeypatch, extl2
):
    from volpack.source import qcow2_tables

    image = tmp_path / "vm.qcow2"
    create(image, "8M", "cluster_size=16k", f"extended_l2={extl2}")
    qemu_io(image, *PATTERN)
    monkeypatch.setattr(qcow2_tables, "_BATCH_ENTRIES", 1)
    monkeypatch.setattr(qcow2_tables, "_BATCH_ENTRIES_EXTL2", 1)
    assert_reads_like_qemu(image)
    assert_maps_like_qemu(image)
