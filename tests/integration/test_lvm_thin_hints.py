"""``backup lvm:VG/thin1 --base latest`` uses the pool's mappings as a checked hint when a thin
snapshot kept from the base's time still maps what the base read.

The pool is built as in test_lvm_source.py (real LVM tools on loop devices, metadata from
``thin_restore``); each stage of the volume is a new metadata image. The oracle is the volume's
bytes assembled from the mapping and the pool's data LV as the LVM report places it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from test_lvm_source import CHUNK, LvmLab, MiB, make_thin_pool, skip_reason, write_lv_bytes

pytestmark = pytest.mark.root

THIN_SIZE = 64 * MiB  # 64 hash blocks: the sample (16) leaves most un-hinted blocks unread
DATA_MIB = 32
DEVICES = {1: THIN_SIZE, 2: THIN_SIZE}  # thin1: the volume; thin2: the snapshot kept of it
PER_HASH_BLOCK = MiB // CHUNK

Mapping = dict[int, int]  # thin chunk → data block


@pytest.fixture(name="lab")
def lab_fixture(tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    (tmp_path / "lvm").mkdir()
    lab = LvmLab(tmp_path / "lvm", [64 * MiB, 64 * MiB], f"vph{os.getpid()}")
    try:
        make_thin_pool(lab, data_mib=DATA_MIB, meta_mib=4, devices=DEVICES, striped=False)
        lab.fill_data_areas(seed=11)
        yield lab
    finally:
        lab.close()


def base_mapping() -> Mapping:
    """Hash blocks 0-3 mapped in one run, 150 chunks scattered over the rest."""
    rng = random.Random(7)
    free = list(range(64, DATA_MIB * MiB // CHUNK))
    rng.shuffle(free)
    out = {v: v for v in range(64)}
    for v in rng.sample(range(64, THIN_SIZE // CHUNK), 150):
        out[v] = free.pop()
    return out


def written(base: Mapping) -> tuple[Mapping, set[int]]:
    """thin1 after the snapshot: chunks rewritten (copied to unused data blocks), one discarded,
    one written where nothing was; and the hash blocks that holds changes in."""
    used = set(base.values())
    spare = (d for d in range(DATA_MIB * MiB // CHUNK) if d not in used)
    new = dict(base)
    scattered = sorted(v for v in base if v >= 64)
    for v in (5, 6, scattered[40]):
        new[v] = next(spare)
    del new[scattered[90]]
    fresh = next(v for v in range(THIN_SIZE // CHUNK - 1, 0, -1) if v not in base)
    new[fresh] = next(spare)
    changed = {5, 6, scattered[40], scattered[90], fresh}
    return new, {v // PER_HASH_BLOCK for v in changed}


def install(lab: LvmLab, devices: dict[int, Mapping]) -> None:
    lines = [
        f'<superblock uuid="" time="1" transaction="7" flags="0" version="2" '
        f'data_block_size="{CHUNK // 512}" nr_data_blocks="{DATA_MIB * MiB // CHUNK}">'
    ]
    for dev, mapping in devices.items():
        lines.append(
            f'  <device dev_id="{dev}" mapped_blocks="{len(mapping)}" transaction="0" '
            f'creation_time="{dev - 1}" snap_time="1">'
        )
        lines += [
            f'    <single_mapping origin_block="{v}" data_block="{d}" time="0"/>'
            for v, d in sorted(mapping.items())
        ]
        lines.append("  </device>")
    lines.append("</superblock>")
    xml, meta = lab.dir / "meta.xml", lab.dir / "meta.bin"
    xml.write_text("\n".join(lines) + "\n")
    with open(meta, "wb") as f:
        f.truncate(4 * MiB)
    subprocess.run(["thin_restore", "-i", str(xml), "-o", str(meta)], check=True)
    write_lv_bytes(lab, "pool_tmeta", meta.read_bytes())


def volume_bytes(lab: LvmLab, mapping: Mapping) -> bytes:
    data = lab.expected_bytes("pool_tdata")
    out = bytearray(THIN_SIZE)
    for v, d in mapping.items():
        out[v * CHUNK : (v + 1) * CHUNK] = data[d * CHUNK : (d + 1) * CHUNK]
    return bytes(out)


def volpack(lab: LvmLab, *args: str) -> subprocess.CompletedProcess:
    pvs = [x for img in lab.images for x in ("--pv", str(img))]
    cmd = [sys.executable, "-m", "volpack", *args]
    if args[0] == "backup":
        cmd += [*pvs, "--catalog", str(lab.dir / "catalog.db"), "--json"]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def incremental(lab: LvmLab, tmp_path: Path, code: int) -> dict:
    r = volpack(lab, "backup", f"lvm:{lab.vg}/thin1", str(tmp_path / "t2.vpk"), "--base", "latest")
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def restored(lab: LvmLab, tmp_path: Path) -> bytes:
    out = tmp_path / "chain.raw"
    r = volpack(lab, "restore", str(tmp_path / "t2.vpk"), str(out), "--force")
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def back_up_base(lab: LvmLab, tmp_path: Path, base: Mapping) -> dict:
    install(lab, {1: base})
    # 1 MiB hash blocks, several chunks each: the samples below are counted in hash blocks
    r = volpack(
        lab, "backup", f"lvm:{lab.vg}/thin1", str(tmp_path / "t1.vpk"), "--hash-block", "1M"
    )
    assert r.returncode == 0, r.stderr
    thin = json.loads(r.stdout)["source"]["details"]["thin"]
    assert thin["device_id"] == 1 and thin["transaction_id"] == 7
    assert len(thin["mapping_digest"]) == 64
    return thin


def test_thin_incremental_uses_the_mapping_difference_from_a_kept_snapshot_unless_no_hints(
    lab, tmp_path
):
    base = base_mapping()
    back_up_base(lab, tmp_path, base)
    new, changed_blocks = written(base)
    install(lab, {1: new, 2: base})  # thin2: the snapshot taken at the base's time
    inc = incremental(lab, tmp_path, 0)
    ch = inc["changes"]
    assert ch["method"] == "thin-delta" and ch["warnings"] == []
    assert ch["sampled"] >= 16 and ch["read_bytes"] <= ch["sampled"] * MiB
    # It covers the hash blocks holding rewritten, discarded and new chunks, and nothing else.
    assert inc["dense_size"] <= len(changed_blocks) * MiB
    assert restored(lab, tmp_path) == volume_bytes(lab, new)
    # --no-hints: the periodic check reads every used block even though the hint is there.
    r = volpack(
        lab, "backup", f"lvm:{lab.vg}/thin1", str(tmp_path / "t3.vpk"), "--base",
        str(tmp_path / "t1.vpk"), "--no-hints",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    checked = json.loads(r.stdout)["changes"]
    assert checked["method"] == "hash-compare" and checked["read_bytes"] > ch["read_bytes"]


def test_thin_incremental_without_a_device_holding_the_base_mapping_compares_hashes(lab, tmp_path):
    base = base_mapping()
    back_up_base(lab, tmp_path, base)
    new, _ = written(base)
    install(lab, {1: new})  # no snapshot was kept: thin1's old mapping is gone
    inc = incremental(lab, tmp_path, 0)
    assert inc["changes"]["method"] == "hash-compare"
    assert restored(lab, tmp_path) == volume_bytes(lab, new)


def test_thin_hint_missing_an_in_place_write_is_caught_by_the_sample(lab, tmp_path):
    """A data block shared with the kept snapshot can only change if the snapshot was not taken
    at the base's time (here: a write into the pool's data behind the mapping's back)."""
    base = base_mapping()
    back_up_base(lab, tmp_path, base)
    new, changed_blocks = written(base)
    install(lab, {1: new, 2: base})
    first_unhinted = min(set(range(THIN_SIZE // MiB)) - changed_blocks)
    chunk = first_unhinted * PER_HASH_BLOCK  # mapped in the run of hash blocks 0-3
    data = bytearray(lab.expected_bytes("pool_tdata"))
    data[new[chunk] * CHUNK : new[chunk] * CHUNK + 4096] = b"\xee" * 4096
    write_lv_bytes(lab, "pool_tdata", bytes(data))
    inc = incremental(lab, tmp_path, 1)
    ch = inc["changes"]
    assert ch["method"] == "hash-compare"
    assert any(f"hash block {first_unhinted} " in w for w in ch["warnings"]), ch["warnings"]
    assert restored(lab, tmp_path) == volume_bytes(lab, new)
