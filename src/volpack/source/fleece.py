"""A running QEMU's disk (``qmp:SOCKET#NODE``) read at one point in time through image fleecing.

Over QMP, one ``transaction`` adds a new persistent dirty bitmap, freezes the previous volpack
bitmaps and starts a copy-before-write job (``blockdev-backup sync=none``) into a scratch qcow2
overlay backed by the live node; the overlay is exported read-only over NBD on a private Unix
socket and read as an NBD source. What it adds to QEMU is removed on close whatever happened;
objects a killed run left behind are removed at the next start. Never writes the guest's disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from volpack.errors import SourceError, UsageError
from volpack.extents import Extents
from volpack.source.base import PhysicalMap, SourceInfo, scratch_option
from volpack.source.nbd import NbdSource
from volpack.source.qmp import Qmp, QmpError

log = logging.getLogger(__name__)

# Every QEMU object volpack adds is named with one of these prefixes, so a later run can tell
# leftovers of a killed run from the VM's own objects.
BITMAP_PREFIX = "volpack-"  # + UTC time the bitmap started recording
FLEECE_PREFIX = "volpack-fleece-"
JOB_PREFIX = "volpack-job-"
EXPORT_PREFIX = "volpack-export-"
EXPORT_NAME = "volpack"
GONE_TIMEOUT = 30.0  # seconds for an export or a cancelled job to go away


@dataclass(frozen=True, slots=True)
class QmpAddress:
    """``qmp:SOCKET#NODE[,scratch=DIR]``: the monitor, the node or drive, the scratch dir."""

    socket: str
    node: str
    scratch: str = ""  # "" = the system temp dir

    @property
    def name(self) -> str:
        return f"qmp:{self.socket}#{self.node}"


def parse_qmp(address: str) -> QmpAddress:
    body = address[len("qmp:") :] if address.startswith("qmp:") else ""
    sock, _, frag = body.rpartition("#")
    node, *opts = frag.split(",")
    scratch = scratch_option(address, opts)
    if not sock or not node:
        raise UsageError(
            f"{address}: write qmp:/path/to/qmp.sock#NODE (a block node name or a drive id)"
        )
    return QmpAddress(sock, node, scratch)


