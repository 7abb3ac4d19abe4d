"""``volpack backup SOURCE ARCHIVE``: only the used blocks, to a file, ``-`` or a URL."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from volpack.cli.common import (
    Progress,
    add_medium_options,
    add_output_options,
    apply_medium_options,
    emit,
    rate,
    share,
    size_arg,
)
from volpack.cli.keys import add_seal_options, base_keyring, seal_keys
from volpack.errors import EXIT_OK, EXIT_WARNING, UsageError, VolpackError
from volpack.units import human, parse_mode

if TYPE_CHECKING:
    from volpack.pipeline.backup import BackupResult
    from volpack.source.base import Source

log = logging.getLogger("volpack")


def register(sub: Any) -> None:
    from volpack.detect import DETECT_MODES
    from volpack.source import SOURCE_FORMATS

    p = sub.add_parser(
        "backup",
        help="back up the used blocks of a volume",
        description="Back up the used blocks of a volume (image file, block device, "
        "qcow2, lvm:VG/LV) into a self-describing archive.",
    )
    p.add_argument(
        "source",
        help="image file, block device, qcow2 image, lvm:VG/LV, nbd://HOST/EXPORT, or "
        "qmp:SOCKET#NODE (a running QEMU, read through fleecing), or libvirt:DOMAIN/DISK "
        "(a running libvirt domain's disk, read through a pull-mode backup job)",
    )
    p.add_argument(
        "archive", help="archive path, '-' for stdout, or a URL (s3://bucket/key, tape:)"
    )
    p.add_argument(
        "--detect",
        choices=DETECT_MODES,
        default="auto",
        help="used-block detector (default auto: partitions and filesystems, then "
        "holes and zero scan)",
    )
    p.add_argument(
        "--block-size",
        type=size_arg("--block-size"),
        default=None,
        help="used-map block size, power of two 512..1Mi (default 4K; an incremental keeps its "
        "base's)",
    )
    p.add_argument(
        "--hash-block",
        type=size_arg("--hash-block"),
        default=None,
        help="hash block size of a new chain, power of two 64K..64Mi: what an incremental covers "
        "at least (default 64K, larger only past a million hash blocks of used data; an "
        "incremental keeps its base's)",
    )
    p.add_argument(
        "--frame-size",
        type=size_arg("--frame-size"),
        default=4 << 20,
        help="dense bytes per frame, power of two 64K..64Mi (default 4Mi)",
    )
    p.add_argument(
        "--compress",
        default="zstd:1",
        metavar="none|zstd[:LEVEL]",
        help="frame compression (default zstd:1)",
    )
    p.add_argument(
        "--staging",
        metavar="PATH",
        help="two-phase mode: copy the used data to this new file or block device "
        "first, release the source, then stream the copy (it must not be, or overlap, "
        "the source or the archive)",
    )
    p.add_argument(
        "--source-format",
        choices=SOURCE_FORMATS,
        default="auto",
        help="source format (default: detect from content)",
    )
    p.add_argument(
        "--pv",
        action="append",
        default=[],
        metavar="PATH",
        help="an LVM physical volume (image or device) for lvm:VG/LV sources; repeat",
    )
    p.add_argument(
        "--scratch",
        metavar="DIR",
        help="qmp: and libvirt: sources: where the fleecing overlay keeps the blocks the guest overwrites "
        "during the backup (default: the system temp dir)",
    )
    p.add_argument(
        "--fsfreeze",
        action="store_true",
        help="libvirt: sources: freeze the guest's filesystems through the QEMU guest agent "
        "for the instant the backup job starts (refused when the agent does not answer)",
    )
    p.add_argument(
        "--allow-mounted",
        action="store_true",
        help="back up a mounted filesystem anyway (not point-in-time)",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="threads reading and compressing frames (default 2)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing archive / use a block device as staging",
    )
    p.add_argument(
        "--mode",
        metavar="OCTAL",
        help="permission bits of the archive file, e.g. 0640 (default: 0600 for a new file, the "
        "old file's for one replaced with --force; the umask can only take bits away)",
    )
    p.add_argument(
        "--base",
        metavar="ARCHIVE|latest",
        help="make an incremental holding only what changed since this archive (a path or URL, "
        "or 'latest': the newest catalogued archive of this source)",
    )
    p.add_argument(
        "--bitmap",
        metavar="NAME",
        help="with --base: use the source's dirty bitmap NAME (qcow2 persistent bitmap or NBD "
        "export) as a hint; it is checked against the base and replaced by hash compare if wrong",
    )
    p.add_argument(
        "--no-hints",
        action="store_true",
        help="with --base: hash-compare every used block even when the source has a change hint "
        "(LVM thin mappings); the periodic full check no hint can replace",
    )
    p.add_argument("--catalog", metavar="PATH", help="catalog file (default: the user's catalog)")
    p.add_argument("--no-catalog", action="store_true", help="do not record the backup")
    add_seal_options(p)
    p.add_argument(
        "-i",
        "--identity",
        action="append",
        default=[],
        metavar="FILE",
        help="with --base of an encrypted chain: an identity that opens the base (its "
        "passphrase and key files are the ones given to seal; repeatable)",
    )
    add_medium_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def _mounted(path: str) -> bool:
    from volpack.detect.mounted import is_mounted

    try:
        return is_mounted(path)
    except (OSError, VolpackError):
        return False


def run(args: argparse.Namespace) -> int:
    from volpack.pipeline.backup import backup
    from volpack.pipeline.libvirt_domain import backup_domain, is_domain_source

    seal = seal_keys(args)
    if args.identity and args.base is None:
        raise UsageError(
            "--identity: a backup is sealed to recipients (--recipient), an identity only "
            "opens an encrypted --base; leave it out or give --base"
        )
    apply_medium_options(args)
    progress = Progress(args)

    def released() -> None:
        log.info(
            "source %s copied to staging %s; it may be released now", args.source, args.staging
        )

    source, allow_mounted = args.source, args.allow_mounted
    if args.scratch is not None and not source.startswith(("qmp:", "libvirt:")):
        raise UsageError(
            f"--scratch {args.scratch}: only qmp: sources and libvirt: sources use a scratch area"
        )
    if source.startswith(("qmp:", "libvirt:")) and args.scratch is not None:
        source += f",scratch={args.scratch}"
    if args.fsfreeze and not source.startswith("libvirt:"):
        raise UsageError(
            f"--fsfreeze: {source} has no guest agent to freeze its filesystems; only "
            "libvirt:DOMAIN and libvirt:DOMAIN/DISK sources take it"
        )
    if args.fsfreeze:
        source += ",fsfreeze"

    def one(src: str, archive: str, base: str | None, opened: Source | None) -> BackupResult:
        return backup(
            src,
            archive,
            block_size=args.block_size,
            detect=args.detect,
            compress=args.compress,
            frame_size=args.frame_size,
            staging=args.staging,
            force=args.force,
            mode=None if args.mode is None else parse_mode(args.mode),
            source_format=args.source_format,
            pvs=tuple(args.pv),
            allow_mounted=allow_mounted,
            threads=args.threads,
            progress=progress,
            on_source_released=released,
            base=base,
            bitmap=args.bitmap,
            hints=not args.no_hints,
            catalog=None if args.no_catalog and args.base != "latest" else args.catalog,
            encrypt=seal,
            keyring=base_keyring(args, seal),
            opened=opened,
            hash_block=args.hash_block,
        )

    domain = is_domain_source(source)
    if domain and args.staging is not None:
        raise UsageError(
            f"--staging {args.staging}: a whole domain makes one archive per disk; back up each "
            "disk with libvirt:DOMAIN/DISK to stage it"
        )
    try:
        if domain:
            catalog = None if args.no_catalog and args.base != "latest" else args.catalog
            results = backup_domain(source, args.archive, base=args.base, catalog=catalog, one=one)
        else:
            results = [one(source, args.archive, args.base, None)]
    finally:
        progress.close()
    code, docs, out = EXIT_OK, [], []
    for result in results:
        lines, warned = _report(args, result)
        code = EXIT_WARNING if warned else code
        docs.append(dataclasses.asdict(result))
        out.extend(lines)
    # With the archive on stdout, the result must not mix into it: it goes to stderr.
    emit(args, {"archives": docs} if domain else docs[0], out, to_stderr=args.archive == "-")
    return code


def _report(args: argparse.Namespace, result: BackupResult) -> tuple[list[str], bool]:
    """Log the warnings of one archive, record it in the catalog, and say what it holds."""
    warnings = result.detection.get("warnings", [])
    for w in warnings:
        log.warning("%s", w)
    if args.allow_mounted and _mounted(args.source):
        log.warning(
            "%s: backed up with --allow-mounted; the archive may not be point-in-time", args.source
        )
    if not args.no_catalog and args.archive != "-":
        from volpack.catalog import record_after_backup

        record_after_backup(result, args.catalog)
    used = result.used_bytes
    ratio = result.volume_size / result.archive_size if result.archive_size else 0.0
    lines = [
        f"archive {result.archive_uuid} -> {result.url}",
        f"volume {human(result.volume_size)}, used {human(used)} "
        f"({share(used, result.volume_size)}), archive {human(result.archive_size)} "
        f"(volume/archive {ratio:.1f}x), {result.elapsed:.2f} s, {rate(used, result.elapsed)}",
    ]
    if result.base_uuid is not None:
        zeroed = result.zero_blocks * result.block_size
        lines[1] = (
            f"incremental {result.chain_seq} on {result.base_uuid}: covers "
            f"{human(used + zeroed)} ({human(used)} data, the rest zero), found by "
            f"{result.changes.get('method')} ({human(result.changes.get('read_bytes') or 0)} "
            f"read); archive {human(result.archive_size)}, {result.elapsed:.2f} s"
        )
    return lines, bool(warnings)
