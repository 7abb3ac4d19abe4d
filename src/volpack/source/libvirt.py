"""A libvirt domain's disk (``libvirt:DOMAIN/DISK``) read at one point in time through a pull-mode
backup job, driven with ``virsh`` (no binding needed).

``virsh backup-begin`` starts the job with a new checkpoint, ``<incremental>`` naming the base's
checkpoint when there is one (redefined from the XML the base archive recorded when libvirt lost
it); the disk's export is read over NBD on a private Unix socket. The job is ended with
``domjobabort`` whatever happens. With ``fsfreeze`` the guest agent freezes the guest's
filesystems around the ``backup-begin`` alone, thawed on every path. Never writes the guest's
disk; never deletes a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from volpack.errors import SourceError, UsageError
from volpack.extents import Extents
from volpack.source.base import PhysicalMap, SourceInfo, scratch_option
from volpack.source.guest_agent import GuestAgent
from volpack.source.nbd import NbdSource

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "volpack-"  # + UTC time of the backup-begin
_TMP_PREFIX = "volpack-libvirt-"  # + PID of the run (hex) + "-": socket and scratch file


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


@dataclass(frozen=True, slots=True)
class LibvirtAddress:
    """``libvirt:DOMAIN/DISK[,scratch=DIR][,fsfreeze]``: the domain, its disk target, the
    scratch dir, and whether the guest agent freezes the guest's filesystems for the job."""

    domain: str
    disk: str
    scratch: str = ""  # "" = the system temp dir
    fsfreeze: bool = False

    @property
    def name(self) -> str:
        return f"libvirt:{self.domain}/{self.disk}"


def parse_libvirt(address: str) -> LibvirtAddress:
    body = address[len("libvirt:") :] if address.startswith("libvirt:") else ""
    body, *opts = body.split(",")
    domain, _, disk = body.partition("/")
    fsfreeze = "fsfreeze" in opts
    opts = [o for o in opts if o != "fsfreeze"]
    for opt in opts:
        if not opt.startswith("scratch="):
            raise UsageError(
                f"{address}: unknown option {opt!r}; libvirt: takes scratch=DIR and fsfreeze"
            )
    scratch = scratch_option(address, opts)
    if not domain or not disk or "/" in disk:
        raise UsageError(
            f"{address}: write libvirt:DOMAIN/DISK (a disk target such as vda, as "
            "'virsh domblklist DOMAIN' lists it)"
        )
    return LibvirtAddress(domain, disk, scratch, fsfreeze)


