"""volpack benchmark: time backup and restore against peer tools on deterministic images.

Usage: python3 bench/run.py [--only ext4,sparse] [--quick] [--scale F] [--repeat N] [--json FILE]
Prints one markdown table per image (wall time, output size, peak RSS, ratio to the fastest peer,
share of the machine's limit measured in the same run) and the issues' targets with pass/fail.
Never run by the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import images  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
import targets  # noqa: E402

HERE = Path(__file__).resolve().parent
STARTUP_REPEAT = 5


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def measure_spec(img: images.Image, spec: peers.Spec, repeat: int) -> measure.Row:
    row = measure.Row(img.name, spec.name, spec.kind, spec.peer)
    rss = 0
    for _ in range(repeat):
        measure.remove(spec.output)
        if spec.mkdir:
            spec.output.mkdir(parents=True)
        for argv in spec.prep:
            subprocess.run(argv, check=True)
        os.sync()  # write back deletions and earlier outputs before the clock starts
        if not spec.warm.exists():
            row.note = f"skipped: input {spec.warm.name} missing (its backup failed)"
            return row
        measure.warm(spec.warm)
        t = measure.run_timed([list(c) for c in spec.cmds])
        if not t.ok:
            row.note = f"failed: {t.error}"
            measure.remove(spec.output)
            return row
        row.walls.append(round(t.wall, 3))
        rss = max(rss, t.rss_kib)
    row.wall = statistics.median(row.walls)
    row.rss_mib = round(rss / 1024, 1)
    if spec.output.exists():
        row.size, row.apparent = measure.disk_usage(spec.output)
    if not spec.keep:
        measure.remove(spec.output)
    return row


def fmt_size(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def limit_seconds(rows: list[measure.Row]) -> float | None:
    """The image's limit: page-cache read of its data (the faster buffer size) plus write + fsync
    of as many bytes, one after the other (what a copy that does not overlap reading and writing
    needs at best)."""
    limits = [r for r in rows if r.kind == "limit" and r.wall is not None]
    reads = [r.wall for r in limits if r.name.startswith("limit: page-cache read")]
    writes = [r.wall for r in limits if r.name.startswith("limit: write")]
    return min(reads) + min(writes) if reads and writes else None


def limit_share(rows: list[measure.Row], r: measure.Row) -> str:
    limit = limit_seconds(rows)
    if limit is None or r.wall is None or r.kind not in ("backup", "restore", "serve"):
        return "–"
    return f"{limit / r.wall:.0%}"


def table(rows: list[measure.Row]) -> str:
    """Markdown table; ratio is to the fastest peer of the same kind on the same image, share is
    the limit's time (see limit_seconds) over the row's: 100 % runs at the serial limit."""
    fastest = {}
    for r in rows:
        if r.peer and r.wall is not None:
            fastest[r.kind] = min(fastest.get(r.kind, r.wall), r.wall)
    lines = [
        "| run | kind | wall s (median) | min | output on disk | peak RSS MiB "
        "| ratio to fastest peer | share of limit |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.wall is None:
            lines.append(f"| {r.name} | {r.kind} | – | – | – | – | {r.note} | – |")
            continue
        ratio = f"{r.wall / fastest[r.kind]:.2f}x" if r.kind in fastest else "–"
        name = r.name if r.peer else f"**{r.name}**"
        ms = r.kind == "probe"
        wall = f"{r.wall * 1000:.2f} ms" if ms else f"{r.wall:.2f}"
        low = min(r.walls) if r.walls else r.wall
        low_s = f"{low * 1000:.2f} ms" if ms else f"{low:.2f}"
        rss = f"{r.rss_mib:.0f}" if r.rss_mib is not None else "–"
        note = f" ({r.note})" if r.note else ""
        size = fmt_size(r.size)
        share = limit_share(rows, r)
        lines.append(
            f"| {name} | {r.kind} | {wall} | {low_s} | {size} | {rss} | {ratio}{note} | {share} |"
        )
    limit = limit_seconds(rows)
    if limit is not None:
        lines.append(
            f"\nLimit of this image in this run: {limit:.2f} s (page-cache read + write and fsync "
            "of the same bytes); share of limit = that over the row's wall time."
        )
    return "\n".join(lines)


def level_table(rows: list[measure.Row]) -> str:
    lines = ["| --compress | wall s | archive | MiB/s of image data |", "|---|---:|---:|---:|"]
    for r in rows:
        if r.wall is None:
            lines.append(f"| {r.name} | – | – | {r.note} |")
        else:
            rate = f"{(r.apparent or 0) / r.wall / (1 << 20):.0f}" if r.wall else "–"
            lines.append(
                f"| {r.name.removeprefix('--compress ')} | {r.wall:.2f} | "
                f"{fmt_size(r.apparent)} | {rate} |"
            )
    return "\n".join(lines)


def report(
    img: images.Image, rows: list[measure.Row], levels: list[measure.Row]
) -> tuple[str, list[targets.Check]]:
    """One image's section: the run table, the level table, the targets."""
    checks = targets.evaluate(img, rows, levels)
    shape = ", ".join(
        f"{k} {fmt_size(v)}"
        for k, v in img.shape.items()
        if k in ("size", "allocated", "nonzero", "live") and v
    )
    text = f"## {img.name} ({img.fmt}: {shape})\n\n{table(rows)}\n\n"
    if levels:
        text += f"Compression levels (volpack backup of {img.name}):\n\n{level_table(levels)}\n\n"
    return text + targets.render(checks) + "\n", checks


