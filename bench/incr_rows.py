"""Issue 12 rows: incrementals on the ext4 image after 1 % of its blocks are rewritten and 0.1 %
trimmed, in the same run: hash compare and a qcow2 bitmap hint against a full backup, the
incremental's size against the changed bytes plus tables, restore and merge of a 10-link chain
against restoring an equal full, and `borg create` / `restic backup` second runs where installed.

Changes are made with `qemu-io` (writes and `discard` on the raw copy and on a qcow2 copy with an
enabled persistent bitmap), the same runs on both, from fixed seeds. Everything is
`--compress none`, so the rows measure finding and moving changes, not zstd.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import measure
import numpy as np

VOLPACK = (sys.executable, "-m", "volpack")
BLOCK = 4096
REWRITE, TRIM = 0.01, 0.001  # shares of the image's blocks per generation
LINKS = 10  # archives in the chain: a full and nine incrementals


def _changes(size: int, used: list[tuple[int, int]], seed: int) -> list[str]:
    """qemu-io commands: writes of 4 KiB–1 MiB runs inside used runs until 1 % of the image's
    blocks, then discards of 4–64 KiB runs until 0.1 % (byte offsets, 4 KiB aligned)."""
    rng = np.random.default_rng(seed)
    starts = np.array([s for s, _ in used], np.int64)
    lengths = np.array([e - s for s, e in used], np.int64)
    weights = lengths / lengths.sum()
    cmds = []
    for share, lo, hi, verb in ((REWRITE, 1, 256, "write"), (TRIM, 1, 16, "discard")):
        want = int(size // BLOCK * share)
        while want > 0:
            run = int(rng.choice(len(starts), p=weights))
            n = min(want, int(rng.integers(lo, hi + 1)), int(lengths[run] // BLOCK))
            at = int(starts[run] // BLOCK + rng.integers(0, lengths[run] // BLOCK - n + 1))
            pattern = f"-P {int(rng.integers(1, 256))} " if verb == "write" else ""
            cmds.append(f"{verb} {pattern}{at * BLOCK} {n * BLOCK}")
            want -= n
    return cmds


def _qemu_io(path: Path, fmt: str, cmds: list[str]) -> None:
    argv = ["qemu-io", "-f", fmt, "-d", "unmap"]
    for c in cmds:
        argv += ["-c", c]
    subprocess.run([*argv, str(path)], check=True, capture_output=True)


def _used_runs(path: Path) -> list[tuple[int, int]]:
    from volpack import map_volume

    vmap = map_volume(str(path))
    bs = vmap.detection.block_size
    return [(s * bs, e * bs) for s, e in vmap.detection.used]


def _vp(*args: str) -> list[str]:
    return [*VOLPACK, *args]


def _backup(src: Path, out: Path, *extra: str) -> list[str]:
    return _vp("backup", str(src), str(out), "--compress", "none", "--no-catalog", "-q", *extra)


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}…: {res.stderr.strip()[-300:]}")


def _size_row(img, inc: Path, used: list[tuple[int, int]], cmds: list[str]) -> measure.Row:
    """The incremental's size against the used bytes of the hash blocks it must cover plus its
    tables (block hash table, ATAB, ZTAB)."""
    from volpack import open_archive

    row = measure.Row(img.name, "incremental archive size", "size", False)
    with open_archive(str(inc)) as a:
        table = a.hash_table
        entries = len(table.entries) if table is not None else 0
        tables = entries * 24 + 16 * (len(a.used_bytes()) + len(a.zeros))
        data = a.used_bytes().total()
        changed = _changed_bytes(used, cmds, a.header.hash_block_size)
    row.size = row.apparent = inc.stat().st_size
    written = sum(int(c.split()[-1]) for c in cmds)
    row.note = (
        f"data {data} B in changed hash blocks (expected {changed} B), tables {tables} B "
        f"({entries} hash entries); ratio {row.size / (changed + tables):.3f}; the changes "
        f"themselves: {written} B written or trimmed, {row.size / written:.1f}x that"
    )
    row.walls = [row.size / (changed + tables)]
    return row


def _changed_bytes(used: list[tuple[int, int]], cmds: list[str], hbs: int) -> int:
    """Used bytes (after the changes) of the hash blocks the changes touch."""
    from volpack.extents import Extents

    runs = []
    for c in cmds:
        *_, off, n = c.split()
        runs.append((int(off), int(off) + int(n)))
    touched = Extents.from_pairs(runs).scale_out(hbs).scale_in(hbs)
    return Extents.from_pairs(used).intersect(touched).total()


def _borg(img, src: Path, out: Path, repeat: int) -> measure.Row:
    name = "borg create --chunker-params fixed,4194304 (second run)"
    if not shutil.which("borg"):
        return measure.Row(img.name, name, "incr", True, note="skipped: borg not installed")
    repo = out / "borg-repo"
    env = {
        **os.environ,
        "BORG_BASE_DIR": str(out / "borg-home"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
    }
    create = ["borg", "create", "--sparse", "--chunker-params", "fixed,4194304"]
    create += ["--compression", "none", "--files-cache", "ctime,size,inode"]
    _run(["borg", "init", "-e", "none", str(repo)], env)
    _run([*create, f"{repo}::first", str(src.with_suffix(".base"))], env)
    row = measure.Row(img.name, name, "incr", True)
    rss = 0
    for i in range(repeat):
        os.sync()
        t = measure.run_timed(
            [[*create, f"{repo}::second{i}", str(src)], ["sync", "-f", str(repo)]], env=env
        )
        if not t.ok:
            row.note = f"failed: {t.error}"
            return row
        row.walls.append(round(t.wall, 3))
        rss = max(rss, t.rss_kib)
        _run(["borg", "delete", f"{repo}::second{i}"], env)
    row.wall = statistics.median(row.walls)
    row.rss_mib = round(rss / 1024, 1)
    return row


def _restic(img, src: Path, out: Path, repeat: int) -> measure.Row:
    name = "restic backup (second run)"
    if not shutil.which("restic"):
        return measure.Row(img.name, name, "incr", True, note="skipped: restic not installed")
    repo = out / "restic-repo"
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "bench",
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_CACHE_DIR": str(out / "restic-cache"),
    }
    _run(["restic", "init", "-q"], env)
    # restic names a file by path: the base state at the same path as the changed one.
    stage = out / "restic-src" / "volume.img"
    stage.parent.mkdir(exist_ok=True)
    _run(["cp", "--sparse=always", str(src.with_suffix(".base")), str(stage)])
    backup = ["restic", "backup", "-q", "--compression", "off", str(stage)]
    _run(backup, env)
    _run(["cp", "--sparse=always", str(src), str(stage)])
    row = measure.Row(img.name, name, "incr", True)
    rss = 0
    for _ in range(repeat):
        os.sync()
        t = measure.run_timed([backup, ["sync", "-f", str(repo)]], env=env)
        if not t.ok:
            row.note = f"failed: {t.error}"
            return row
        row.walls.append(round(t.wall, 3))
        rss = max(rss, t.rss_kib)
        # As for borg: drop the new snapshot and its data, so each run stores the changes again.
        res = subprocess.run(
            ["restic", "snapshots", "--json"], capture_output=True, text=True, env=env, check=True
        )
        newest = max(json.loads(res.stdout), key=lambda snap: snap["time"])["id"]
        _run(["restic", "forget", "-q", "--prune", newest], env)
        os.utime(stage)  # a changed mtime: the next run reads the file again
    row.wall = statistics.median(row.walls)
    row.rss_mib = round(rss / 1024, 1)
    return row


def rows(img, out: Path, repeat: int) -> list[measure.Row]:
    if img.name != "ext4":
        return []
    if not shutil.which("qemu-io"):
        return [measure.Row(img.name, "incrementals", "incr", False, note="skipped: no qemu-io")]
    work = out / "incr"
    measure.remove(work)
    work.mkdir(parents=True)
    try:
        return _rows(img, work, repeat)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        return [measure.Row(img.name, "incrementals", "incr", False, note=f"failed: {exc}")]
    finally:
        measure.remove(work)


def _rows(img, work: Path, repeat: int) -> list[measure.Row]:
    result = []
    src = work / "volume.img"
    _run(["cp", "--sparse=always", str(img.path), str(src)])
    _run(["cp", "--sparse=always", str(img.path), str(src.with_suffix(".base"))])
    used = _used_runs(src)
    size = src.stat().st_size
    gens = [_changes(size, used, seed) for seed in range(1, LINKS)]
    full0 = work / "full0.vpk"
    _run(_backup(src, full0))

    # Hash compare: the first incremental against a full backup of the same changed volume.
    _qemu_io(src, "raw", gens[0])
    inc = [work / "inc1.vpk"]
    full1 = work / "full1.vpk"
    # Each comparison alternates its runs (incremental, full, full, incremental, …): writes on
    # this kind of machine vary run to run more than the targets' margins.
    result += measure.alternating(
        img,
        ("volpack backup --base (hash compare)", "volpack backup (full of the same state)"),
        "incr",
        [_backup(src, inc[0], "--base", str(full0)), _backup(src, full1)],
        [inc[0], full1],
        [None, None],
        repeat,
    )
    measure.remove(full1)
    result.append(_size_row(img, inc[0], _used_runs(src), gens[0]))
    result.append(_borg(img, src, work, repeat))
    result.append(_restic(img, src, work, repeat))
    for p in ("borg-repo", "borg-home", "restic-repo", "restic-cache", "restic-src"):
        measure.remove(work / p)
    measure.remove(src.with_suffix(".base"))

    # Bitmap hint: a qcow2 copy of the image, a full, a bitmap, the same changes through qemu.
    q = work / "volume.qcow2"
    _run(["qemu-img", "convert", "-O", "qcow2", str(img.path), str(q)])
    qfull0 = work / "qfull0.vpk"
    _run(_backup(q, qfull0))
    _run(["qemu-img", "bitmap", "--add", "--enable", str(q), "daily"])
    _qemu_io(q, "qcow2", gens[0])
    qinc = work / "qinc1.vpk"
    qfull1 = work / "qfull1.vpk"
    row, qrow = measure.alternating(
        img,
        (
            "volpack backup --base --bitmap (qcow2 hint)",
            "volpack backup of the qcow2 (full of the same state)",
        ),
        "incr",
        [_backup(q, qinc, "--base", str(qfull0), "--bitmap", "daily"), _backup(q, qfull1)],
        [qinc, qfull1],
        [None, None],
        repeat,
    )
    from volpack import open_archive

    if qinc.exists():
        with open_archive(str(qinc)) as a:
            method = a.desc.changes.method if a.desc.changes else "?"
        row.note = f"changes found by {method}"
    result += [row, qrow]
    for p in (q, qfull0, qinc, qfull1):
        measure.remove(p)

    # A 10-link chain: eight more generations, then restore and merge against an equal full.
    for k, cmds in enumerate(gens[1:], start=2):
        _qemu_io(src, "raw", cmds)
        inc.append(work / f"inc{k}.vpk")
        _run(_backup(src, inc[-1], "--base", str(inc[-2])))
    equal = work / "full-equal.vpk"
    _run(_backup(src, equal))
    measure.remove(src)
    target = work / "restored.img"
    merged = work / "merged.vpk"
    for p in [full0, *inc]:
        measure.warm(p)
    result += measure.alternating(
        img,
        (
            "volpack restore of an equal full",
            f"volpack restore of a {LINKS}-link chain",
            f"volpack merge of a {LINKS}-link chain",
        ),
        "chain",
        [
            _vp("restore", str(equal), str(target), "-q"),
            _vp("restore", str(inc[-1]), str(target), "-q"),
            _vp("merge", str(inc[-1]), str(merged), "--compress", "none", "--no-catalog", "-q"),
        ],
        [target, target, merged],
        [equal, None, None],
        repeat,
    )
    measure.remove(target)
    return result


def main() -> int:
    import run
    import targets

    return run.rows_only(
        "issue 12 rows only: incrementals, chains, merge", rows, targets._incr_checks, ("ext4",)
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