def virsh(*args: str, subject: str, quiet: bool = True, timeout: float = 300) -> str:
    """Run ``virsh -q ARGS`` (connection from LIBVIRT_DEFAULT_URI); stdout, or a SourceError
    naming ``subject`` and virsh's last line. Without ``quiet``, virsh also says what it did
    ("Froze 2 filesystem(s)")."""
    exe = shutil.which("virsh")
    if exe is None:
        raise SourceError(f"{subject}: virsh is not installed; install libvirt-clients")
    with subprocess.Popen(
        [exe, *(["-q"] if quiet else []), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException as exc:
            # Reaped before the caller goes on (a thaw after SIGINT runs the next virsh).
            proc.kill()
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise SourceError(
                    f"{subject}: virsh {args[0]} did not answer in {timeout:.0f} s"
                ) from None
            raise
    if proc.returncode != 0:
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit {proc.returncode}"
        raise SourceError(f"{subject}: virsh {args[0]} failed: {last.removeprefix('error: ')}")
    return out


def domain_disks(domain: str) -> list[str]:
    """The disk targets (vda, sdb …) of ``domain`` that back up: disks, not cdroms or floppies."""
    out = virsh("domblklist", domain, "--details", subject=f"libvirt:{domain}")
    disks = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "disk":
            disks.append(parts[2])
    return disks


class LibvirtJob:
    """One pull-mode backup job of a running domain: the listed disks frozen at the same
    ``backup-begin``, one new checkpoint for them all. Each disk is read through ``disk()``."""

    def __init__(
        self,
        domain: str,
        disks: list[str],
        bases: dict[str, Mapping[str, Any] | None],
        scratch: str = "",
        fsfreeze: bool = False,
    ) -> None:
        self.domain, self.disks, self.scratch = domain, list(disks), scratch
        self.fsfreeze = fsfreeze
        self.frozen_filesystems: int | None = None  # what the guest agent froze; None: not asked
        self.name = f"libvirt:{domain}"
        self.agent = GuestAgent(domain, self.name, virsh)
        self._tmp = ""
        self._started = False
        self.incremental: dict[str, str] = {}  # disk -> the checkpoint its bitmap counts from
        self.hint_lost: dict[str, str] = {}  # disk -> why its base's checkpoint gives no hint
        self._redefined: list[str] = []
        self.checkpoint = ""
        self.checkpoint_xml = ""
        try:
            self._check_domain()
            if fsfreeze:
                self.agent.check()
            for disk in self.disks:
                details = bases.get(disk) or {}
                base_cp = str(details.get("checkpoint") or "")
                if base_cp:
                    cp = self._base_checkpoint(disk, base_cp, details)
                    if cp:
                        self.incremental[disk] = cp
            self._begin()
        except BaseException:
            self.close()
            raise

    def _fail(self, problem: str) -> SourceError:
        return SourceError(f"{self.name}: {problem}")

    def _virsh(self, *args: str) -> str:
        return virsh(*args, subject=self.name)

    def _check_domain(self) -> None:
        state = self._virsh("domstate", self.domain).strip()
        if state not in ("running", "paused"):
            raise self._fail(
                f"the domain is {state or 'unknown'}; a pull-mode backup needs it running "
                "(an inactive domain's disk image can be backed up as a file)"
            )
        self.all_disks = domain_disks(self.domain)
        missing = [d for d in self.disks if d not in self.all_disks]
        if missing:
            raise self._fail(
                f"the domain has no disk {missing[0]!r} (disks: "
                f"{', '.join(self.all_disks) or 'none'})"
            )
        job = self._virsh("domjobinfo", self.domain)
        if "Backup" in job and not self._end_stale_job():
            raise self._fail(
                "the domain already runs a backup job; wait for it to end (or end it with "
                "'virsh domjobabort')"
            )

    def _end_stale_job(self) -> bool:
        """End the backup job a volpack run killed mid-backup left running (its private
        directory names the run's PID, which is gone); False for anyone else's job."""
        xml = self._virsh("backup-dumpxml", self.domain)
        found = re.search(r"socket=['\"]([^'\"]*/" + _TMP_PREFIX + r"([0-9a-f]+)-[^/'\"]*)/", xml)
        if found is None or not _gone(int(found.group(2), 16)):
            return False
        self._virsh("domjobabort", self.domain)
        shutil.rmtree(found.group(1), ignore_errors=True)
        log.info("%s: ended the backup job left by an interrupted run", self.name)
        return True

    def _base_checkpoint(self, disk: str, name: str, details: Mapping[str, Any]) -> str:
        """``name`` when libvirt knows it (redefined from the base's XML if it was lost), else
        "" with the reason kept: that disk's incremental then compares hashes."""
        if name in self._redefined:
            return name
        try:
            self._virsh("checkpoint-info", self.domain, name)
            return name
        except SourceError:
            pass
        xml = str(details.get("checkpoint_xml") or "")
        if not xml:
            self.hint_lost[disk] = (
                f"the base's checkpoint {name!r} is gone and the base kept no XML"
            )
            return ""
        fd, path = tempfile.mkstemp(prefix="volpack-checkpoint-", suffix=".xml")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(xml)
            self._virsh("checkpoint-create", self.domain, path, "--redefine")
        except SourceError as exc:
            self.hint_lost[disk] = (
                f"the base's checkpoint {name!r} is gone and could not be redefined "
                f"({_problem(exc, self.name)})"
            )
            return ""
        finally:
            os.unlink(path)
        self._redefined.append(name)
        log.info("%s: checkpoint %s redefined from the base archive", self.name, name)
        return name

    def _begin(self) -> None:
        parent = self.scratch or tempfile.gettempdir()
        try:
            # The PID in the name tells a later run whether a job left running is a dead run's.
            self._tmp = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid():x}-", dir=parent)
        except OSError as exc:
            raise self._fail(
                f"cannot create the scratch directory in {parent} ({exc.strerror}); "
                "choose another --scratch"
            ) from None
        self.socket = os.path.join(self._tmp, "nbd.sock")
        self.checkpoint = CHECKPOINT_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        checkpoint = os.path.join(self._tmp, "checkpoint.xml")
        with open(checkpoint, "w") as f:
            f.write(
                f"<domaincheckpoint><name>{self.checkpoint}</name><disks>"
                + "".join(
                    f"<disk name={quoteattr(d)} "
                    f"checkpoint='{'bitmap' if d in self.disks else 'no'}'/>"
                    for d in self.all_disks
                )
                + "</disks></domaincheckpoint>"
            )
        # The freeze spans only the backup-begin, which fixes the point in time: the guest
        # writes again before a byte is read.
        frozen: float | None = None  # when the freeze began
        try:
            if self.fsfreeze:
                try:
                    self.frozen_filesystems = self.agent.freeze()
                except BaseException:
                    self._forget_redefined()  # nothing started: leave libvirt as it was
                    raise
                frozen = time.monotonic()
            self._begin_job(checkpoint)
        except BaseException as exc:
            if frozen is not None:
                self.agent.thaw(exc)
            raise
        if frozen is not None:
            self.agent.thaw()
            log.info(
                "%s: %d guest filesystem(s) frozen for %.0f ms",
                self.name,
                self.frozen_filesystems,
                (time.monotonic() - frozen) * 1000,
            )
        self.checkpoint_xml = self._virsh("checkpoint-dumpxml", self.domain, self.checkpoint)

    def _begin_job(self, checkpoint: str) -> None:
        try:
            self._backup_begin(checkpoint)
        except SourceError as exc:
            if not self.incremental:
                raise
            # A checkpoint is known but its bitmap is not usable (a disk restored or copied
            # without it; a redefinition of a checkpoint whose bitmap is gone): the backup still
            # runs, and the changes are found by comparing hashes.
            for disk, cp in self.incremental.items():
                self.hint_lost[disk] = (
                    f"backup-begin from checkpoint {cp!r} failed ({_problem(exc, self.name)})"
                )
            self.incremental.clear()
            self._forget_redefined()
            self._backup_begin(checkpoint)

    def _backup_begin(self, checkpoint: str) -> None:
        backup = os.path.join(self._tmp, "backup.xml")
        disks = []
        for d in self.all_disks:
            if d not in self.disks:
                disks.append(f"<disk name={quoteattr(d)} backup='no'/>")
                continue
            cp = self.incremental.get(d)
            mode = (
                f"backupmode='incremental' incremental={quoteattr(cp)}"
                if cp
                else ("backupmode='full'")
            )
            scratch = os.path.join(self._tmp, f"scratch-{d}.qcow2")
            disks.append(
                f"<disk name={quoteattr(d)} backup='yes' type='file' {mode}>"
                f"<scratch file={quoteattr(scratch)}/></disk>"
            )
        with open(backup, "w") as f:
            f.write(
                "<domainbackup mode='pull'>"
                f"<server transport='unix' socket={quoteattr(self.socket)}/>"
                f"<disks>{''.join(disks)}</disks></domainbackup>"
            )
        self._virsh("backup-begin", self.domain, backup, checkpoint)
        self._started = True

    def _forget_redefined(self) -> None:
        """A checkpoint this run redefined that proved unusable is removed again (metadata
        only), so libvirt is left as it was."""
        for cp in self._redefined:
            with contextlib.suppress(SourceError):
                self._virsh("checkpoint-delete", self.domain, cp, "--metadata")
        self._redefined.clear()

    def running(self) -> bool:
        return "Backup" in self._virsh("domjobinfo", self.domain)

    def disk(self, name: str, *, owner: bool = False) -> LibvirtSource:
        """The view of disk ``name``; with ``owner`` its close ends the whole job."""
        return LibvirtSource(self, name, owner=owner)

    def close(self) -> None:
        """End the backup job (libvirt removes its scratch files) and remove the private
        directory."""
        if self._started:
            try:
                self._virsh("domjobabort", self.domain)
            except SourceError as exc:
                if "no job is active" not in str(exc):  # else it ended already: nothing to end
                    log.warning("%s; end the job with 'virsh domjobabort'", exc)
            self._started = False
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = ""


def _problem(exc: SourceError, subject: str) -> str:
    return str(exc).removeprefix(f"{subject}: ")


class LibvirtSource:
    """One disk of a running libvirt domain, frozen at its job's ``backup-begin``."""

    def __init__(self, job: LibvirtJob, disk: str, *, owner: bool = False) -> None:
        self.job, self.disk_name, self._owner = job, disk, owner
        self.name = f"libvirt:{job.domain}/{disk}"
        export = urllib.parse.quote(disk)
        try:
            self._nbd: NbdSource | None = NbdSource(
                f"nbd+unix:///{export}?socket={urllib.parse.quote(job.socket)}"
            )
        except BaseException:
            if owner:
                job.close()
            raise

    def _fail(self, problem: str) -> SourceError:
        return SourceError(f"{self.name}: {problem}")

    def close(self) -> None:
        if self._nbd is not None:
            with contextlib.suppress(SourceError):
                self._nbd.close()
            self._nbd = None
        if self._owner:
            self.job.close()

    # -- change hint ---------------------------------------------------------------------------
    def checkpoint_hint(self) -> tuple[Extents, str] | str:
        """The writes since the base's checkpoint (the job's ``backup-DISK`` bitmap) and the
        checkpoint's name, or why there is none (the caller compares hashes)."""
        cp = self.job.incremental.get(self.disk_name)
        if not cp:
            return self.job.hint_lost.get(self.disk_name) or (
                "the base archive names no libvirt checkpoint"
            )
        return self._src.dirty_extents("backup-" + self.disk_name), cp

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
            "domain": self.job.domain,
            "disk": self.disk_name,
            "reader": "libvirt pull-mode backup",
            "checkpoint": self.job.checkpoint,
            # kept so the checkpoint can be redefined (checkpoint-create --redefine) after libvirt
            # lost it, e.g. the domain was undefined and defined again
            "checkpoint_xml": self.job.checkpoint_xml,
            "incremental_from": self.job.incremental.get(self.disk_name),
            # quiesced through the guest agent (--fsfreeze), and how many filesystems it froze
            "fsfreeze": bool(self.job.frozen_filesystems),
            "frozen_filesystems": self.job.frozen_filesystems,
            "block_size_max": self._src.info.details["block_size_max"],
        }
        return SourceInfo("libvirt", self.name, details)

    def identity(self) -> tuple[object, ...]:
        # The export stays the point in time only while the job runs: one that ended (scratch
        # full, aborted from outside) makes the read untrustworthy.
        if not self.job.running():
            raise self._ended()
        return (self._src.size,)

    def _ended(self) -> SourceError:
        return self._fail(
            "the backup job ended while the disk was read, so the view may not be one point "
            "in time; give the scratch directory room for every block the guest overwrites "
            "(--scratch) and retry"
        )

    def data_extents(self) -> Extents:
        return self._src.data_extents()

    def physical_map(self) -> PhysicalMap:
        return PhysicalMap.unknown(self._src.size)

    def dirty_extents(self, bitmap: str) -> Extents:
        return self._src.dirty_extents(bitmap)

    def read_into(self, offset: int, buf: memoryview) -> None:
        try:
            self._src.read_into(offset, buf)
        except SourceError:
            # the export goes with the job: say why, rather than "connection failed"
            if not self.job.running():
                raise self._ended() from None
            raise


def open_libvirt(address: str, base_details: Mapping[str, Any] | None = None) -> LibvirtSource:
    """One disk in a job of its own, ended when the source is closed."""
    addr = parse_libvirt(address)
    job = LibvirtJob(
        addr.domain, [addr.disk], {addr.disk: base_details}, addr.scratch, addr.fsfreeze
    )
    return job.disk(addr.disk, owner=True)
