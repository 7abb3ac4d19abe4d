"""Issue 13 rows (ext4 only): volpack's NBD client against `nbdcopy` on the same `qemu-nbd` export.

- backup: `volpack backup nbd+unix://… --compress none` from `qemu-nbd -r -t -e 4` of the raw image,
  against `nbdcopy` from the same export to a file + `sync FILE` (kind `nbd-source`);
- restore: `volpack restore … nbd+unix://… --force` of that backup into `qemu-nbd -t -e 4 -f raw`
  of a fresh sparse file of the image's size, against `nbdcopy --flush IMAGE nbd+unix://…` into
  the same kind of fresh export (kind `nbd-target`). Both end with one NBD_CMD_FLUSH, which
  qemu-nbd turns into an fdatasync of the file (volpack always sends it; `--flush` makes nbdcopy
  send it), and both zero what they do not write (volpack's WRITE_ZEROES for unused ranges,
  nbdcopy's zero requests for the image's holes: neither is told the export starts zeroed);
- an incremental with `--bitmap` from `qemu-nbd -r -B daily` of a qcow2 copy whose persistent
  bitmap saw incr_rows' first generation of changes: the bytes the server read (its `rchar`)
  against the dirty bytes plus the sample check and detection's metadata (kind `nbd-incr`).

Runs of volpack and nbdcopy alternate (volpack, nbdcopy, volpack, …) so that a machine whose
load changes treats both alike. Servers start untimed, outside the clock.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import incr_rows
import measure
from nbd_server import NbdServer

VOLPACK = (sys.executable, "-m", "volpack")
BITMAP = "daily"
BACKUP, BACKUP_PEER = "volpack backup ← qemu-nbd -r (raw)", "nbdcopy ← qemu-nbd -r (raw)"
RESTORE = "volpack restore → qemu-nbd (raw, fresh sparse file)"
RESTORE_PEER = "nbdcopy --flush IMAGE → qemu-nbd (raw, fresh sparse file)"
INCR = "volpack backup --base --bitmap ← qemu-nbd -r -B (qcow2)"
INCR_READ = "NBD incremental: bytes the server read"


def _uri(sock: Path) -> str:
    return f"nbd+unix:///?socket={sock}"


def _qemu_nbd(
    image: Path, sock: Path, fmt: str, *, writable: bool = False, bitmap: str = ""
) -> NbdServer:
    argv = ["qemu-nbd", "-t", "-e", "4", "-k", str(sock), "-f", fmt]
    if not writable:
        argv.insert(1, "-r")
    if bitmap:
        argv += ["-B", bitmap]
    return NbdServer([*argv, str(image)], sock, _uri(sock))


def _finish(row: measure.Row, output: Path | None) -> None:
    if row.walls:
        row.wall = statistics.median(row.walls)
        if output is not None and output.exists():
            row.size, row.apparent = measure.disk_usage(output)


def _alternate(
    rows: list[measure.Row],
    runs: list[tuple[list[list[str]], Path, Path | None]],
    repeat: int,
    before=None,
    after=None,
) -> None:
    """Time each row's commands in turn, ``repeat`` rounds; ``runs[i]`` = (commands, output to
    remove before each run, input to warm). ``before(i)``/``after(i)`` run untimed around each."""
    failed: set[int] = set()
    for _ in range(repeat):
        for i, (row, (cmds, output, warm)) in enumerate(zip(rows, runs, strict=True)):
            if i in failed:
                continue
            measure.remove(output)
            if before is not None:
                before(i)
            os.sync()
            if warm is not None:
                measure.warm(warm)
            t = measure.run_timed(cmds)
            if after is not None:
                after(i)
            if not t.ok:
                row.note = f"failed: {t.error}"
                failed.add(i)
                continue
            row.walls.append(round(t.wall, 3))
            row.rss_mib = round(max(row.rss_mib or 0, t.rss_kib / 1024), 1)


def _backup_rows(img, out: Path, repeat: int, archive: Path) -> list[measure.Row]:
    sock = out / "nbd-src.sock"
    copy = out / "nbd-src-copy.img"
    uri = _uri(sock)
    vp = [[*VOLPACK, "backup", uri, str(archive), "--compress", "none", "--no-catalog", "-q"]]
    peer = [["nbdcopy", uri, str(copy)], ["sync", str(copy)]]
    rows = [
        measure.Row(img.name, BACKUP, "nbd-source", False),
        measure.Row(img.name, BACKUP_PEER, "nbd-source", True),
    ]
    try:
        srv = _qemu_nbd(img.path, sock, "raw")
    except RuntimeError as exc:
        for r in rows:
            r.note = f"failed: {exc}"
        return rows
    try:
        _alternate(rows, [(vp, archive, None), (peer, copy, None)], repeat)
    finally:
        srv.stop()
    _finish(rows[0], archive)
    _finish(rows[1], copy)
    measure.remove(copy)  # the archive stays: the restore rows read it
    return rows


def _restore_rows(img, out: Path, repeat: int, archive: Path) -> list[measure.Row]:
    sock = out / "nbd-dst.sock"
    fresh = out / "nbd-dst.img"
    uri = _uri(sock)
    rows = [
        measure.Row(img.name, RESTORE, "nbd-target", False),
        measure.Row(img.name, RESTORE_PEER, "nbd-target", True),
    ]
    if not archive.exists():
        for r in rows:
            r.note = "skipped: the backup from NBD failed, so there is no archive to restore"
        return rows
    vp = [[*VOLPACK, "restore", str(archive), uri, "--force", "-q"]]
    peer = [["nbdcopy", "--flush", str(img.path), uri]]
    server: list[NbdServer] = []
    written: list[int] = [0, 0]

    def start(i: int) -> None:  # a fresh sparse file of the image's size, a fresh server
        measure.remove(fresh)
        with open(fresh, "wb") as f:
            f.truncate(img.path.stat().st_size)
        server.append(_qemu_nbd(fresh, sock, "raw", writable=True))

    def stop(i: int) -> None:
        server.pop().stop()
        written[i] = measure.disk_usage(fresh)[0]

    try:
        _alternate(
            rows,
            [(vp, fresh, archive), (peer, fresh, img.path)],
            repeat,
            before=start,
            after=stop,
        )
    except RuntimeError as exc:  # a server that did not start
        for r in rows:
            r.note = r.note or f"failed: {exc}"
    finally:
        while server:
            server.pop().stop()
        measure.remove(fresh)
    for r, n in zip(rows, written, strict=True):
        _finish(r, None)
        r.size = n or None
    return rows


def _dirty_bytes(uri: str) -> int:
    """Bytes the export's bitmap calls dirty, as nbdinfo reads them (the oracle)."""
    res = subprocess.run(
        ["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{BITMAP}", uri],
        capture_output=True,
        text=True,
        check=True,
    )
    return sum(e["length"] for e in json.loads(res.stdout) if e["type"] & 1)


