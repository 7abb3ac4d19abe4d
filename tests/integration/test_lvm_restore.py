"""End to end: back up ``lvm:VG/LV`` from PV images, restore it raw (bytes equal the LV) and with the
physical layout onto copies of the PVs (images equal the originals again), and refuse targets
whose layout does not match. The LVM metadata comes from the real tools (see test_lvm_source).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_lvm_source import (  # noqa: F401 (lab_fixture is the shared fixture)
    THIN_DEVICES,
    LvmLab,
    lab_fixture,
    pvs_of,
    read_all,
    skip_reason,
)

import volpack
from volpack import backup, restore
from volpack.errors import TargetError
from volpack.extents import Extents
from volpack.targets.physical import open_physical_target

pytestmark = pytest.mark.root
MiB = 1 << 20


def back_up(lab: LvmLab, lv: str, tmp_path) -> str:
    url = str(tmp_path / f"{lv}.vpk")
    backup(f"lvm:{lab.vg}/{lv}", url, pvs=pvs_of(lab))
    return url


def restore_physical(url: str, pvs: list[str], *, force: bool = True) -> None:
    """Restore through the public random-access API into the physical target."""
    with volpack.open_archive(url) as archive:
        details = archive.description["source"]["details"]
        target = open_physical_target(
            tuple(pvs), archive.physical_map, force=force, source_details=details
        )
        used = archive.used_bytes()
        try:
            target.prepare(archive.size, used)
            for s, e in used:
                for pos in range(s, e, 3 * MiB):
                    n = min(3 * MiB, e - pos)
                    target.write_at(pos, memoryview(archive.read(pos, n)))
            target.finish()
        except BaseException:
            target.abort()
            raise


def scribble_copies(lab: LvmLab, tmp_path, lvs: list[str]) -> list[str]:
    """Copies of the PV images with the given LVs' PE ranges overwritten by other bytes."""
    copies = []
    for img in lab.images:
        dst = tmp_path / f"copy-{img.name}"
        shutil.copyfile(img, dst)
        copies.append(str(dst))
    x = lab.extent_size()
    for lv in lvs:
        for seg in lab.segments(lv):
            for rng in seg["seg_pe_ranges"].split():
                loop, _, span = rng.rpartition(":")
                first, last = (int(v) for v in span.split("-"))
                with open(copies[lab.loops.index(loop)], "r+b") as f:
                    f.seek(lab.pe_start(loop) + first * x)
                    f.write(b"\xa5" * ((last - first + 1) * x))
    return copies


@pytest.mark.parametrize("lv", ["multi", "striped", "thin1"])
def test_backup_of_lv_restored_raw_equals_the_lv_bytes(lab, tmp_path, lv):
    url = back_up(lab, lv, tmp_path)
    out = tmp_path / "out.raw"
    restore(url, str(out))
    src = volpack.open_archive(url)
    try:
        assert src.description["source"]["details"]["lv"] == lv
        assert len(src.description["source"]["details"]["segments"]) >= 1
    finally:
        src.close()
    from volpack.source.lvm import open_lvm

    lvsrc = open_lvm(f"lvm:{lab.vg}/{lv}", pvs_of(lab))
    try:
        assert out.read_bytes() == read_all(lvsrc)
    finally:
        lvsrc.close()


@pytest.mark.parametrize("lv", ["multi", "striped"])
def test_physical_restore_puts_every_extent_back_where_it_was(lab, tmp_path, lv):
    url = back_up(lab, lv, tmp_path)
    copies = scribble_copies(lab, tmp_path, [lv])
    assert any(
        Path(c).read_bytes() != img.read_bytes() for c, img in zip(copies, lab.images, strict=True)
    )
    restore_physical(url, list(reversed(copies)))  # matched by PV uuid, not by order
    for c, img in zip(copies, lab.images, strict=True):
        assert Path(c).read_bytes() == img.read_bytes()


def test_physical_restore_of_thin_lv_rewrites_only_its_mapped_data_blocks(lab, tmp_path):
    url = back_up(lab, "thin5", tmp_path)
    copies = scribble_copies(lab, tmp_path, ["pool_tdata"])
    restore_physical(url, copies)
    from volpack.source.lvm import open_lvm

    before = open_lvm(f"lvm:{lab.vg}/thin5", pvs_of(lab))
    after = open_lvm(f"lvm:{lab.vg}/thin5", tuple(copies))
    other = open_lvm(f"lvm:{lab.vg}/thin1", tuple(copies))
    try:
        assert read_all(after) == read_all(before)
        assert after.size == THIN_DEVICES[5]
        # thin1's blocks were not in the archive: they keep the scribbled bytes.
        s, e = next(iter(other.data_extents()))
        buf = bytearray(e - s)
        other.read_into(s, memoryview(buf))
        assert set(buf) == {0xA5}
    finally:
        before.close()
        after.close()
        other.close()


def test_physical_restore_refuses_pvs_of_another_vg(lab, tmp_path):
    url = back_up(lab, "lin", tmp_path)
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    (tmp_path / "other").mkdir()
    other = LvmLab(tmp_path / "other", [64 * MiB, 64 * MiB], f"vpo{os.getpid()}")
    try:
        with pytest.raises(TargetError, match="uuid"):
            restore_physical(url, [str(p) for p in other.images])
    finally:
        other.close()


def test_physical_restore_refuses_a_layout_that_moved(lab, tmp_path):
    url = back_up(lab, "lin", tmp_path)
    copies = scribble_copies(lab, tmp_path, [])
    with volpack.open_archive(url) as archive:
        pm = archive.physical_map
        details = archive.description["source"]["details"]
    moved = type(pm)(pm.devices, pm.starts, pm.lengths, pm.device, pm.offsets + MiB, pm.flags)
    target = open_physical_target(tuple(copies), moved, force=True, source_details=details)
    with pytest.raises(TargetError, match="laid out differently"):
        target.prepare(int(pm.lengths.sum()), Extents.span(0, int(pm.lengths.sum())))
    target.abort()


def test_physical_restore_refuses_blank_images_too_small_and_needs_force(lab, tmp_path):
    url = back_up(lab, "striped", tmp_path)
    small = []
    for i in range(2):
        p = tmp_path / f"small{i}.img"
        with open(p, "wb") as f:
            f.truncate(4 * MiB)
        small.append(str(p))
    with pytest.raises(TargetError, match="bytes, but the recorded layout needs"):
        restore_physical(url, small)
    with pytest.raises(TargetError, match="--force"):
        restore_physical(url, small, force=False)
    with pytest.raises(TargetError, match="records 2 devices"):
        restore_physical(url, small[:1])


def test_physical_restore_onto_blank_images_of_the_right_size_places_the_bytes(lab, tmp_path):
    url = back_up(lab, "striped", tmp_path)
    blank = []
    for img in lab.images:
        p = tmp_path / f"blank-{img.name}"
        with open(p, "wb") as f:
            f.truncate(img.stat().st_size)
        blank.append(str(p))
    restore_physical(url, blank)  # no labels: matched by position
    with volpack.open_archive(url) as archive:
        pm = archive.physical_map
    for s, n, d, off, _ in pm.runs()[:50]:
        with open(blank[d], "rb") as f, open(lab.images[d], "rb") as g:
            f.seek(off)
            g.seek(off)
            assert f.read(n) == g.read(n), s
    assert np.all(pm.flags == 0)
