"""The used share printed by backup, info and map counts only bytes inside the volume: a volume
smaller than one block, or ending in a partial block, is never "more than 100% used", and an empty
volume says so instead of a percentage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from volumes import write_sparse


def vp(*args: str) -> str:
    r = subprocess.run(["python3", "-m", "volpack", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def shares(text: str) -> list[str]:
    return re.findall(r"used [^(]*\(([^)]*)\)", text)


@pytest.mark.parametrize(
    "size,pieces,used,share",
    [
        (1, [(0, b"x")], 1, "100.0%"),
        (0, [], 0, "empty volume"),
        # 6000 bytes: block 0 a hole, block 1 (1904 bytes inside the volume) holds data.
        (6000, [(5000, b"y")], 1904, "31.7%"),
    ],
)
def test_backup_info_and_map_report_used_bytes_clipped_to_the_volume(
    tmp_path, size, pieces, used, share
):
    vol = str(tmp_path / "v.img")
    write_sparse(vol, size, pieces)
    arc = str(tmp_path / "v.vpk")
    out = vp("backup", vol, arc, "--no-catalog")
    assert shares(out) == [share], out
    assert (
        json.loads(vp("backup", vol, arc, "--no-catalog", "--force", "--json"))["used_bytes"]
        == used
    )
    info = vp("info", arc)
    assert shares(info) == [share], info
    assert json.loads(vp("info", arc, "--json"))["used_bytes"] == used
    mapped = vp("map", vol)
    assert shares(mapped) == [share], mapped
    assert json.loads(vp("map", vol, "--json"))["used_bytes"] == used


def test_list_shows_a_one_byte_volume_as_one_byte_used(tmp_path):
    vol = str(tmp_path / "v.img")
    with open(vol, "wb") as f:
        f.write(os.urandom(1))
    cat = str(tmp_path / "cat.sqlite")
    vp("backup", vol, str(tmp_path / "v.vpk"), "--catalog", cat)
    line = vp("list", "--catalog", cat).splitlines()[1]
    assert "4.0 KiB" not in line and line.count("1 B") == 2, line  # SIZE and USED