def report_saved(path: Path) -> int:
    """Print the tables again from a --json file (e.g. after changing how they are shown)."""
    data = json.loads(path.read_text())
    info = data["machine"]
    print(header(info, data["repeat"]))
    for name, saved in data["images"].items():
        fmt = saved.get("fmt", "qcow2" if name == "qcow2" else "raw")
        img = images.Image(name, Path(name), fmt, saved["shape"])
        rows = [_row_from(d) for d in saved["rows"]]
        levels = [_row_from(d) for d in saved["levels"]]
        print(report(img, rows, levels)[0])
    return 0


def _row_from(d: dict) -> measure.Row:
    row = measure.Row(d["image"], d["name"], d["kind"], d["peer"])
    for key, value in d.items():
        setattr(row, key, value)
    return row


def header(info: dict, repeat: int) -> str:
    scale = info.get("scale", 1.0)
    note = (
        f"\nImages at scale {scale:g}: a check that the bench runs, not numbers for the targets.\n"
        if scale != 1
        else ""
    )
    return (
        f"# volpack benchmark, {info['date']}, commit {info['commit']}, {info['nproc']} CPUs, "
        f"{info['ram_gib']} GiB RAM, median of {repeat}, load average {info['loadavg_at_start']:.1f}"
        f" at start\n{note}"
    )


def machine() -> dict:
    with open("/proc/meminfo") as f:
        mem = next(int(line.split()[1]) for line in f if "MemTotal" in line)
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_at_start": os.getloadavg()[0],
        "nproc": os.cpu_count(),
        "ram_gib": round(mem / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit,
    }


def compile_volpack() -> None:
    """Write volpack's bytecode, as installing a wheel does. An editable install run with
    PYTHONDONTWRITEBYTECODE set would otherwise compile every module in every timed run (~50 ms)."""
    import compileall

    import volpack

    compileall.compile_dir(Path(volpack.__file__).parent, quiet=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only",
        default=",".join(images.ORDER),
        help="comma-separated images: " + ",".join(images.ORDER),
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=HERE / "work",
        help="images and outputs (default bench/work, git-ignored)",
    )
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached images")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; median is shown")
    ap.add_argument("--quick", action="store_true", help="one repetition, no level table")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="shrink every image by this factor (e.g. 0.02) to check the bench quickly; "
        "scaled images are cached apart and their numbers are not target results",
    )
    ap.add_argument(
        "--levels",
        default="none,zstd:1,zstd:3,zstd:6,zstd:9",
        help="--compress settings for the level table on the ext4 image ('' for none)",
    )
    ap.add_argument("--json", type=Path, help="also write all results to this file")
    ap.add_argument(
        "--skip",
        default="",
        help="optional row modules to leave out: s3_rows,nbd_rows,incr_rows,crypto_rows",
    )
    ap.add_argument(
        "--report", type=Path, metavar="JSON", help="only print the tables of a --json file"
    )
    args = ap.parse_args()
    if args.report:
        return report_saved(args.report)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(images.ORDER)
    if unknown:
        ap.error(f"unknown image(s) {', '.join(sorted(unknown))}; known: {', '.join(images.ORDER)}")
    repeat = 1 if args.quick else max(1, args.repeat)
    if not 0 < args.scale <= 1:
        ap.error(f"--scale {args.scale:g} is out of range; give a factor in (0, 1]")
    args.workdir.mkdir(parents=True, exist_ok=True)
    compile_volpack()
    imgs = images.ensure(names, args.workdir, args.rebuild, log, args.scale)

    info = machine()
    info["scale"] = args.scale
    print(header(info, repeat))
    results: dict = {"machine": info, "repeat": repeat, "images": {}}
    all_checks = []
    for img in imgs:
        out = args.workdir / "out" / img.name
        out.mkdir(parents=True, exist_ok=True)
        measure.prefault_bytes = int(img.shape["allocated"] * 1.25) + (256 << 20)
        if img.name == "small":  # start-up: cheap runs, so always a median of at least 5
            specs = peers.startup_specs(img, out)
            n = max(repeat, STARTUP_REPEAT)
        else:
            specs = peers.limit_specs(img, out)
            n = repeat
        specs += peers.peer_specs(img, out) + peers.volpack_specs(img, out)
        rows = []
        for spec in specs:
            log(f"{img.name}: {spec.name}")
            rows.append(measure_spec(img, spec, n))
        rows += extra_rows(img, out, repeat, set(args.skip.split(",")))
        levels = []
        if img.name == "ext4" and not args.quick and args.levels:
            for spec in peers.level_specs(img, out, args.levels.split(",")):
                log(f"{img.name}: level {spec.name}")
                levels.append(measure_spec(img, spec, repeat))
        for child in list(out.iterdir()):
            measure.remove(child)
        text, checks = report(img, rows, levels)
        print(text, flush=True)
        all_checks += checks
        results["images"][img.name] = {
            "fmt": img.fmt,
            "shape": img.shape,
            "rows": [r.as_dict() for r in rows],
            "levels": [r.as_dict() for r in levels],
            "targets": [c.as_dict() for c in checks],
        }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        log(f"results written to {args.json}")
    failed = [c for c in all_checks if c.passed is False]
    log(f"{len(all_checks) - len(failed)} of {len(all_checks)} targets met or skipped")
    return 0


