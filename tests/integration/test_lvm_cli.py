"""The CLI on LVM sources: ``map lvm:VG/LV --pv …`` locates every used run at the PV offsets that
``lvs``/``pvs`` report, and backup → info → restore → verify round-trips an LV.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_lvm_source import (  # noqa: F401 (lab_fixture is the shared fixture)
    CHUNK,
    LvmLab,
    lab_fixture,
    pvs_of,
)

from volpack.cli import main

pytestmark = pytest.mark.root


def pv_args(lab: LvmLab) -> list[str]:
    return [arg for p in pvs_of(lab) for arg in ("--pv", p)]


def oracle_locations(lab: LvmLab, lv: str) -> list[tuple[int, int, str, int]]:
    """(LV offset, length, PV image, PV offset) per stripe chunk, from the lvs report alone."""
    x = lab.extent_size()
    out = []
    for seg in lab.segments(lv):
        areas = []
        for rng in seg["seg_pe_ranges"].split():
            loop, _, span = rng.rpartition(":")
            first = int(span.split("-")[0])
            areas.append((str(lab.image_of(loop)), lab.pe_start(loop) + first * x))
        n = int(seg["stripes"])
        size = int(seg["seg_size"])
        chunk = int(seg["stripe_size"]) if n > 1 else size
        for c in range(size // chunk):
            image, base = areas[c % n]
            out.append((int(seg["seg_start"]) + c * chunk, chunk, image, base + (c // n) * chunk))
    return out


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.parametrize("lv", ["striped", "multi"])
def test_map_json_places_used_runs_at_the_pe_offsets_lvs_reports(lab, capsys, lv):
    code, out = run_cli(capsys, "map", f"lvm:{lab.vg}/{lv}", *pv_args(lab), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["source"]["kind"] == "lvm" and doc["source"]["details"]["lv"] == lv
    got = [(e["start"], e["length"], e["device"], e["offset"]) for e in doc["extents"] if e["data"]]
    # The data is random, so every block is used and the map is exactly the oracle's runs.
    want = oracle_locations(lab, lv)
    merged = []
    for s, n, img, off in want:
        if (
            merged
            and merged[-1][0] + merged[-1][1] == s
            and merged[-1][2] == img
            and (merged[-1][3] + merged[-1][1] == off)
        ):
            merged[-1] = (merged[-1][0], merged[-1][1] + n, img, merged[-1][3])
        else:
            merged.append((s, n, img, off))
    assert got == merged


def test_map_of_thin_lv_lists_only_mapped_chunks(lab, capsys):
    code, out = run_cli(capsys, "map", f"lvm:{lab.vg}/thin2", *pv_args(lab), "--json")
    assert code == 0
    doc = json.loads(out)
    used = sum(e["length"] for e in doc["extents"] if e["data"])
    assert used == doc["source"]["details"]["thin"]["mapped_blocks"] * CHUNK
    assert all(e["length"] % CHUNK == 0 for e in doc["extents"] if e["data"])


def test_backup_info_restore_verify_round_trip_an_lv(lab, capsys, tmp_path):
    archive = str(tmp_path / "multi.vpk")
    code, _ = run_cli(capsys, "backup", f"lvm:{lab.vg}/multi", archive, *pv_args(lab))
    assert code == 0
    code, out = run_cli(capsys, "info", archive, "--json")
    assert code == 0
    assert '"segments"' in out and f'"{lab.vg}"' in out
    code, out = run_cli(capsys, "info", archive)
    assert code == 0
    assert f"VG {lab.vg}, LV multi" in out and out.count("segment      extents") >= 2
    target = tmp_path / "multi.raw"
    code, _ = run_cli(capsys, "restore", archive, str(target))
    assert code == 0
    assert target.read_bytes() == lab.expected_bytes("multi")
    code, _ = run_cli(capsys, "verify", archive)
    assert code == 0
    code, _ = run_cli(capsys, "verify", archive, "--against", f"lvm:{lab.vg}/multi", *pv_args(lab))
    assert code == 0


def test_restore_layout_physical_puts_the_lv_back_onto_copies_of_its_pvs(lab, capsys, tmp_path):
    from test_lvm_restore import scribble_copies

    archive = str(tmp_path / "striped.vpk")
    code, _ = run_cli(capsys, "backup", f"lvm:{lab.vg}/striped", archive, *pv_args(lab))
    assert code == 0
    copies = scribble_copies(lab, tmp_path, ["striped"])
    code, _ = run_cli(
        capsys, "restore", archive, copies[1], "--pv", copies[0], "--layout", "physical"
    )
    assert code == 8  # TargetError: needs --force
    code, out = run_cli(
        capsys,
        "restore",
        archive,
        copies[1],
        "--pv",
        copies[0],
        "--layout",
        "physical",
        "--force",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["used_bytes"] == 8 << 20
    for copy, img in zip(copies, lab.images, strict=True):
        assert Path(copy).read_bytes() == img.read_bytes()
    code, _ = run_cli(capsys, "restore", archive, str(tmp_path / "x.raw"), "--pv", copies[0])
    assert code == 2


def test_backup_refuses_an_archive_or_staging_on_a_physical_volume_of_the_source(
    lab, capsys, tmp_path
):
    import hashlib

    def digests() -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in lab.images]

    def error_line(*argv: str) -> str:
        assert main(list(argv)) == 2
        lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
        assert len(lines) == 1
        return lines[0]

    before = digests()
    source = f"lvm:{lab.vg}/lin"
    arc = str(tmp_path / "lin.vpk")
    line = error_line(
        "backup", source, str(lab.images[0]), *pv_args(lab), "--force", "--no-catalog"
    )
    assert "is a physical volume of the source" in line and "archive path" in line
    # The PV's loop device reaches the same image: refused as staging before it is opened.
    line = error_line(
        "backup", source, arc, *pv_args(lab), "--staging", lab.loops[1], "--force", "--no-catalog"
    )
    assert f"is the same file as {lab.images[1]}" in line and "staging path" in line
    assert digests() == before
    assert not (tmp_path / "lin.vpk").exists()
