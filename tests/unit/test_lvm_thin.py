"""The thin-pool metadata reader against metadata written by ``thin_restore`` and read back by
``thin_dump`` (the oracle), plus damaged copies of it. Needs no root: metadata files only.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from volpack.errors import SourceError
from volpack.source.lvm_thin import (
    BTREE_CSUM_XOR,
    META_BLOCK,
    SUPERBLOCK_CSUM_XOR,
    ThinPool,
    block_checksum,
)

pytestmark = pytest.mark.skipif(
    shutil.which("thin_restore") is None or shutil.which("thin_dump") is None,
    reason="thin_restore/thin_dump missing (apt install thin-provisioning-tools)",
)


def crc32c_reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def build(
    tmp_path: Path,
    devices: dict[int, list[tuple[int, int, int]]],
    nr_data: int,
    *,
    transaction: int = 1,
    size: int = 8 << 20,
) -> Path:
    """Metadata file from ``{dev: [(origin, data, length)]}`` via thin_restore."""
    lines = [
        f'<superblock uuid="" time="3" transaction="{transaction}" flags="0" version="2" '
        f'data_block_size="128" nr_data_blocks="{nr_data}">'
    ]
    for dev, runs in devices.items():
        mapped = sum(n for _, _, n in runs)
        lines.append(
            f'<device dev_id="{dev}" mapped_blocks="{mapped}" transaction="{dev}" '
            f'creation_time="1" snap_time="2">'
        )
        for v, d, n in runs:
            lines.append(
                f'<range_mapping origin_begin="{v}" data_begin="{d}" length="{n}" time="1"/>'
                if n > 1
                else f'<single_mapping origin_block="{v}" data_block="{d}" time="1"/>'
            )
        lines.append("</device>")
    lines.append("</superblock>")
    xml = tmp_path / "m.xml"
    xml.write_text("\n".join(lines))
    meta = tmp_path / "m.bin"
    with open(meta, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["thin_restore", "-i", str(xml), "-o", str(meta)], check=True, capture_output=True
    )
    return meta


def open_pool(meta: Path) -> ThinPool:
    data = meta.read_bytes()
    return ThinPool(lambda off, n: data[off : off + n], len(data), str(meta))


def dump(meta: Path) -> dict[int, list[tuple[int, int, int]]]:
    out = subprocess.run(["thin_dump", str(meta)], check=True, capture_output=True, text=True)
    result: dict[int, list[tuple[int, int, int]]] = {}
    for dev in ET.fromstring(out.stdout).iter("device"):
        runs = []
        for m in dev:
            if m.tag == "single_mapping":
                runs.append((int(m.get("origin_block")), int(m.get("data_block")), 1))
            else:
                runs.append(
                    (int(m.get("origin_begin")), int(m.get("data_begin")), int(m.get("length")))
                )
        result[int(dev.get("dev_id"))] = runs
    return result


def random_devices(seed: int, nr_data: int, count: int) -> dict[int, list[tuple[int, int, int]]]:
    rng = random.Random(seed)
    free = list(range(nr_data))
    rng.shuffle(free)
    devices = {}
    for dev in rng.sample(range(1, 1000), count):
        virt = sorted(rng.sample(range(200_000), rng.randrange(0, 3000)))
        devices[dev] = [(v, free.pop(), 1) for v in virt]
    return devices


def as_pairs(runs) -> list[tuple[int, int]]:
    return [(v + i, d + i) for v, d, n in runs for i in range(n)]


def write_block(meta: Path, blocknr: int, block: bytes) -> None:
    with open(meta, "r+b") as f:
        f.seek(blocknr * META_BLOCK)
        f.write(block)


def resign(block: bytearray, xor: int) -> bytes:
    struct.pack_into("<I", block, 0, block_checksum(bytes(block), xor))
    return bytes(block)


def test_block_checksum_is_crc32c_seeded_all_ones_not_inverted():
    block = bytes(random.Random(1).randbytes(META_BLOCK))
    want = crc32c_reference(block[4:]) ^ 0xFFFFFFFF ^ 1234
    assert block_checksum(block, 1234) == want


def test_mappings_of_many_devices_equal_thin_dump(tmp_path):
    devices = random_devices(seed=5, nr_data=40_000, count=6)
    meta = build(tmp_path, devices, 40_000)
    pool = open_pool(meta)
    oracle = dump(meta)
    assert sorted(pool.devices()) == sorted(oracle)
    for dev, runs in oracle.items():
        m = pool.device_map(dev)
        got = list(zip(m.virt.tolist(), m.data.tolist(), m.length.tolist(), strict=True))
        assert as_pairs(got) == as_pairs(runs)
        assert pool.devices()[dev].mapped_blocks == m.total()
        assert pool.devices()[dev].transaction_id == dev
    assert pool.data_block_size == 64 * 1024 and pool.data_blocks == 40_000


def test_contiguous_mappings_coalesce_into_one_run(tmp_path):
    meta = build(tmp_path, {3: [(10, 500, 1000), (1010, 1500, 7), (5000, 2, 1)]}, 4000)
    m = open_pool(meta).device_map(3)
    # Two thin_restore ranges that continue each other on both sides are one run.
    assert list(zip(m.virt.tolist(), m.data.tolist(), m.length.tolist(), strict=True)) == [
        (10, 500, 1007),
        (5000, 2, 1),
    ]


def test_empty_device_has_no_mappings(tmp_path):
    meta = build(tmp_path, {1: [], 2: [(0, 0, 4)]}, 64)
    pool = open_pool(meta)
    assert pool.device_map(1).total() == 0
    with pytest.raises(SourceError, match="thin device 9 has no mapping tree"):
        pool.device_map(9)


def test_damaged_superblock_is_refused(tmp_path):
    meta = build(tmp_path, {1: [(0, 0, 4)]}, 64)
    raw = bytearray(meta.read_bytes()[:META_BLOCK])
    raw[200] ^= 1
    write_block(meta, 0, bytes(raw))
    with pytest.raises(SourceError, match="checksum"):
        open_pool(meta)
    raw[32:40] = b"\0" * 8
    write_block(meta, 0, resign(raw, SUPERBLOCK_CSUM_XOR))
    with pytest.raises(SourceError, match="bad magic"):
        open_pool(meta)


def test_damaged_btree_node_is_refused(tmp_path):
    meta = build(tmp_path, random_devices(seed=2, nr_data=20_000, count=1), 20_000)
    pool = open_pool(meta)
    dev = next(iter(pool.devices()))
    top = bytearray(meta.read_bytes()[pool.mapping_root * META_BLOCK :][:META_BLOCK])
    root = struct.unpack_from("<Q", top, 32 + 8 * struct.unpack_from("<I", top, 20)[0])[0]
    node = bytearray(meta.read_bytes()[root * META_BLOCK :][:META_BLOCK])
    node[300] ^= 0x40
    write_block(meta, root, bytes(node))
    with pytest.raises(SourceError, match=f"node {root}: checksum"):
        open_pool(meta).device_map(dev)


def test_node_pointing_past_the_metadata_device_is_refused(tmp_path):
    meta = build(tmp_path, {1: [(0, 0, 4)]}, 64)
    raw = bytearray(meta.read_bytes()[:META_BLOCK])
    struct.pack_into("<Q", raw, 320, 10**9)  # data mapping root
    write_block(meta, 0, resign(raw, SUPERBLOCK_CSUM_XOR))
    with pytest.raises(SourceError, match="past the"):
        open_pool(meta).device_map(1)


def test_btree_that_loops_back_is_refused(tmp_path):
    meta = build(tmp_path, {1: [(0, 0, 4)]}, 64)
    pool = open_pool(meta)
    root = pool.mapping_root
    node = bytearray(meta.read_bytes()[root * META_BLOCK :][:META_BLOCK])
    # Turn the top-level leaf into an internal node whose only child is itself.
    struct.pack_into("<I", node, 4, 1)
    max_entries = struct.unpack_from("<I", node, 20)[0]
    struct.pack_into("<Q", node, 32 + 8 * max_entries, root)
    write_block(meta, root, resign(node, BTREE_CSUM_XOR))
    with pytest.raises(SourceError, match="loops"):
        open_pool(meta).device_map(1)


def test_mapping_past_the_pool_data_blocks_is_refused(tmp_path):
    meta = build(tmp_path, {1: [(0, 60, 4)]}, 64)
    raw = bytearray(meta.read_bytes()[:META_BLOCK])
    struct.pack_into("<Q", raw, 64, 50)  # data space map: only 50 blocks
    write_block(meta, 0, resign(raw, SUPERBLOCK_CSUM_XOR))
    with pytest.raises(SourceError, match="data block 63, past the 50 blocks"):
        open_pool(meta).device_map(1)


def test_metadata_snapshot_is_read_from_the_held_root(tmp_path):
    meta = build(tmp_path, {1: [(0, 0, 4)]}, 64, transaction=4)
    raw = bytearray(meta.read_bytes()[:META_BLOCK])
    held = (8 << 20) // META_BLOCK - 1  # a free block at the end of the metadata device
    copy = bytearray(raw)
    struct.pack_into("<Q", copy, 8, held)  # blocknr
    struct.pack_into("<Q", copy, 48, 3)  # the snapshot's transaction id
    write_block(meta, held, resign(copy, SUPERBLOCK_CSUM_XOR))
    struct.pack_into("<Q", raw, 56, held)
    write_block(meta, 0, resign(raw, SUPERBLOCK_CSUM_XOR))
    data = meta.read_bytes()
    live = ThinPool(lambda o, n: data[o : o + n], len(data), "m")
    snap = ThinPool(lambda o, n: data[o : o + n], len(data), "m", snapshot=True)
    assert (live.transaction_id, snap.transaction_id) == (4, 3)
    assert snap.device_map(1).total() == 4
    assert np.array_equal(snap.device_map(1).data, live.device_map(1).data)


def test_snapshot_requested_without_one_is_refused(tmp_path):
    meta = build(tmp_path, {1: [(0, 0, 4)]}, 64)
    data = meta.read_bytes()
    with pytest.raises(SourceError, match="no metadata snapshot"):
        ThinPool(lambda o, n: data[o : o + n], len(data), "m", snapshot=True)