_DETECT_PROBE = """
import sys, volpack.pipeline as p
p.map_volume(sys.argv[1], detect="fs")  # first call pays for lazy imports
for _ in range(int(sys.argv[2])):
    print(p.map_volume(sys.argv[1], detect="fs").elapsed)
"""


def detect_row(img: images.Image, repeat: int) -> measure.Row:
    """Issue 3: time of volpack's used map + physical map with --detect fs, in process."""
    row = measure.Row(img.name, "volpack fs detection (in process)", "probe", False)
    res = subprocess.run(
        [sys.executable, "-c", _DETECT_PROBE, str(img.path), str(repeat)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1:] or ["no output"]
        row.note = f"failed: {last[0][:200]}"
        return row
    row.walls = [round(float(x), 5) for x in res.stdout.split()]
    row.wall = statistics.median(row.walls)
    row.note = "map_volume(detect='fs'): open, bitmaps, FIEMAP"
    return row


def extra_rows(img: images.Image, out: Path, repeat: int, skip: set[str]) -> list[measure.Row]:
    """Rows from optional modules of later features (S3 medium, NBD serving), when present."""
    rows: list[measure.Row] = [detect_row(img, max(3, repeat))] if img.name == "ext4" else []
    if img.name in peers.FEW_PEERS:  # their targets compare file-medium rows with cp only
        return rows
    for mod_name in ("s3_rows", "nbd_rows", "incr_rows", "crypto_rows"):
        path = HERE / f"{mod_name}.py"
        if not path.exists() or mod_name in skip:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        log(f"{img.name}: rows from {path.name}")
        rows += mod.rows(img, out, repeat)
    return rows


if __name__ == "__main__":
    sys.exit(main())


def rows_only(description: str, rows, checks, images: tuple[str, ...]) -> int:
    """Main of a row module run alone (the volpack on PYTHONPATH is the one timed): for
    before/after runs of a change without the whole bench. ``rows(img, out, repeat)`` and
    ``checks(img, rows)`` are the module's; ``bench/run.py`` runs them with everything else."""
    import images as images_mod
    import measure
    import targets

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--only", default=",".join(images), help="images: " + ",".join(images))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "work")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    compile_volpack()
    info = machine()
    print(header(info, args.repeat))
    for img in images_mod.ensure(names, args.workdir, False, log):
        out = args.workdir / "out" / img.name
        out.mkdir(parents=True, exist_ok=True)
        measure.prefault_bytes = int(img.shape["allocated"] * 1.25) + (256 << 20)
        found = rows(img, out, args.repeat)
        print(f"## {img.name}, load average {os.getloadavg()[0]:.1f} at the end\n")
        print(table(found) + "\n")
        print(targets.render(checks(img, found)) + "\n", flush=True)
    return 0