def _incr_rows(img, out: Path, repeat: int) -> list[measure.Row]:
    """A full from the qcow2 export, a bitmap, changes through qemu-io, then the incremental with
    --bitmap from `qemu-nbd -B`: its time, and the bytes the server read during it."""
    from volpack import open_archive

    q, full, inc = out / "nbd-incr.qcow2", out / "nbd-full.vpk", out / "nbd-inc.vpk"
    sock = out / "nbd-incr.sock"
    uri = _uri(sock)
    row = measure.Row(img.name, INCR, "nbd-incr", False)
    reads = measure.Row(img.name, INCR_READ, "size", False)
    try:
        incr_rows._run(["qemu-img", "convert", "-O", "qcow2", str(img.path), str(q)])
        srv = _qemu_nbd(q, sock, "qcow2")
        try:
            incr_rows._run(
                [*VOLPACK, "backup", uri, str(full), "--compress", "none", "--no-catalog", "-q"]
            )
        finally:
            srv.stop()
        incr_rows._run(["qemu-img", "bitmap", "--add", "--enable", str(q), BITMAP])
        cmds = incr_rows._changes(img.path.stat().st_size, incr_rows._used_runs(img.path), seed=1)
        incr_rows._qemu_io(q, "qcow2", cmds)
        srv = _qemu_nbd(q, sock, "qcow2", bitmap=BITMAP)
        try:
            dirty = _dirty_bytes(uri)
            # What detection alone reads (file system metadata): `volpack map` of the same export.
            at = srv.read_bytes()
            incr_rows._run([*VOLPACK, "map", uri, "--json"])
            detect = srv.read_bytes() - at
            argv = [*VOLPACK, "backup", uri, str(inc), "--base", str(full), "--bitmap", BITMAP]
            argv += ["--compress", "none", "--no-catalog", "-q"]
            served: list[int] = []
            for _ in range(repeat):
                measure.remove(inc)
                os.sync()
                at = srv.read_bytes()
                t = measure.run_timed([argv])
                served.append(srv.read_bytes() - at)
                if not t.ok:
                    row.note = f"failed: {t.error}"
                    return [row, reads]
                row.walls.append(round(t.wall, 3))
                row.rss_mib = round(max(row.rss_mib or 0, t.rss_kib / 1024), 1)
        finally:
            srv.stop()
        _finish(row, inc)
        with open_archive(str(inc)) as a:
            changes = a.desc.changes
            method = changes.method if changes else "?"
            sampled = changes.read_bytes if changes else 0
            data = a.used_bytes().total()
        row.note = f"changes found by {method}"
        got = max(served)
        hbs = a.header.hash_block_size
        count = changes.sampled if changes else 0
        # The allowance: the dirty bytes, the sampled hash blocks (at most a hash block
        # each) and the file-system metadata detection reads.
        allowed = dirty + count * hbs + detect
        accounted = data + sampled + detect
        reads.walls = [round(got / allowed, 4)]
        reads.size = reads.apparent = got
        reads.note = (
            f"server read {got} B in the incremental (max of {len(served)} runs) = "
            f"{got / allowed:.2f}x of the dirty bytes + sample + metadata ({allowed} B: the "
            f"bitmap marks {dirty} B dirty (nbdinfo), {count} sampled hash blocks of {hbs} B, "
            f"{detect} B read by `volpack map` of the export); every byte read is accounted "
            f"for ({got / accounted:.3f}x of {accounted} B: {data} B of data in the archive + "
            f"{sampled} B read to find and check the changes + the metadata); {method}"
        )
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        row.note = row.note or f"failed: {exc}"
    finally:
        for p in (q, full, inc):
            measure.remove(p)
    return [row, reads]


def rows(img, out: Path, repeat: int) -> list[measure.Row]:
    if img.name != "ext4":
        return []
    archive = out / "nbd-src.vpk"
    try:
        result = _backup_rows(img, out, repeat, archive)
        result += _restore_rows(img, out, repeat, archive)
    finally:
        measure.remove(archive)
    if shutil.which("qemu-io") and shutil.which("qemu-img"):
        result += _incr_rows(img, out, repeat)
    return result


def main() -> int:
    import run
    import targets

    return run.rows_only(
        "issue 13 rows only: backup from, restore into, incremental over qemu-nbd",
        rows,
        targets._nbd_live_checks,
        ("ext4",),
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