class QmpSource:
    """The fleecing view of one node of a running QEMU, frozen at the transaction."""

    def __init__(self, address: str) -> None:
        self.addr = parse_qmp(address)
        # The owner's PID is in every name, so a later run removes only what a dead run left.
        run = f"{os.getpid():x}-{secrets.token_hex(2)}"
        self._fleece = FLEECE_PREFIX + run
        self._job = JOB_PREFIX + run
        self._export = EXPORT_PREFIX + run
        self._sockdir = ""
        self._scratchdir = ""
        self._nbd: NbdSource | None = None
        self._added: list[str] = []  # what to undo, in order of adding
        self._new_bitmap = ""
        self._frozen: list[str] = []  # volpack bitmaps this run froze
        self._qmp = Qmp(self.addr.socket)
        try:
            self._clean_stale()
            self.node, self._size, drv, bitmaps = self._resolve()
            self._persistent = drv == "qcow2"
            self._start(bitmaps)
        except BaseException:
            self._rollback_bitmaps()
            self.close()
            raise

    # -- start ---------------------------------------------------------------------------------
    def _fail(self, problem: str) -> SourceError:
        return SourceError(f"{self.addr.name}: {problem}")

    def _nodes(self) -> list[dict[str, Any]]:
        return list(self._qmp.execute("query-named-block-nodes", {"flat": True}) or [])

    def _resolve(self) -> tuple[str, int, str, list[dict[str, Any]]]:
        """The node name (a drive id resolves to its top node), size, format, bitmaps."""
        want = self.addr.node
        for dev in self._qmp.execute("query-block") or []:
            inserted = dev.get("inserted") or {}
            if want in (dev.get("device"), dev.get("qdev")) and inserted.get("node-name"):
                want = inserted["node-name"]
        nodes = self._nodes()
        for n in nodes:
            if n.get("node-name") == want:
                size = int(n.get("image", {}).get("virtual-size", -1))
                return want, size, str(n.get("drv", "")), list(n.get("dirty-bitmaps") or [])
        names = sorted(str(n.get("node-name")) for n in nodes if n.get("node-name"))
        raise self._fail(
            f"QEMU has no block node or drive named {self.addr.node!r} (nodes: "
            f"{', '.join(names[:8]) or 'none'}); name a node-name or a drive id"
        )

    def _start(self, bitmaps: list[dict[str, Any]]) -> None:
        q = self._qmp
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise self._fail("qemu-img is not installed; fleecing needs qemu-utils")
        parent = self.addr.scratch or tempfile.gettempdir()
        try:
            self._scratchdir = tempfile.mkdtemp(prefix=FLEECE_PREFIX, dir=parent)
        except OSError as exc:
            raise self._fail(
                f"cannot create the scratch directory in {parent} ({exc.strerror}); "
                "choose another --scratch"
            ) from None
        scratch = os.path.join(self._scratchdir, "scratch.qcow2")
        r = subprocess.run(
            [qemu_img, "create", "-q", "-f", "qcow2", scratch, str(self._size)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no message"])[-1]
            raise self._fail(f"cannot create the scratch overlay {scratch} ({last})")
        q.execute(
            "blockdev-add",
            {
                "driver": "qcow2",
                "node-name": self._fleece,
                # Named, so a later run can find the scratch file of a run killed mid-backup.
                "file": {
                    "driver": "file",
                    "node-name": self._fleece + "-f",
                    "filename": scratch,
                },
                "backing": self.node,
            },
        )
        self._added.append("node")
        # One transaction: the new bitmap starts, the previous ones stop, and copy-before-write
        # starts, all at the same instant of the guest's writes: the point in time.
        # An inconsistent bitmap (QEMU died while it was in use) cannot be frozen or exported,
        # and a busy one belongs to someone else's export: both are left out, never trusted.
        ours = [
            b
            for b in bitmaps
            if str(b.get("name", "")).startswith(BITMAP_PREFIX)
            and not b.get("inconsistent")
            and not b.get("busy")
        ]
        previous = [str(b["name"]) for b in ours if b.get("recording")]
        self._new_bitmap = BITMAP_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        actions: list[dict[str, Any]] = [
            {
                "type": "block-dirty-bitmap-add",
                "data": {
                    "node": self.node,
                    "name": self._new_bitmap,
                    "persistent": self._persistent,
                },
            },
            *(
                {"type": "block-dirty-bitmap-disable", "data": {"node": self.node, "name": b}}
                for b in previous
            ),
            {
                "type": "blockdev-backup",
                "data": {
                    "device": self.node,
                    "target": self._fleece,
                    "sync": "none",
                    "job-id": self._job,
                },
            },
        ]
        q.execute("transaction", {"actions": actions})
        self._frozen = previous
        self._added.append("job")
        self._sockdir = tempfile.mkdtemp(prefix="volpack-qmp-")
        sock = os.path.join(self._sockdir, "nbd.sock")
        self._start_nbd_server(sock)
        self._added.append("server")
        exported = [{"node": self.node, "name": str(b["name"])} for b in ours]
        q.execute(
            "block-export-add",
            {
                "type": "nbd",
                "id": self._export,
                "node-name": self._fleece,
                "name": EXPORT_NAME,
                "writable": False,
                "bitmaps": exported,
            },
        )
        self._added.append("export")
        self._nbd = NbdSource(f"nbd+unix:///{EXPORT_NAME}?socket={urllib.parse.quote(sock)}")

    def _start_nbd_server(self, sock: str) -> None:
        args = {"addr": {"type": "unix", "data": {"path": sock}}}
        try:
            self._qmp.execute("nbd-server-start", args)
        except QmpError as exc:
            exports = self._qmp.execute("query-block-exports") or []
            if any(e.get("type") == "nbd" for e in exports):
                raise self._fail(
                    f"QEMU already runs an NBD server with NBD exports ({exc}); volpack exports the "
                    "fleecing node on its own private server: stop the other one "
                    "(nbd-server-stop) and retry"
                ) from None
            # A server without exports: left by a volpack run that was killed (its exports were
            # removed by _clean_stale), so it is stopped and started anew on a private socket.
            self._qmp.execute("nbd-server-stop")
            self._qmp.execute("nbd-server-start", args)

    # -- teardown ------------------------------------------------------------------------------
    def _wait_gone(self, query: str, key: str, ident: str) -> None:
        deadline = time.monotonic() + GONE_TIMEOUT
        while any(x.get(key) == ident for x in self._qmp.execute(query) or []):
            if time.monotonic() > deadline:
                raise self._fail(f"{ident} did not go away in {GONE_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def _remove_export(self, ident: str) -> None:
        with contextlib.suppress(QmpError):  # already gone
            self._qmp.execute("block-export-del", {"id": ident, "mode": "hard"})
        self._wait_gone("query-block-exports", "id", ident)

    def _cancel_job(self, ident: str) -> None:
        with contextlib.suppress(QmpError):  # already gone
            self._qmp.execute("block-job-cancel", {"device": ident, "force": True})
        self._wait_gone("query-block-jobs", "device", ident)
        with contextlib.suppress(QmpError):  # dismissed by itself (auto-dismiss)
            self._qmp.execute("job-dismiss", {"id": ident})

    def _remove_node(self) -> None:
        self._qmp.execute("blockdev-del", {"node-name": self._fleece})
        with contextlib.suppress(QmpError):  # normally gone with its overlay
            self._qmp.execute("blockdev-del", {"node-name": self._fleece + "-f"})

    def _clean_stale(self) -> None:
        """Remove what a volpack run killed mid-backup left in QEMU: its export, job, fleecing
        node and scratch file (bitmaps need nothing: see _rollback_bitmaps). A run still alive
        (a backup through another monitor) is left alone, and this one refused."""
        live = [
            str(n.get("node-name"))
            for n in self._nodes()
            if str(n.get("node-name", "")).startswith(FLEECE_PREFIX)
            and not _stale(str(n.get("node-name")), FLEECE_PREFIX)
        ]
        if live:
            pid = int(live[0][len(FLEECE_PREFIX) :].split("-")[0], 16)
            raise self._fail(
                f"another volpack backup (PID {pid}, node {live[0]}) is reading this QEMU; "
                "wait for it to finish"
            )
        for e in self._qmp.execute("query-block-exports") or []:
            if _stale(str(e.get("id", "")), EXPORT_PREFIX):
                self._remove_export(str(e["id"]))
        for j in self._qmp.execute("query-block-jobs") or []:
            if _stale(str(j.get("device", "")), JOB_PREFIX):
                self._cancel_job(str(j["device"]))
        nodes = [n for n in self._nodes() if _stale(str(n.get("node-name", "")), FLEECE_PREFIX)]
        files = [str(n.get("file", "")) for n in nodes if n.get("drv") == "file"]
        for n in sorted(nodes, key=lambda n: n.get("drv") == "file"):  # the overlay first
            with contextlib.suppress(QmpError):  # a file node goes with its overlay
                self._qmp.execute("blockdev-del", {"node-name": n["node-name"]})
            log.info("%s: removed %s left by an interrupted run", self.addr.name, n["node-name"])
        for path in files:
            _remove_scratch(path)

    def _rollback_bitmaps(self) -> None:
        """After a failed start, fold the new bitmap back into the ones it froze, so the next
        run sees every write since the last point as dirty. A later failure needs nothing: the
        frozen bitmap and the new one together still cover every write."""
        if not self._new_bitmap or self._nbd is not None:
            return
        with contextlib.suppress(SourceError):
            for b in self._frozen:
                self._qmp.execute("block-dirty-bitmap-enable", {"node": self.node, "name": b})
                self._qmp.execute(
                    "block-dirty-bitmap-merge",
                    {"node": self.node, "target": b, "bitmaps": [self._new_bitmap]},
                )
            self._qmp.execute(
                "block-dirty-bitmap-remove", {"node": self.node, "name": self._new_bitmap}
            )

    def close(self) -> None:
        """Disconnect; remove the export, the NBD server, the job, the node and the scratch
        file; each step is tried even when an earlier one failed."""
        if self._nbd is not None:
            self._nbd.close()
            self._nbd = None
        steps = {
            "export": lambda: self._remove_export(self._export),
            "server": lambda: self._qmp.execute("nbd-server-stop"),
            "job": lambda: self._cancel_job(self._job),
            "node": self._remove_node,
        }
        for what in ("export", "server", "job", "node"):
            if what in self._added:
                try:
                    steps[what]()
                except SourceError as exc:
                    log.warning("%s; the next backup of this node removes it", exc)
        self._added.clear()
        for d in (self._scratchdir, self._sockdir):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        self._scratchdir = self._sockdir = ""
        self._qmp.close()

    # -- the Source protocol -------------------------------------------------------------------
    @property
    def _src(self) -> NbdSource:
        if self._nbd is None:
            raise self._fail("the fleecing export is closed")
        return self._nbd

    @property
    def size(self) -> int:
        return self._src.size

    @property
    def info(self) -> SourceInfo:
        details: dict[str, object] = {
            "node": self.node,
            "reader": "fleecing (blockdev-backup sync=none)",
            "bitmap": self._new_bitmap,
            "frozen_bitmaps": list(self._frozen),
            "persistent_bitmaps": self._persistent,
            "block_size_max": self._src.info.details["block_size_max"],
        }
        return SourceInfo("qmp", self.addr.name, details)

    def identity(self) -> tuple[object, ...]:
        # The view stays frozen only while copy-before-write runs: a job that failed (a full
        # scratch) or was cancelled lets guest writes through, which this makes a change.
        jobs = self._qmp.execute("query-block-jobs") or []
        state = next((str(j.get("status")) for j in jobs if j.get("device") == self._job), "gone")
        if state != "running":
            raise self._fail(
                f"the copy-before-write job {self._job} is {state}, so guest writes may have "
                "reached the view being read; give the scratch directory "
                f"{self.addr.scratch or tempfile.gettempdir()} room for every block the guest "
                "overwrites during the backup (--scratch) and retry"
            )
        return (self._src.size, state)

    def data_extents(self) -> Extents:
        return self._src.data_extents()

    def physical_map(self) -> PhysicalMap:
        # Where QEMU keeps the guest's clusters is not told over NBD.
        return PhysicalMap.unknown(self._src.size)

    def dirty_bitmaps(self) -> dict[str, Extents]:
        """Dirty runs of every volpack bitmap of the node (frozen ones included), exported with
        the fleecing view; ``info.details["frozen_bitmaps"]`` names those this run froze."""
        return self._src.dirty_bitmaps()

    def dirty_extents(self, bitmap: str) -> Extents:
        return self._src.dirty_extents(bitmap)

    def since(self, base_details: dict[str, object]) -> tuple[Extents, str] | str | None:
        """What the guest wrote since the base's transaction: the union of volpack's bitmaps
        from the one the base started on to the one this run froze (names sort by start time).
        None when the base is not of this kind; the reason when a bitmap of that span is gone."""
        first = base_details.get("bitmap")
        if not isinstance(first, str) or not first.startswith(BITMAP_PREFIX):
            return None
        exported = self._src.dirty_bitmaps()
        span = sorted(n for n in exported if n.startswith(BITMAP_PREFIX) and first <= n)
        if not span or span[0] != first or self._new_bitmap in span[:-1]:
            return (
                f"the dirty bitmap {first} the base started is no longer on node {self.node} "
                "(removed, or left inconsistent by a crash), so every block is compared instead"
            )
        dirty = Extents.empty()
        for name in span:
            if name != self._new_bitmap:  # it started at this run's transaction: empty view
                dirty = dirty.union(exported[name])
        return dirty, first

    def read_into(self, offset: int, buf: memoryview) -> None:
        self._src.read_into(offset, buf)


def _stale(name: str, prefix: str) -> bool:
    """Whether ``name`` is one of volpack's, left by a process that no longer runs."""
    if not name.startswith(prefix):
        return False
    try:
        pid = int(name[len(prefix) :].split("-")[0], 16)
    except ValueError:
        return True  # not from a run that names its owner: nobody to wait for
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _remove_scratch(path: str) -> None:
    """Delete a stale scratch overlay, only inside a directory volpack created for it."""
    folder = os.path.dirname(path)
    if path and os.path.basename(folder).startswith(FLEECE_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def open_qmp(address: str) -> QmpSource:
    return QmpSource(address)
