"""Where `volpack restore` spends its time: py-spy per thread (else cProfile), perf for the kernel.

Usage: python3 bench/profile.py [--only dense,sparse,ext4] [--scale F] [--compress none]
Backs up each bench image once (untimed), then restores the archive three ways with a warm cache
and prefaulted memory: plain (the wall time), under `py-spy record --threads --native --idle`
(Python and native frames of every thread; without py-spy, cProfile of the main thread), under
`perf record -g` (kernel and library symbols) when perf is there. Prints markdown summaries for
bench/README.md. Never run by the tests.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import images  # noqa: E402
import measure  # noqa: E402
from peers import VOLPACK  # noqa: E402
from run import compile_volpack  # noqa: E402

HERE = Path(__file__).resolve().parent
IDLE = ("wait (threading", "acquire", "get (queue", "_wait_for_tstate_lock", "select (")


def restore_cmd(archive: Path, target: Path) -> list[str]:
    return [*VOLPACK, "restore", str(archive), str(target), "-q"]


def fresh(archive: Path, target: Path, img: images.Image) -> None:
    measure.remove(target)
    os.sync()
    measure.warm(archive)
    measure.prefault(int(img.shape["allocated"] * 1.25) + (256 << 20))


def frame_name(frame: str) -> str:
    """'func (volpack/x.py:12)' -> 'func (volpack/x.py)'; native frames keep their library."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if ":" in where and not where.endswith(".so"):
        where = where.rsplit(":", 1)[0]
    return f"{name} ({where})" if where else name


def summarize_pyspy(raw: Path, rate: int) -> str:
    """Per thread: busy and idle seconds; the leaf frames and the deepest volpack frames."""
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    leaves: collections.Counter = collections.Counter()
    owners: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[1] if ": " in frames[0] else "MainThread"
        thread = thread.rstrip("0123456789").rstrip("_")  # a pool's workers share a line
        body = frames[1:]
        leaf = frame_name(body[-1]) if body else "?"
        idle = any(k in leaf for k in IDLE) or leaf.startswith(("0x", "pthread_cond", "futex"))
        idle = idle or any(k in frame_name(f) for f in body[-3:] for k in IDLE)
        threads[thread]["idle" if idle else "busy"] += n
        if idle:
            continue
        leaves[leaf] += n
        vp = [f for f in body if "volpack/" in f]
        owners[frame_name(vp[-1]) if vp else "(start-up and imports outside volpack)"] += n
    busy_total = sum(c["busy"] for c in threads.values()) or 1
    out = ["| thread | busy s | waiting s |", "|---|---:|---:|"]
    for t, c in sorted(threads.items(), key=lambda kv: -kv[1]["busy"]):
        out.append(f"| {t} | {c['busy'] / rate:.2f} | {c['idle'] / rate:.2f} |")
    out += ["", "| busy frame (leaf, all threads) | s | share |", "|---|---:|---:|"]
    for name, n in leaves.most_common(12):
        out.append(f"| `{name}` | {n / rate:.2f} | {n / busy_total:.0%} |")
    out += ["", "| deepest volpack frame of busy samples | s | share |", "|---|---:|---:|"]
    for name, n in owners.most_common(10):
        out.append(f"| `{name}` | {n / rate:.2f} | {n / busy_total:.0%} |")
    return "\n".join(out)


def summarize_cprofile(prof: Path) -> str:
    """Main thread only: the functions with the most time of their own, top 12."""
    import pstats

    stats = pstats.Stats(str(prof))
    rows = ["| function (main thread) | own s | calls |", "|---|---:|---:|"]
    entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])
    for (path, line, func), (_cc, calls, own, _cum, _callers) in entries[:12]:
        where = Path(path).name if path != "~" else "builtin"
        rows.append(f"| `{func} ({where}:{line})` | {own:.3f} | {calls} |")
    return "\n".join(rows)


def summarize_perf(data: Path) -> str:
    """Flat self time by shared object and symbol (kernel included), top lines."""
    res = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--stdio",
            "--no-children",
            "--sort",
            "dso,sym",
            "-g",
            "none",
            "--percent-limit",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    rows = ["| self | object | symbol |", "|---:|---|---|"]
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("%"):
            rows.append(f"| {parts[0]} | {parts[1]} | `{' '.join(parts[3:])}` |")
    return "\n".join(rows[:18])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="dense,sparse,ext4")
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--compress", default="none")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "", help="py-spy binary")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    compile_volpack()  # as the bench does: no run pays for compiling volpack's modules
    imgs = images.ensure(
        names, args.workdir, False, lambda m: print(m, file=sys.stderr), args.scale
    )
    out = args.workdir / "prof"
    out.mkdir(parents=True, exist_ok=True)
    for img in imgs:
        tag = f"{img.name}-scale-{args.scale:g}-{args.compress}"
        archive, target = out / f"{tag}.vpk", out / f"{tag}.out"
        if not archive.exists():
            subprocess.run(
                [*VOLPACK, "backup", str(img.path), str(archive), "--compress", args.compress]
                + ["--no-catalog", "-q"],
                check=True,
            )
        walls = []
        for _ in range(3):
            fresh(archive, target, img)
            t = time.perf_counter()
            subprocess.run(restore_cmd(archive, target), check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
        print(f"## restore of {img.name} (--compress {args.compress})\n")
        print(f"Plain runs: {', '.join(f'{w:.2f}' for w in walls)} s wall.\n")
        with tempfile.TemporaryDirectory() as tmp:
            if args.py_spy:
                raw = Path(tmp) / "spy.raw"
                fresh(archive, target, img)
                spy = [args.py_spy, "record", "--threads", "--native", "--idle"]
                subprocess.run(
                    [*spy, "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--"]
                    + restore_cmd(archive, target),
                    check=True,
                    capture_output=True,
                )
                print(summarize_pyspy(raw, args.rate) + "\n")
            else:  # no py-spy: cProfile sees only the main thread (the writer, the critical path)
                prof = Path(tmp) / "restore.prof"
                fresh(archive, target, img)
                argv = restore_cmd(archive, target)
                subprocess.run(
                    [argv[0], "-m", "cProfile", "-o", str(prof), *argv[1:]],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                print(summarize_cprofile(prof) + "\n")
            if shutil.which("perf"):
                data = Path(tmp) / "perf.data"
                fresh(archive, target, img)
                subprocess.run(
                    ["perf", "record", "-q", "-g", "-F", "999", "-o", str(data), "--"]
                    + restore_cmd(archive, target),
                    check=True,
                    capture_output=True,
                )
                print(summarize_perf(data) + "\n", flush=True)
        measure.remove(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
