"""Scale scenario: four volumes backed up concurrently (separate ``volpack backup`` processes)
into one bucket of a real SeaweedFS S3 server and one catalog, three rounds; then listed, pruned
with a policy, restored (byte-compared), and the catalog rebuilt from the bucket alone."""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

VOLUMES = 4
ROUNDS = 3


def volpack(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "volpack", *argv], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"volpack {' '.join(argv)} exited {proc.returncode}: {proc.stderr}")
    return proc


def write_round(path: str, volume: int, rnd: int) -> None:
    """Round 0 creates a 64 MiB sparse volume with 8 MiB of data; later rounds rewrite 1 MiB."""
    rng = random.Random(volume * 100 + rnd)
    with open(path, "r+b" if rnd else "wb") as f:
        if rnd == 0:
            f.truncate(64 << 20)
            for i in range(8):
                f.seek(i * (8 << 20))
                f.write(rng.randbytes(1 << 20))
        else:
            f.seek(rng.randrange(0, 63) << 20)
            f.write(rng.randbytes(1 << 20))


@pytest.mark.slow
@pytest.mark.s3
def test_four_volumes_backed_up_concurrently_listed_pruned_restored(s3_bucket, tmp_path):
    catalog = str(tmp_path / "catalog.sqlite")
    vols = [str(tmp_path / f"vol{v}.img") for v in range(VOLUMES)]
    snapshots: dict[tuple[int, int], str] = {}  # (volume, round) → copy of the volume then
    uuids: dict[tuple[int, int], str] = {}
    for rnd in range(ROUNDS):
        for v, path in enumerate(vols):
            write_round(path, v, rnd)
            snapshots[v, rnd] = str(tmp_path / f"vol{v}-r{rnd}.copy")
            shutil.copyfile(path, snapshots[v, rnd])
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "volpack", "backup", "--allow-mounted", "--json",
                 "--catalog", catalog, path, f"s3://{s3_bucket}/fleet/vol{v}/r{rnd}.vpk"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for v, path in enumerate(vols)
        ]  # fmt: skip
        for v, p in enumerate(procs):
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            uuids[v, rnd] = json.loads(out)["archive_uuid"]

    listed = json.loads(volpack("list", "--json", "--catalog", catalog).stdout)
    assert len(listed) == VOLUMES * ROUNDS
    assert {e["source_path"] for e in listed} == set(vols)
    assert {e["uuid"] for e in listed} == set(uuids.values())

    report = json.loads(volpack("prune", "--keep-last", "2", "--json", "--catalog", catalog).stdout)
    assert set(report["deleted"]) == {uuids[v, 0] for v in range(VOLUMES)}
    from volpack import media

    left = {u for u, _, _ in media.list_archives(f"s3://{s3_bucket}/fleet/")}
    assert left == {
        f"s3://{s3_bucket}/fleet/vol{v}/r{r}.vpk" for v in range(VOLUMES) for r in (1, 2)
    }

    for v, path in enumerate(vols):
        newest = str(tmp_path / f"restored{v}-newest.img")
        volpack("restore", "--catalog", catalog, "--volume", path, newest)
        assert filecmp.cmp(snapshots[v, 2], newest, shallow=False)
        middle = str(tmp_path / f"restored{v}-r1.img")
        volpack("restore", "--catalog", catalog, uuids[v, 1][:12], middle)
        assert filecmp.cmp(snapshots[v, 1], middle, shallow=False)
        os.unlink(newest)
        os.unlink(middle)
    gone = volpack("restore", "--catalog", catalog, uuids[0, 0], str(tmp_path / "x.img"),
                   check=False)  # fmt: skip
    assert gone.returncode == 9 and "no archive with id" in gone.stderr

    rebuilt = str(tmp_path / "rebuilt.sqlite")
    volpack("catalog", "rebuild", "--catalog", rebuilt, f"s3://{s3_bucket}/fleet/")
    again = json.loads(volpack("list", "--json", "--catalog", rebuilt).stdout)
    assert {e["uuid"] for e in again} == {uuids[v, r] for v in range(VOLUMES) for r in (1, 2)}
