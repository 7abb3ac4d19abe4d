"""The LVM thin change hint agrees with ``thin_delta`` (thin-provisioning-tools) on metadata built
by ``thin_restore``: chunks mapped to other data blocks, mapped in one device only, or the same."""

from __future__ import annotations

import random
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from volpack.extents import Extents
from volpack.source.lvm_thin import ThinPool
from volpack.source.lvm_thin_delta import mapping_delta, mapping_digest

pytestmark = pytest.mark.skipif(
    shutil.which("thin_restore") is None or shutil.which("thin_delta") is None,
    reason="thin_restore and thin_delta (Debian package thin-provisioning-tools) are the oracle",
)

CHUNK_SECTORS = 128
DATA_BLOCKS = 4096


def device_xml(dev: int, pairs: list[tuple[int, int]]) -> list[str]:
    lines = [
        f'  <device dev_id="{dev}" mapped_blocks="{len(pairs)}" transaction="0" '
        f'creation_time="{dev}" snap_time="2">'
    ]
    lines += [
        f'    <single_mapping origin_block="{v}" data_block="{d}" time="0"/>' for v, d in pairs
    ]
    return [*lines, "  </device>"]


def snapshot_and_write(seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """An origin mapping, then the origin after a snapshot kept it: some chunks rewritten (new
    data blocks), some discarded, some newly written, long runs left alone."""
    rng = random.Random(seed)
    free = list(range(DATA_BLOCKS))
    rng.shuffle(free)
    virt = sorted(rng.sample(range(2000), 600)) + list(range(2100, 2400))
    old = {v: free.pop() for v in virt}
    new = dict(old)
    for v in rng.sample(virt, 40):
        new[v] = free.pop()  # rewritten: copied to a new data block
    for v in rng.sample(virt, 30):
        new.pop(v, None)  # discarded
    for v in rng.sample(range(2400, 3000), 25):
        new[v] = free.pop()  # written where nothing was
    new[2200] = free.pop()  # a rewrite inside a long run splits it
    return sorted(old.items()), sorted(new.items())


def build(tmp_path: Path, seed: int) -> Path:
    snap, origin = snapshot_and_write(seed)
    lines = [
        f'<superblock uuid="" time="2" transaction="3" flags="0" version="2" '
        f'data_block_size="{CHUNK_SECTORS}" nr_data_blocks="{DATA_BLOCKS}">',
        *device_xml(1, origin),
        *device_xml(2, snap),
        *device_xml(3, []),
        "</superblock>",
    ]
    (tmp_path / "m.xml").write_text("\n".join(lines) + "\n")
    meta = tmp_path / "meta.bin"
    with open(meta, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(
        ["thin_restore", "-i", str(tmp_path / "m.xml"), "-o", str(meta)],
        check=True,
        capture_output=True,
    )
    return meta


def thin_delta(meta: Path, left: int, right: int) -> Extents:
    out = subprocess.run(
        ["thin_delta", "--snap1", str(left), "--snap2", str(right), str(meta)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    runs = [
        (int(e.get("begin")), int(e.get("begin")) + int(e.get("length")))
        for e in ET.fromstring(out).iter()
        if e.tag in ("different", "left_only", "right_only")
    ]
    return Extents.from_pairs(runs)


def pool(meta: Path) -> ThinPool:
    data = meta.read_bytes()
    return ThinPool(lambda off, n: data[off : off + n], len(data), str(meta))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mapping_difference_equals_thin_delta_for_mapped_unmapped_and_changed_chunks(
    tmp_path, seed
):
    meta = build(tmp_path, seed)
    tp = pool(meta)
    snap, origin = tp.device_map(2), tp.device_map(1)
    got = mapping_delta(snap, origin)
    assert got == thin_delta(meta, 2, 1)
    assert got.total() > 0
    assert mapping_delta(origin, snap) == got  # the difference has no direction


def test_mapping_difference_from_an_empty_device_is_every_mapped_chunk(tmp_path):
    meta = build(tmp_path, 4)
    tp = pool(meta)
    empty, origin = tp.device_map(3), tp.device_map(1)
    assert mapping_delta(empty, origin) == thin_delta(meta, 3, 1)
    assert mapping_delta(empty, empty) == Extents.empty()
    assert mapping_delta(origin, origin) == Extents.empty()


def test_mapping_digest_tells_a_kept_snapshot_from_the_device_that_moved_on(tmp_path):
    meta = build(tmp_path, 5)
    tp = pool(meta)
    snap, origin = tp.device_map(2), tp.device_map(1)
    assert mapping_digest(snap) == mapping_digest(pool(meta).device_map(2))
    assert mapping_digest(snap) != mapping_digest(origin)
