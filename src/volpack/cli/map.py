"""``volpack map VOLUME``: used extents, the detector that decided them, and where they live."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from volpack.cli.common import Progress, add_output_options, share, size_arg
from volpack.errors import EXIT_OK, EXIT_WARNING
from volpack.units import human


def register(sub: Any) -> None:
    from volpack.detect import DETECT_MODES
    from volpack.source import SOURCE_FORMATS

    p = sub.add_parser(
        "map",
        help="show the used map and physical map of a volume",
        description="Show which extents of a volume are used, which detector "
        "decided, and their physical locations (like qemu-img map).",
    )
    p.add_argument(
        "source", help="image file, block device, qcow2 image, lvm:VG/LV or nbd://HOST/EXPORT"
    )
    p.add_argument("--detect", choices=DETECT_MODES, default="auto")
    p.add_argument("--block-size", type=size_arg("--block-size"), default=4096)
    p.add_argument("--source-format", choices=SOURCE_FORMATS, default="auto")
    p.add_argument(
        "--pv",
        action="append",
        default=[],
        metavar="PATH",
        help="an LVM physical volume for lvm:VG/LV sources; repeat",
    )
    add_output_options(p)
    p.set_defaults(func=run)


def bitmap_lines(source: dict[str, Any]) -> list[str]:
    """qcow2 persistent dirty bitmaps, one line each (for later incrementals)."""
    lines = []
    for b in source.get("details", {}).get("dirty_bitmaps", []) or []:
        state = "enabled" if b.get("enabled") else "disabled"
        if not b.get("usable", True):
            state += " (in use, not trusted)"
        lines.append(
            f"bitmap {b.get('name')}: granularity {human(b.get('granularity', 0))}, "
            f"dirty {human(b.get('dirty_bytes', 0))}, {state}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from volpack.pipeline.map import map_volume

    progress = Progress(args)
    try:
        vmap = map_volume(
            args.source,
            block_size=args.block_size,
            detect=args.detect,
            source_format=args.source_format,
            pvs=tuple(args.pv),
            progress=progress,
        )
    finally:
        progress.close()
    items = vmap.entries()
    det = vmap.detection
    used = det.used.scale_in(det.block_size).clip(0, vmap.size).total()  # last block may be partial
    if args.json:
        json.dump(
            {
                "size": vmap.size,
                "block_size": det.block_size,
                "used_bytes": used,
                "source": vmap.source,
                "warnings": list(det.warnings),
                "regions": [
                    {"start": r.start, "end": r.end, "detector": r.detector, "details": r.details}
                    for r in det.regions
                ],
                "extents": items,
            },
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        print(f"{'START':>16} {'LENGTH':>16}  {'USED':<10}  {'DETECTOR':<12} LOCATION")
        for e in items:
            where = ""
            if "device" in e:
                where = f"{e['device']}+{e['offset']}" if "offset" in e else e["device"]
            what = "yes" if e["data"] else ("no" if e.get("zero") else "no (stale)")
            print(
                f"{e['start']:>16} {e['length']:>16}  {what:<10}  {e.get('detector', ''):<12} "
                f"{where}"
            )
        print(
            f"{vmap.source['path']}: {human(vmap.size)}, used {human(used)} "
            f"({share(used, vmap.size)}) in "
            f"{len(det.used)} runs of {det.block_size} B blocks; {vmap.elapsed:.2f} s"
        )
        for line in bitmap_lines(vmap.source):
            print(line)
    for w in det.warnings:
        print(f"volpack: warning: {w}", file=sys.stderr)
    return EXIT_WARNING if det.warnings else EXIT_OK
