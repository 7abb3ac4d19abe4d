"""Image builders and oracles shared by the filesystem detector tests (plus checks of the helpers).

Images are built with the real tools (mkfs.*, debugfs, mcopy, ntfscp, sfdisk); partclone's domain
map and the filesystems' own checkers are the oracles.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from volpack.detect.base import Region
from volpack.detect.layout import analyse
from volpack.extents import Extents


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt packages are listed in scripts/test.sh)")


def run(
    *cmd: str | os.PathLike[str], ok: tuple[int, ...] = (0,), stdin: bytes | None = None
) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, input=stdin, check=False)
    if proc.returncode not in ok:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc.stdout.decode(errors="replace")


def random_tree(root: Path, seed: int, count: int = 12, max_size: int = 400_000) -> dict[str, str]:
    """Random files (some in a subdirectory); returns relative path → sha256."""
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    sums = {}
    for i in range(count):
        rel = f"sub/g{i}.bin" if i % 3 == 2 else f"f{i}.bin"
        data = rng.randbytes(rng.randint(1, max_size))
        (root / rel).write_bytes(data)
        sums[rel] = hashlib.sha256(data).hexdigest()
    return sums


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sparse_file(path: Path, size: int) -> Path:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def analyse_file(path: Path) -> tuple[list[Region], list[str]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size

        def read_at(offset: int, length: int) -> bytes:
            data = os.pread(fd, length, offset)
            return data + bytes(length - len(data))

        return analyse(read_at, size)
    finally:
        os.close(fd)


def single_fs(path: Path, detector: str | None = None) -> Region:
    """The one filesystem region of a whole-volume image (no warnings allowed)."""
    regions, warnings = analyse_file(path)
    assert warnings == []
    assert regions[0].start == 0 and regions[-1].end == os.path.getsize(path)
    fs = regions[0]
    assert fs.used is not None, regions
    if detector is not None:
        assert fs.detector == detector
    return fs


def partclone_used(tool: str, image: Path, workdir: Path) -> Extents:
    """partclone's domain map of ``image``: the byte ranges it would copy."""
    need(tool)
    out = workdir / "partclone.map"
    out.unlink(missing_ok=True)
    run(tool, "-D", "-s", image, "-o", out, "-L", workdir / "partclone.log")
    pairs = []
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "+" and parts[0].startswith("0x"):
            start = int(parts[0], 16)
            pairs.append((start, start + int(parts[1], 16)))
    return Extents.from_pairs(pairs)


def keep_only(image: Path, used: Extents, out: Path) -> Path:
    """A copy of ``image`` where every byte outside ``used`` is zero (what a restore writes)."""
    size = image.stat().st_size
    sparse_file(out, size)
    with open(image, "rb") as src, open(out, "r+b") as dst:
        for start, end in used:
            pos = start
            while pos < end:
                n = min(end - pos, 8 << 20)
                src.seek(pos)
                dst.seek(pos)
                dst.write(src.read(n))
                pos += n
    return out


def backup_restore(image: Path, workdir: Path, detect: str = "fs") -> tuple[Path, object]:
    """volpack backup → restore through the library; returns (restored image, backup result)."""
    import volpack

    archive = workdir / f"{image.name}.vpk"
    restored = workdir / f"{image.name}.restored"
    archive.unlink(missing_ok=True)
    restored.unlink(missing_ok=True)
    result = volpack.backup(str(image), str(archive), detect=detect)
    volpack.restore(str(archive), str(restored))
    return restored, result


def cli_backup_restore(image: Path, workdir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """``volpack backup --detect fs`` → ``volpack restore`` through the CLI, as a user runs them;
    returns (restored image, the backup's completed process). The restore must succeed."""
    import sys

    archive = workdir / f"{image.name}.cli.vpk"
    restored = workdir / f"{image.name}.cli.restored"
    archive.unlink(missing_ok=True)
    restored.unlink(missing_ok=True)
    volpack = [sys.executable, "-m", "volpack"]
    backup = subprocess.run(
        [*volpack, "backup", "--detect", "fs", "--no-catalog", str(image), str(archive)],
        capture_output=True,
        text=True,
    )
    assert backup.returncode in (0, 1), backup.stderr
    assert "Traceback" not in backup.stderr
    run(*volpack, "restore", archive, restored)
    return restored, backup


def fallback_lines(stderr: str) -> list[str]:
    """The backup's stderr lines that report a detector falling back."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("volpack: warning: ") and "holes and zero scan decide there" in line
    ]


# -- checks of the helpers themselves -------------------------------------------------------


def test_keep_only_zeroes_everything_outside_the_used_runs(tmp_path):
    img = tmp_path / "a.img"
    img.write_bytes(bytes(range(256)) * 64)
    out = keep_only(img, Extents.from_pairs([(10, 20), (4000, 4100)]), tmp_path / "b.img")
    data = out.read_bytes()
    assert len(data) == 256 * 64
    assert data[10:20] == img.read_bytes()[10:20]
    assert data[4000:4100] == img.read_bytes()[4000:4100]
    assert data[:10] == bytes(10) and data[20:4000] == bytes(3980) and data[4100:] == bytes(12284)


def test_an_all_zero_volume_is_one_unknown_region(tmp_path):
    regions, warnings = analyse_file(sparse_file(tmp_path / "z.img", 8 << 20))
    assert [(r.start, r.end, r.detector, r.used) for r in regions] == [
        (0, 8 << 20, "unknown", None)
    ]
    assert warnings == []
