"""A catalog on a full filesystem (a small tmpfs, filled up) is reported as a full disk with the
remedy, never as a damaged catalog; once space is freed it works again with nothing lost.
Needs root and a working ``mount -t tmpfs``; skipped with the reason otherwise."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from volpack.cli import main
from volpack.errors import EXIT_CATALOG, EXIT_OK


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory) -> str:
    """Write a file until the filesystem has no space left; returns its path."""
    path = os.path.join(directory, "filler")
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def volume(tmp_path) -> str:
    path = str(tmp_path / "v.img")
    with open(path, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"data" * 1024)
    return path


def test_list_on_a_full_disk_names_the_full_filesystem_not_a_damaged_catalog(
    small_fs, tmp_path, capsys
):
    catalog = str(small_fs / "catalog.sqlite")
    src = volume(tmp_path)
    code, out, err = run(
        capsys, "backup", "--allow-mounted", "--json", "--catalog", catalog, src,
        str(tmp_path / "a.vpk"),
    )  # fmt: skip
    assert code == EXIT_OK, err
    uid = json.loads(out)["archive_uuid"]
    filler = fill(small_fs)
    code, out, err = run(capsys, "list", "--catalog", catalog)
    assert code == EXIT_CATALOG
    lines = [x for x in err.splitlines() if x.startswith("volpack: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "filesystem holding the catalog is full" in lines[0]
    assert "0 B (0 bytes) free" in lines[0] and str(small_fs) in lines[0]
    assert "free space there" in lines[0] and "not a usable catalog" not in lines[0]
    os.unlink(filler)
    code, out, err = run(capsys, "list", "--json", "--catalog", catalog)
    assert code == EXIT_OK, err
    assert [e["uuid"] for e in json.loads(out)] == [uid]


def test_backup_recording_into_a_full_disk_warns_of_the_full_filesystem(
    small_fs, tmp_path, capsys, caplog
):
    src = volume(tmp_path)
    fill(small_fs)
    for name in ("new.sqlite", "sub/new.sqlite"):
        code, out, err = run(
            capsys, "backup", "--allow-mounted", "--catalog", str(small_fs / name), src,
            str(tmp_path / f"{name.replace('/', '-')}.vpk"),
        )  # fmt: skip
        assert code == EXIT_OK, err  # the archive is safe; the catalog can be rebuilt
        said = err + caplog.text
        assert "not recorded in the catalog" in said and "is full" in said, said
        assert "not a usable catalog" not in said
        caplog.clear()
