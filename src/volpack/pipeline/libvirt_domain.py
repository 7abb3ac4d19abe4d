"""``backup libvirt:DOMAIN PREFIX``: every disk of a running domain in one pull-mode backup job
(one point in time, one checkpoint), one archive per disk named ``PREFIX/DISK-TIME.vpk``.

Wires the libvirt job to the ``backup`` pipeline once per disk; knows nothing of the archive
format. Library code: warnings are logged, never printed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from volpack.errors import ChainError, UsageError
from volpack.pipeline.backup import BackupResult, backup
from volpack.source.base import Source

log = logging.getLogger(__name__)


def is_domain_source(source: str) -> bool:
    """``libvirt:DOMAIN`` (every disk), as against ``libvirt:DOMAIN/DISK`` (one)."""
    return source.startswith("libvirt:") and "/" not in source.split(",")[0]


def archive_name(prefix: str, disk: str, checkpoint: str) -> str:
    """``PREFIX/DISK-TIME.vpk``: TIME is the checkpoint's UTC time, so names sort by age and a
    chain's links lie side by side."""
    stamp = checkpoint.rsplit("-", 1)[-1]
    return f"{prefix.rstrip('/')}/{disk}-{stamp}.vpk"


def backup_domain(
    source: str,
    prefix: str,
    *,
    base: str | None = None,
    catalog: str | None = None,
    one: Callable[[str, str, str | None, Source], BackupResult] | None = None,
) -> list[BackupResult]:
    """Back up every disk of the running domain ``source``
    (``libvirt:DOMAIN[,scratch=DIR][,fsfreeze]``) at one point in time into the directory or URL
    prefix ``prefix``. ``base`` may only be
    ``latest``: each disk's newest catalogued archive; a disk without one gets a full. ``one(SOURCE,
    ARCHIVE, BASE, OPENED)`` backs up one disk (default: ``backup`` with its defaults and
    ``catalog``), so a caller gives its own options. Archives of disks done before a failure stay."""
    from volpack.catalog.latest import latest_base
    from volpack.format.random_access import open_archive
    from volpack.source.libvirt import LibvirtJob, domain_disks, parse_libvirt

    head, *opts = source.split(",")
    domain = head[len("libvirt:") :]
    if not domain:
        raise UsageError(f"{source}: write libvirt:DOMAIN (every disk) or libvirt:DOMAIN/DISK")
    addr = parse_libvirt(",".join([f"{head}/-", *opts]))
    if base not in (None, "latest"):
        raise UsageError(
            f"--base {base}: a whole domain takes --base latest (each disk's newest catalogued "
            f"archive); to name a base archive, back up one disk with {head}/DISK"
        )
    if prefix == "-":
        raise UsageError(
            f"{source}: one archive per disk cannot go to stdout; give a directory or URL prefix"
        )
    if "://" not in prefix:
        os.makedirs(prefix, exist_ok=True)
    disks = domain_disks(domain)
    if not disks:
        raise UsageError(f"{source}: the domain has no disk to back up")
    bases: dict[str, str | None] = {}
    details: dict[str, Mapping[str, Any] | None] = {}
    for disk in disks:
        bases[disk] = details[disk] = None
        if base is None:
            continue
        try:
            bases[disk] = latest_base(f"{head}/{disk}", catalog)
        except ChainError as exc:
            log.warning("%s/%s: %s; this disk gets a full backup", head, disk, exc)
            continue
        arch = open_archive(str(bases[disk]))
        try:
            details[disk] = arch.desc.source.details
        finally:
            arch.close()

    def default(src: str, archive: str, base_url: str | None, opened: Source) -> BackupResult:
        return backup(src, archive, base=base_url, catalog=catalog, opened=opened)

    run = one or default
    job = LibvirtJob(domain, disks, details, addr.scratch, addr.fsfreeze)
    results = []
    try:
        for disk in disks:
            name = archive_name(prefix, disk, job.checkpoint)
            results.append(run(f"{head}/{disk}", name, bases[disk], job.disk(disk)))
    finally:
        job.close()
    return results
