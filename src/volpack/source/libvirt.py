"""A libvirt domain's disk (``libvirt:DOMAIN/DISK``) read at one point in time through a pull-mode
backup job, driven with ``virsh`` (no binding needed).

``virsh backup-begin`` starts the job with a new checkpoint, ``<incremental>`` naming the base's
checkpoint when there is one (redefined from the XML the base archive recorded when libvirt lost
it); the disk's export is read over NBD on a private Unix socket. The job is ended with
``domjobabort`` whatever happens. Never writes the guest's disk; never deletes a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from volpack.errors import SourceError, UsageError
from volpack.extents import Extents
from volpack.source.base import PhysicalMap, SourceInfo
from volpack.source.nbd import NbdSource

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "volpack-"  # + UTC time of the backup-begin


@dataclass(frozen=True, slots=True)
class LibvirtAddress:
    """``libvirt:DOMAIN/DISK[,scratch=DIR]``: the domain, its disk target, the scratch dir."""

    domain: str
    disk: str
    scratch: str = ""  # "" = the system temp dir

    @property
    def name(self) -> str:
        return f"libvirt:{self.domain}/{self.disk}"


def parse_libvirt(address: str) -> LibvirtAddress:
    body = address[len("libvirt:") :] if address.startswith("libvirt:") else ""
    body, *opts = body.split(",")
    domain, _, disk = body.partition("/")
    scratch = ""
    for opt in opts:
        key, _, value = opt.partition("=")
        if key != "scratch" or not value:
            raise UsageError(f"{address}: unknown option {opt!r}; only scratch=DIR is known")
        scratch = value
    if not domain or not disk or "/" in disk:
        raise UsageError(
            f"{address}: write libvirt:DOMAIN/DISK (a disk target such as vda, as "
            "'virsh domblklist DOMAIN' lists it)"
        )
    return LibvirtAddress(domain, disk, scratch)


def virsh(*args: str, subject: str) -> str:
    """Run ``virsh -q ARGS`` (connection from LIBVIRT_DEFAULT_URI); stdout, or a SourceError
    naming ``subject`` and virsh's last line."""
    exe = shutil.which("virsh")
    if exe is None:
        raise SourceError(f"{subject}: virsh is not installed; install libvirt-clients")
    r = subprocess.run(
        [exe, "-q", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
    )
    if r.returncode != 0:
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit {r.returncode}"
        raise SourceError(f"{subject}: virsh {args[0]} failed: {last.removeprefix('error: ')}")
    return r.stdout


def domain_disks(domain: str) -> list[str]:
    """The disk targets (vda, sdb …) of ``domain`` that back up: disks, not cdroms or floppies."""
    out = virsh("domblklist", domain, "--details", subject=f"libvirt:{domain}")
    disks = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "disk":
            disks.append(parts[2])
    return disks


class LibvirtSource:
    """One disk of a running libvirt domain, frozen at the ``backup-begin``."""

    def __init__(self, address: str, base_details: dict[str, Any] | None = None) -> None:
        self.addr = parse_libvirt(address)
        self._tmp = ""
        self._started = False
        self._nbd: NbdSource | None = None
        self._incremental = ""  # the checkpoint the job's bitmap counts from
        self._hint_lost = ""  # why the base's checkpoint cannot give a hint
        try:
            self._check_domain()
            base_cp = str((base_details or {}).get("checkpoint") or "")
            if base_cp:
                self._incremental = self._base_checkpoint(base_cp, base_details or {})
            self._begin()
        except BaseException:
            self.close()
            raise

    def _fail(self, problem: str) -> SourceError:
        return SourceError(f"{self.addr.name}: {problem}")

    def _virsh(self, *args: str) -> str:
        return virsh(*args, subject=self.addr.name)

    def _check_domain(self) -> None:
        state = self._virsh("domstate", self.addr.domain).strip()
        if state not in ("running", "paused"):
            raise self._fail(
                f"the domain is {state or 'unknown'}; a pull-mode backup needs it running "
                "(an inactive domain's disk image can be backed up as a file)"
            )
        disks = domain_disks(self.addr.domain)
        if self.addr.disk not in disks:
            raise self._fail(
                f"the domain has no disk {self.addr.disk!r} (disks: {', '.join(disks) or 'none'})"
            )
        job = self._virsh("domjobinfo", self.addr.domain)
        if "Backup" in job:
            raise self._fail(
                "the domain already runs a backup job; wait for it to end (or end it with "
                "'virsh domjobabort')"
            )

    def _base_checkpoint(self, name: str, details: dict[str, Any]) -> str:
        """``name`` when libvirt knows it (redefined from the base's XML if it was lost), else
        "" with the reason kept: the incremental then compares hashes."""
        try:
            self._virsh("checkpoint-info", self.addr.domain, name)
            return name
        except SourceError:
            pass
        xml = str(details.get("checkpoint_xml") or "")
        if not xml:
            self._hint_lost = f"the base's checkpoint {name!r} is gone and the base kept no XML"
            return ""
        fd, path = tempfile.mkstemp(prefix="volpack-checkpoint-", suffix=".xml")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(xml)
            self._virsh("checkpoint-create", self.addr.domain, path, "--redefine")
        except SourceError as exc:
            self._hint_lost = (
                f"the base's checkpoint {name!r} is gone and could not be redefined ({exc})"
            )
            return ""
        finally:
            os.unlink(path)
        log.info("%s: checkpoint %s redefined from the base archive", self.addr.name, name)
        return name

    def _begin(self) -> None:
        parent = self.addr.scratch or tempfile.gettempdir()
        try:
            self._tmp = tempfile.mkdtemp(prefix="volpack-libvirt-", dir=parent)
        except OSError as exc:
            raise self._fail(
                f"cannot create the scratch directory in {parent} ({exc.strerror}); "
                "choose another --scratch"
            ) from None
        sock = os.path.join(self._tmp, "nbd.sock")
        self.checkpoint = CHECKPOINT_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        checkpoint = os.path.join(self._tmp, "checkpoint.xml")
        with open(checkpoint, "w") as f:
            f.write(
                f"<domaincheckpoint><name>{self.checkpoint}</name><disks>"
                f"<disk name={quoteattr(self.addr.disk)} checkpoint='bitmap'/>"
                + "".join(
                    f"<disk name={quoteattr(d)} checkpoint='no'/>"
                    for d in domain_disks(self.addr.domain)
                    if d != self.addr.disk
                )
                + "</disks></domaincheckpoint>"
            )
        try:
            self._backup_begin(sock, checkpoint, self._incremental)
        except SourceError as exc:
            if not self._incremental:
                raise
            # The checkpoint is known but its bitmap is not usable (a disk restored or copied
            # without it): the backup still runs, the changes are found by comparing hashes.
            self._hint_lost = f"backup-begin from checkpoint {self._incremental!r} failed ({exc})"
            self._incremental = ""
            self._backup_begin(sock, checkpoint, "")
        self._checkpoint_xml = self._virsh(
            "checkpoint-dumpxml", self.addr.domain, self.checkpoint
        )
        export = urllib.parse.quote(self.addr.disk)
        self._nbd = NbdSource(f"nbd+unix:///{export}?socket={urllib.parse.quote(sock)}")

    def _backup_begin(self, sock: str, checkpoint: str, incremental: str) -> None:
        scratch = os.path.join(self._tmp, "scratch.qcow2")
        backup = os.path.join(self._tmp, "backup.xml")
        others = "".join(
            f"<disk name={quoteattr(d)} backup='no'/>"
            for d in domain_disks(self.addr.domain)
            if d != self.addr.disk
        )
        with open(backup, "w") as f:
            f.write(
                "<domainbackup mode='pull'>"
                + (f"<incremental>{incremental}</incremental>" if incremental else "")
                + f"<server transport='unix' socket={quoteattr(sock)}/><disks>"
                f"<disk name={quoteattr(self.addr.disk)} backup='yes' type='file'>"
                f"<scratch file={quoteattr(scratch)}/></disk>{others}</disks></domainbackup>"
            )
        self._virsh("backup-begin", self.addr.domain, backup, checkpoint)
        self._started = True

    def close(self) -> None:
        """Disconnect and end the backup job (libvirt removes its scratch file); each step is
        tried even when an earlier one failed."""
        if self._nbd is not None:
            with contextlib.suppress(SourceError):
                self._nbd.close()
            self._nbd = None
        if self._started:
            try:
                self._virsh("domjobabort", self.addr.domain)
            except SourceError as exc:
                log.warning("%s; end the job with 'virsh domjobabort'", exc)
            self._started = False
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = ""

    # -- change hint ---------------------------------------------------------------------------
    def checkpoint_hint(self) -> tuple[Extents, str] | str:
        """The writes since the base's checkpoint (the job's ``backup-DISK`` bitmap) and the
        checkpoint's name, or why there is none (the caller compares hashes)."""
        if not self._incremental:
            return self._hint_lost or "the base archive names no libvirt checkpoint"
        return self._src.dirty_extents("backup-" + self.addr.disk), self._incremental

    # -- the Source protocol -------------------------------------------------------------------
    @property
    def _src(self) -> NbdSource:
        if self._nbd is None:
            raise self._fail("the backup export is closed")
        return self._nbd

    @property
    def size(self) -> int:
        return self._src.size

    @property
    def info(self) -> SourceInfo:
        details: dict[str, object] = {
            "domain": self.addr.domain,
            "disk": self.addr.disk,
            "reader": "libvirt pull-mode backup",
            "checkpoint": self.checkpoint,
            # kept so the checkpoint can be redefined (checkpoint-create --redefine) after libvirt
            # lost it, e.g. the domain was undefined and defined again
            "checkpoint_xml": self._checkpoint_xml,
            "incremental_from": self._incremental or None,
            "block_size_max": self._src.info.details["block_size_max"],
        }
        return SourceInfo("libvirt", self.addr.name, details)

    def identity(self) -> tuple[object, ...]:
        # The export stays the point in time only while the job runs: one that ended (scratch
        # full, aborted from outside) makes the read untrustworthy.
        job = self._virsh("domjobinfo", self.addr.domain)
        if "Backup" not in job:
            raise self._fail(
                "the backup job ended while the disk was read, so the view may not be one point "
                "in time; give the scratch directory room for every block the guest overwrites "
                "(--scratch) and retry"
            )
        return (self._src.size,)

    def data_extents(self) -> Extents:
        return self._src.data_extents()

    def physical_map(self) -> PhysicalMap:
        return PhysicalMap.unknown(self._src.size)

    def dirty_extents(self, bitmap: str) -> Extents:
        return self._src.dirty_extents(bitmap)

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._src.read_into(offset, buf)


def open_libvirt(address: str, base_details: dict[str, Any] | None = None) -> LibvirtSource:
    return LibvirtSource(address, base_details)
