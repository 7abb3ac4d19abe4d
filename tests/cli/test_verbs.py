"""The core verbs' normal output: info (file and stream), map, backup --json, progress off a TTY."""

import json
import os
import subprocess

import pytest

import volpack
from volumes import write_sparse


def vp(*args: str, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", "-m", "volpack", *args], capture_output=True, text=True, stdin=stdin
    )


@pytest.fixture
def archive(tmp_path):
    vol = str(tmp_path / "v.img")
    write_sparse(vol, (2 << 20) + 5, [(0, os.urandom(70_000)), (1 << 20, b"t" * 9000)])
    arc = str(tmp_path / "v.vpk")
    r = volpack.backup(vol, arc, frame_size=65536)
    return vol, arc, r


def test_info_json_describes_header_tables_digest_and_source(archive):
    vol, arc, r = archive
    p = vp("info", arc, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["uuid"] == r.archive_uuid and d["digest"] == r.digest
    assert d["volume_size"] == (2 << 20) + 5 and d["used_blocks"] == r.used_blocks
    assert d["complete"] is True and d["source"]["path"] == os.path.abspath(vol)
    assert d["format"] == "1.4" and d["address_table_runs"] == 2


def test_info_on_a_stream_reads_the_head_only(archive):
    _, arc, r = archive
    with open(arc, "rb") as f:
        p = vp("info", "-", stdin=f)
    assert p.returncode == 0, p.stderr
    assert r.archive_uuid in p.stdout and "not read (stream)" in p.stdout


def test_map_json_lists_used_and_unused_runs_covering_the_volume(archive):
    vol, _, _ = archive
    p = vp("map", vol, "--json")
    assert p.returncode == 0, p.stderr
    ext = json.loads(p.stdout)["extents"]
    assert ext[0]["start"] == 0 and ext[0]["data"]
    assert sum(e["length"] for e in ext) == (2 << 20) + 5
    assert all(a["start"] + a["length"] == b["start"] for a, b in zip(ext, ext[1:], strict=False))


def test_backup_json_result_and_no_progress_bar_off_a_terminal(tmp_path, archive):
    vol, _, _ = archive
    p = vp("backup", vol, str(tmp_path / "x.vpk"), "--json", "--no-catalog")
    assert p.returncode == 0
    d = json.loads(p.stdout)
    assert d["used_blocks"] > 0 and d["archive_size"] == os.path.getsize(tmp_path / "x.vpk")
    assert "\r" not in p.stderr


def test_backup_to_stdout_keeps_the_result_off_the_archive_stream(tmp_path, archive):
    vol, _, _ = archive
    with open(tmp_path / "s.vpk", "wb") as out:
        p = subprocess.run(
            ["python3", "-m", "volpack", "backup", vol, "-", "--json", "--no-catalog"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert p.returncode == 0
    assert '"archive_uuid"' in p.stderr
    assert volpack.verify(str(tmp_path / "s.vpk")).frame_count >= 1


def test_a_verb_loads_only_its_own_module_and_help_still_lists_every_verb():
    probe = (
        "import sys; from volpack.cli import build_parser; build_parser(['backup', 'a', 'b']); "
        "print(sorted(m for m in sys.modules if m.startswith('volpack.cli.')))"
    )
    p = subprocess.run(["python3", "-c", probe], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # cli.keys holds the key options every sealing and opening verb shares, like cli.common
    assert p.stdout.strip() == "['volpack.cli.backup', 'volpack.cli.common', 'volpack.cli.keys']"
    p = vp("--help")
    assert p.returncode == 0
    for verb in ("backup", "restore", "verify", "serve", "mount", "prune", "catalog"):
        assert verb in p.stdout
    p = vp("bakup", "x")
    assert p.returncode == 2 and "invalid choice: 'bakup'" in p.stderr
