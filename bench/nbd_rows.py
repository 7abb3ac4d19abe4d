"""Issue 6 rows: read an archive over NBD without restoring it, against qemu-nbd on a qcow2.
Issue 13 rows (volpack's NBD client: backup from, restore into, a bitmap incremental over
`qemu-nbd`) are in bench/nbd_live.py.

`nbdcopy` copies the whole export to a file (then `sync FILE`) from `volpack serve` (uncompressed
and zstd archives of the ext4 image) and from `qemu-nbd --read-only` serving the qcow2 made by the
peer backup; a random 4 KiB read hits a frame no earlier read touched (cold), timed with libnbd.
Servers start untimed; their peak RSS (VmHWM) is reported with the row.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import measure
import nbd_live
import numpy as np
from nbd_server import NbdServer

# Timed in the system Python, which has the libnbd binding (python3-libnbd); prints one latency
# in seconds per offset read from stdin.
_READER = """
import sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for line in sys.stdin:
    t = time.perf_counter()
    h.pread(4096, int(line))
    print(time.perf_counter() - t)
h.shutdown()
"""


def _serve_help_ok() -> bool:
    res = subprocess.run([sys.executable, "-m", "volpack", "serve", "--help"], capture_output=True)
    return res.returncode == 0


def _cold_offsets(archive: Path, count: int, seed: int) -> list[int]:
    """Volume offsets of 4 KiB reads, each in a different frame of the dense volume."""
    from volpack import open_archive

    with open_archive(str(archive)) as a:
        runs = a.used_bytes()
        starts = np.asarray(runs.starts, dtype=np.int64)
        ends = np.asarray(runs.ends, dtype=np.int64)
        frame = a.frame_size
    lengths = ends - starts
    dense_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    frames = int(lengths.sum() // frame)
    rng = np.random.default_rng(seed)
    picked = rng.choice(frames, size=min(count, frames), replace=False)
    out = []
    for f in picked:
        dense = int(f) * frame + int(rng.integers(0, frame // 4096)) * 4096
        i = int(np.searchsorted(dense_starts, dense, side="right")) - 1
        off = int(starts[i] + (dense - dense_starts[i]))
        if off + 4096 <= ends[i]:
            out.append(off)
    return out


def _copy_row(img, name: str, server: NbdServer, out: Path, repeat: int) -> measure.Row:
    row = measure.Row(img.name, name, "serve", name.startswith("nbdcopy ← qemu"))
    dst = out / "nbd-copy.img"
    rss = 0
    for _ in range(repeat):
        measure.remove(dst)
        os.sync()
        t = measure.run_timed([["nbdcopy", server.uri, str(dst)], ["sync", str(dst)]])
        if not t.ok:
            row.note = f"failed: {t.error}"
            measure.remove(dst)
            return row
        row.walls.append(round(t.wall, 3))
        rss = max(rss, t.rss_kib)
    row.wall = statistics.median(row.walls)
    row.size, row.apparent = measure.disk_usage(dst)
    row.rss_mib = round(max(rss / 1024, server.hwm_mib()), 1)
    row.note = f"server peak RSS {server.hwm_mib():.0f} MiB"
    measure.remove(dst)
    return row


def _latency_row(img, name: str, server: NbdServer, offsets: list[int]) -> measure.Row:
    row = measure.Row(img.name, name, "probe", False)
    res = subprocess.run(
        ["/usr/bin/python3", "-c", _READER, server.uri],
        capture_output=True,
        text=True,
        input="".join(f"{o}\n" for o in offsets),
    )
    if res.returncode != 0:
        row.note = f"failed: {res.stderr.strip().splitlines()[-1:]}"
        return row
    lat = [float(x) for x in res.stdout.split()]
    row.wall = statistics.median(lat)
    row.walls = [round(x, 5) for x in lat]
    row.rss_mib = round(server.hwm_mib(), 1)
    row.note = f"{len(lat)} reads, p90 {np.percentile(lat, 90) * 1000:.2f} ms"
    return row


def rows(img, out: Path, repeat: int) -> list[measure.Row]:
    if img.name != "ext4":
        return []
    if not _serve_help_ok():
        return [
            measure.Row(
                img.name, "volpack serve", "serve", False, note="skipped: no `volpack serve` verb"
            )
        ]
    result = []
    sock = out / "nbd.sock"
    if shutil.which("qemu-nbd") and (out / "q.qcow2").exists():
        uri = f"nbd+unix:///disk?socket={sock}"
        argv = [
            "qemu-nbd",
            "--read-only",
            "-t",
            "--socket",
            str(sock),
            "-f",
            "qcow2",
            "-x",
            "disk",
            str(out / "q.qcow2"),
        ]
        srv = NbdServer(argv, sock, uri)
        try:
            result.append(
                _copy_row(img, "nbdcopy ← qemu-nbd --read-only (qcow2)", srv, out, repeat)
            )
        finally:
            srv.stop()
    for tag, archive in (("none", out / "vp-none.vpk"), ("zstd", out / "vp-zstd.vpk")):
        name = f"nbdcopy ← volpack serve ({tag})"
        if not archive.exists():
            result.append(
                measure.Row(img.name, name, "serve", False, note=f"skipped: {archive.name} missing")
            )
            continue
        uri = f"nbd+unix:///{archive.stem}?socket={sock}"
        argv = [sys.executable, "-m", "volpack", "serve", str(archive), "--socket", str(sock), "-q"]
        try:
            # A fresh server for the latency probe, so that every frame it touches is cold.
            srv = NbdServer(argv, sock, uri)
            try:
                offsets = _cold_offsets(archive, 200, seed=11)
                result.append(
                    _latency_row(img, f"random 4 KiB read, cold frame ({tag})", srv, offsets)
                )
                result.append(_copy_row(img, name, srv, out, repeat))
            finally:
                srv.stop()
        except RuntimeError as exc:
            result.append(measure.Row(img.name, name, "serve", False, note=f"failed: {exc}"))
    if shutil.which("qemu-nbd"):
        result += nbd_live.rows(img, out, repeat)
    return result
