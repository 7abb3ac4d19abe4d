"""``volpack info ARCHIVE``: header, sizes, ratio, tables and source description."""

from __future__ import annotations

import argparse
from typing import Any

from volpack.cli.common import (
    add_medium_options,
    add_output_options,
    apply_medium_options,
    emit,
    share,
)
from volpack.cli.keys import add_open_options, optional_keyring
from volpack.errors import EXIT_OK
from volpack.units import human


def register(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe an archive",
        description="Describe an archive from its footer, trailer and tables "
        "(random access); from a stream ('-'), from its head only.",
    )
    p.add_argument("archive", help="archive path, '-' for stdin, or a URL")
    add_open_options(p)
    add_medium_options(p)
    add_output_options(p, progress=False)
    p.set_defaults(func=run)


def segment_text(seg: dict[str, Any]) -> str:
    """'extents 0+100 striped (64 KiB) on pv0@0, pv1@0' from an LVM segment description."""
    text = f"extents {seg.get('start_extent')}+{seg.get('extent_count')} {seg.get('type')}"
    if seg.get("stripe_size"):
        text += f" ({human(seg['stripe_size'])} stripes)"
    areas = [f"{a.get('pv') or a.get('lv')}@{a.get('start')}" for a in seg.get("areas", [])]
    if areas:
        text += " on " + ", ".join(areas)
    for key in ("thin_pool", "device_id", "pool"):
        if key in seg:
            text += f", {key} {seg[key]}"
    return text


def libvirt_text(details: dict[str, Any]) -> str:
    """Domain, disk, checkpoint, and whether the guest agent froze the guest's filesystems."""
    frozen = (
        f"filesystems frozen by the guest agent: {details.get('frozen_filesystems')}"
        if details.get("fsfreeze")
        else "not frozen (crash-consistent)"
    )
    return (
        f"domain {details.get('domain')}, disk {details.get('disk')}, checkpoint "
        f"{details.get('checkpoint')}, {frozen}"
    )


def run(args: argparse.Namespace) -> int:
    apply_medium_options(args)
    from volpack.pipeline.info import summary

    d = summary(args.archive, optional_keyring(args))
    vol, used = d["volume_size"], d["used_bytes"]
    sealed = d["encrypted"] and d["tool"] is None
    lines = [
        f"archive      {d['uuid']} (format {d['format']}, {d['tool']})",
        f"created      {d['created']} on {d['host']}",
        f"source       {d['source'].get('kind')} {d['source'].get('path')}",
        f"volume       {human(vol)} ({vol} B), block size {d['block_size']}",
        f"used         {human(used or 0)} ({share(used or 0, vol)}), {d['used_blocks']} blocks "
        f"in {d['address_table_runs']} runs",
        f"frames       {d['frames']} x {human(d['frame_size'])}, codec {d['codec']}",
    ]
    if sealed:
        lines[0:3] = [
            f"archive      {d['uuid']} (format {d['format']}, encrypted)",
            f"created      {d['created']}",
            "sealed       source, tables and host are encrypted: give --identity, "
            "--passphrase-file or --key-file to show them",
        ]
        lines[4] = f"used         {d['used_blocks']} blocks of {human(d['block_size'])}"
    elif d["encrypted"]:
        lines.append("encrypted    yes, opened with the key given")
    for slot in d.get("key_slots") or []:
        lines.append(f"key slot     {slot['fingerprint']}")
    if d.get("chain_id"):
        base = d.get("base")
        level = (
            f"incremental, sequence {d['chain_seq']} of chain {d['chain_id']}"
            if base
            else f"full, sequence {d['chain_seq']} of chain {d['chain_id']}"
        )
        lines.append(f"level        {level}")
        if d.get("hash_block_size"):
            entries = d.get("hash_table_entries")
            count = "" if entries is None else f", {entries} in the table"
            lines.append(f"hash blocks  {human(d['hash_block_size'])} each{count}")
        if base:
            lines.append(f"base         {base['uuid']} (blake3:{base['digest']})")
            changes = d.get("changes") or {}
            if not sealed:
                lines.append(
                    f"changes      by {changes.get('method', '?')}, "
                    f"{human(changes.get('read_bytes') or 0)} read from the source"
                )
    if d.get("archive_size") is not None:
        ratio = vol / d["archive_size"] if d["archive_size"] else 0.0
        lines.append(f"archive size {human(d['archive_size'])} (volume/archive {ratio:.1f}x)")
        lines.append(f"digest       blake3:{d['digest']}")
        if not sealed:
            devices = ", ".join(d["devices"])
            lines.append(f"physical map {d['physical_map_runs']} runs on {devices}")
    else:
        lines.append("trailer      not read (stream): run 'volpack verify' to check the whole")
    details = d["source"].get("details", {})
    if details.get("vg"):
        lines.append(f"lvm          VG {details.get('vg')}, LV {details.get('lv')}")
    for seg in details.get("segments") or []:
        lines.append(f"segment      {segment_text(seg)}")
    if d["source"].get("kind") == "libvirt":
        lines.append(f"libvirt      {libvirt_text(details)}")
    for r in d["detection"].get("regions", []):
        lines.append(f"detector     [{r['start']}, {r['end']}) {r['detector']}")
    for w in d["detection"].get("warnings", []):
        lines.append(f"warning      {w}")
    emit(args, d, lines)
    return EXIT_OK
