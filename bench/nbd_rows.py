"""Issue 6 rows: read an archive over NBD without restoring it, against qemu-nbd on a qcow2.
Issue 13 rows: back up the ext4 image served by `qemu-nbd -r` (volpack's NBD client) against
`nbdcopy` from the same export to a file (both synced to disk).

`nbdcopy` copies the whole export to a file (then `sync FILE`) from `volpack serve` (uncompressed
and zstd archives of the ext4 image) and from `qemu-nbd --read-only` serving the qcow2 made by the
peer backup; a random 4 KiB read hits a frame no earlier read touched (cold), timed with libnbd.
Servers start untimed; their peak RSS (VmHWM) is reported with the row.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import measure
import numpy as np

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


class _Server:
    """A background NBD server on a Unix socket, stopped by its pid."""

    def __init__(self, argv: list[str], sock: Path, uri: str) -> None:
        sock.unlink(missing_ok=True)
        self.uri = uri
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"{argv[0]} exited {self.proc.returncode}: {err.strip()[-200:]}")
            if (
                sock.exists()
                and subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode == 0
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server on {sock} did not answer within 20 s")

    def hwm_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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


def _copy_row(img, name: str, server: _Server, out: Path, repeat: int) -> measure.Row:
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


def _latency_row(img, name: str, server: _Server, offsets: list[int]) -> measure.Row:
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
        srv = _Server(argv, sock, uri)
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
            srv = _Server(argv, sock, uri)
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
        result += _source_rows(img, out, repeat)
    return result


def _source_rows(img, out: Path, repeat: int) -> list[measure.Row]:
    """volpack backup nbd+unix://… against nbdcopy from the same read-only qemu-nbd export."""
    sock = out / "nbd-src.sock"
    uri = f"nbd+unix:///?socket={sock}"
    argv = ["qemu-nbd", "-r", "-t", "-e", "4", "-k", str(sock), "-f", "raw", str(img.path)]
    copy, archive = out / "nbd-src-copy.img", out / "nbd-src.vpk"
    runs = {
        "nbdcopy ← qemu-nbd -r (raw)": ([["nbdcopy", uri, str(copy)], ["sync", str(copy)]], copy),
        "volpack backup ← qemu-nbd -r (raw)": (
            [[sys.executable, "-m", "volpack", "backup", uri, str(archive), "--compress", "none"]],
            archive,
        ),
    }
    try:
        srv = _Server(argv, sock, uri)
    except RuntimeError as exc:
        return [
            measure.Row(img.name, "volpack backup ← qemu-nbd", "nbd-source", False, note=str(exc))
        ]
    result = []
    try:
        for name, (cmds, dst) in runs.items():
            row = measure.Row(img.name, name, "nbd-source", name.startswith("nbdcopy"))
            for _ in range(repeat):
                measure.remove(dst)
                os.sync()
                t = measure.run_timed(cmds)
                if not t.ok:
                    row.note = f"failed: {t.error}"
                    break
                row.walls.append(round(t.wall, 3))
                row.rss_mib = round(max(row.rss_mib or 0, t.rss_kib / 1024), 1)
            if row.walls:
                row.wall = statistics.median(row.walls)
                row.size, row.apparent = measure.disk_usage(dst)
            measure.remove(dst)
            result.append(row)
    finally:
        srv.stop()
    return result
