"""Whole backups on the emulated tape: backup → spanning volumes → restore equals (cmp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from volpack import backup, restore, verify
from volpack.errors import MediumError
from volpack.media.tape import emulator as te
from volpack.media.tape import tape_url

MiB = 1 << 20


def _sparse_image(path: str) -> None:
    """Data at the start, in the middle and at the end; a size that is not a block multiple."""
    with open(path, "wb") as f:
        f.truncate(48 * MiB + 1000)
        for offset in (0, 5 * MiB, 17 * MiB + 4096, 30 * MiB):
            f.seek(offset)
            f.write(os.urandom(2 * MiB))
        f.seek(48 * MiB + 1000 - 700)
        f.write(os.urandom(700))


@pytest.fixture
def tapes(tmp_path):
    carts = [
        te.create_cartridge(str(tmp_path / f"c{i}"), capacity=5 * MiB, early_warning=MiB)
        for i in range(6)
    ]
    drive = str(tmp_path / "drive")
    te.load(drive, carts[0])
    nxt = f"{sys.executable} -m volpack.media.tape next {drive} " + " ".join(carts)
    return drive, carts, tape_url(f"tape+emu:{drive}", next_command=nxt)


def test_backup_spans_tape_volumes_and_restores_byte_identical(tmp_path, tapes):
    drive, carts, url = tapes
    image, restored = str(tmp_path / "img"), str(tmp_path / "restored")
    _sparse_image(image)
    result = backup(image, url, compress="none")
    used = [c for c in carts if te.cartridge_files(c)]
    assert len(used) >= 3, "the archive should span at least three cartridges"
    te.load(drive, carts[0])
    restored_result = restore(url, restored)
    assert restored_result.archive_uuid == result.archive_uuid
    assert subprocess.run(["cmp", image, restored]).returncode == 0
    te.load(drive, carts[0])
    assert verify(url).digest == result.digest


def test_restore_refuses_a_volume_out_of_order_before_finishing(tmp_path, tapes):
    drive, carts, url = tapes
    image = str(tmp_path / "img")
    _sparse_image(image)
    backup(image, url, compress="none")
    te.load(drive, carts[0])
    swapped = f"{sys.executable} -m volpack.media.tape next {drive} {carts[0]} {carts[2]}"
    with pytest.raises(MediumError, match="out of order: this is volume 3 .* load volume 2 first"):
        restore(tape_url(f"tape+emu:{drive}", next_command=swapped), str(tmp_path / "restored"))


def test_cli_backup_and_restore_through_a_tape_url(tmp_path, tapes):
    drive, carts, url = tapes
    image, restored = str(tmp_path / "img"), str(tmp_path / "restored")
    _sparse_image(image)
    run = [sys.executable, "-m", "volpack"]
    subprocess.run([*run, "backup", image, url], check=True, capture_output=True)
    te.load(drive, carts[0])
    subprocess.run([*run, "restore", url, restored], check=True, capture_output=True)
    assert subprocess.run(["cmp", image, restored]).returncode == 0


def test_cli_restore_with_a_tape_read_error_exits_with_the_medium_code(tmp_path, tapes):
    drive, carts, url = tapes
    image, restored = str(tmp_path / "img"), str(tmp_path / "restored")
    _sparse_image(image)
    backup(image, url, compress="none")
    te.inject_read_error(carts[1], 0, 3)  # inside volume 2
    te.load(drive, carts[0])
    done = subprocess.run(
        [sys.executable, "-m", "volpack", "restore", url, restored], capture_output=True, text=True
    )
    assert done.returncode == 7, done.stderr
    assert "EIO" in done.stderr and "not the end of the tape" in done.stderr


def test_archives_appended_to_a_tape_are_catalogued_by_tape_file_and_restored_by_id(tmp_path):
    cart = te.create_cartridge(str(tmp_path / "big"), capacity=64 * MiB)
    drive = str(tmp_path / "drive")
    te.load(drive, cart)
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    _sparse_image(first)
    with open(second, "wb") as f:
        f.truncate(3 * MiB)
        f.write(os.urandom(MiB))
    env = {**os.environ, "VOLPACK_CATALOG": str(tmp_path / "catalog.sqlite")}
    run = [sys.executable, "-m", "volpack"]
    ids = []
    for image in (first, second):
        done = subprocess.run(
            [*run, "backup", image, f"tape+emu:{drive}", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        ids.append(json.loads(done.stdout)["archive_uuid"])
    listed = subprocess.run([*run, "list", "--json"], env=env, capture_output=True, text=True)
    rows = {r["uuid"]: r for r in json.loads(listed.stdout)}
    # Appending is not writing over: both stay live, each at its own tape file.
    assert [rows[i]["urls"] for i in ids] == [[f"tape+emu:{drive}#1"], [f"tape+emu:{drive}#2"]]
    assert not any(rows[i]["is_superseded"] for i in ids)
    restored = str(tmp_path / "restored")
    done = subprocess.run([*run, "restore", ids[0], restored], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["cmp", first, restored]).returncode == 0
