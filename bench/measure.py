"""Timing primitives for the benchmark: run commands, measure wall time and peak RSS, size outputs.

A measured run is a short sequence of argv lists (the tool, then `sync FILE` for peers) executed
one after another; wall time covers all of them and peak RSS is the largest of their ru_maxrss
figures as reported by GNU time. Nothing here knows about volpack or peers; bench/s3_rows.py may
use it too.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_WARM_CHUNK = 8 << 20
TIME = "/usr/bin/time"  # GNU time (Debian package "time")
# Bytes of memory run_timed touches and frees just before it starts the clock (see prefault);
# run.py sets it per image to a little more than the largest output a run writes.
prefault_bytes = 0


@dataclass(frozen=True, slots=True)
class Timing:
    wall: float  # seconds, all commands together
    rss_kib: int  # peak resident set of the largest command (ru_maxrss)
    ok: bool
    error: str  # last stderr line of the first failing command, "" when ok


@dataclass(slots=True)
class Row:
    """One line of a result table; kind decides which peers it is compared with."""

    image: str
    name: str
    kind: str  # "backup", "restore", "serve", "level", "probe"
    peer: bool
    wall: float | None = None
    size: int | None = None  # bytes allocated on disk by the output (du), None if not a file
    apparent: int | None = None  # apparent size of the output
    rss_mib: float | None = None
    walls: list[float] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def run_timed(cmds: list[list[str]], *, env: dict[str, str] | None = None) -> Timing:
    """Run cmds in order (stop at the first failure); wall seconds and peak RSS over all."""
    rss = 0
    prefault(prefault_bytes)
    start = time.perf_counter()
    for argv in cmds:
        with tempfile.NamedTemporaryFile() as err, tempfile.NamedTemporaryFile("r") as usage:
            # GNU time reports its child's ru_maxrss. Measuring our own child with wait4 would
            # not do: a child forked from this (numpy-sized) process carries the parent's
            # resident pages into its high-water mark until it execs.
            wrapped = [TIME, "-q", "-f", "%M", "-o", usage.name, *argv]
            res = subprocess.run(
                wrapped, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
            )
            lines = usage.read().split()
            rss = max(rss, int(lines[-1]) if lines and lines[-1].isdigit() else 0)
            if res.returncode != 0:
                err.seek(0)
                text = err.read().decode(errors="replace").strip().splitlines()
                last = text[-1] if text else ""
                msg = f"{Path(argv[0]).name} exited {res.returncode}: {last}"
                return Timing(time.perf_counter() - start, rss, False, msg[:300])
    return Timing(time.perf_counter() - start, rss, True, "")


def prefault(nbytes: int) -> None:
    """Touch and free nbytes of anonymous memory, so that the next run finds host-backed pages.

    On a KVM guest with free page reporting, memory freed for ~2 s is handed back to the host,
    and the next tool to fill the page cache pays a host fault per page (here 1 GiB of writes:
    3 s instead of 0.3 s). Every run gets the same head start this way.
    """
    if nbytes <= 0:
        return
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        with contextlib.suppress(AttributeError, OSError):
            m.madvise(mmap.MADV_HUGEPAGE)  # fewer, larger faults where THP is available
        np.frombuffer(m, dtype=np.uint8)[::4096] = 1
    finally:
        with contextlib.suppress(BufferError):
            m.close()


def warm(path: Path) -> None:
    """Read a file's data ranges once so that runs start with a warm page cache."""
    paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    buf = bytearray(_WARM_CHUNK)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            end = os.fstat(fd).st_size
            pos = 0
            while pos < end:
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                    hole = os.lseek(fd, pos, os.SEEK_HOLE)
                except OSError:  # ENXIO: no data after pos
                    break
                while pos < hole:
                    n = os.preadv(fd, [buf], pos)
                    if n <= 0:
                        break
                    pos += n
        finally:
            os.close(fd)


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of a file or of every file under a directory."""
    if not path.exists():
        return 0, 0
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    alloc = apparent = 0
    for p in files:
        st = p.stat()
        alloc += st.st_blocks * 512
        apparent += st.st_size
    return alloc, apparent


def remove(path: Path) -> None:
    """Delete an output file or directory tree (outputs only, never inputs)."""
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() and not child.is_symlink() else child.unlink()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


def alternating(
    img, names: tuple[str, ...], kind: str, runs: list[list[str]], outputs, inputs, repeat: int
) -> list[Row]:
    """Time each of ``runs`` (one command per name) ``repeat`` times, interleaved: first in
    order, then reversed, and so on, so that a load change on the shared machine hits every row
    alike. ``outputs`` (None: none) are removed before each run and the last kept; ``inputs``
    (None: none) are read into the page cache before each."""
    rows = [Row(img.name, n, kind, False) for n in names]
    rss = [0] * len(rows)
    failed = [False] * len(rows)
    for rep in range(repeat):
        order = list(range(len(rows)))
        if rep % 2:
            order.reverse()
        for i in order:
            if failed[i]:
                continue
            if outputs[i] is not None:
                remove(outputs[i])
            os.sync()
            if inputs[i] is not None:
                warm(inputs[i])
            t = run_timed([runs[i]])
            if not t.ok:
                rows[i].note = f"failed: {t.error}"
                failed[i] = True
                continue
            rows[i].walls.append(round(t.wall, 3))
            rss[i] = max(rss[i], t.rss_kib)
    for row, peak, bad in zip(rows, rss, failed, strict=True):
        if bad or not row.walls:
            row.walls = []
            continue
        row.wall = statistics.median(row.walls)
        row.rss_mib = round(peak / 1024, 1)
    for row, out in zip(rows, outputs, strict=True):
        if out is not None and out.exists() and row.wall is not None:
            row.size, row.apparent = disk_usage(out)
    return rows
