"""Backing up a running QEMU's disk over QMP (``qmp:SOCKET#NODE``) through fleecing.

qemu-storage-daemon stands in for the running VM: a qcow2 node with a QMP monitor on a private
socket, and a writable FUSE export of the same node through which the "guest" writes while the
backup runs (QEMU runs one NBD server per process and volpack needs it for its private export,
so the guest's writes come through FUSE). The archive must equal the disk at the transaction;
QEMU and the scratch directory must be as before afterwards, even after volpack is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.integration.nbd_servers import need

from volpack.errors import SourceError
from volpack.extents import Extents
from volpack.source.fleece import QmpSource
from volpack.source.qmp import Qmp

MiB = 1 << 20
SIZE = 64 * MiB
USED = 24 * MiB  # random bytes at the start of the disk; the rest never written


@dataclass
class Vm:
    qmp: Path
    qmp2: Path  # a second monitor: the first is volpack's for the whole backup
    guest: Path  # the node through FUSE: writes here are the guest's writes
    disk: Path
    tmp: Path  # TMPDIR of volpack: the private socket and the default scratch
    proc: subprocess.Popen[bytes]  # the "VM"

    @property
    def address(self) -> str:
        return f"qmp:{self.qmp}#disk"

    def query(self, command: str, arguments: dict | None = None):
        q = Qmp(str(self.qmp))
        try:
            return q.execute(command, arguments)
        finally:
            q.close()

    def bitmaps(self) -> list[tuple[str, bool]]:
        nodes = self.query("query-named-block-nodes", {"flat": True})
        disk = next(n for n in nodes if n["node-name"] == "disk")
        return sorted((b["name"], b["recording"]) for b in disk.get("dirty-bitmaps", []))

    def write(self, offset: int, data: bytes) -> None:
        fd = os.open(self.guest, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def assert_clean(self) -> None:
        """Nothing of volpack left in QEMU but its bitmaps; no scratch or socket directory."""
        assert [e["id"] for e in self.query("query-block-exports")] == ["guest"]
        assert self.query("query-block-jobs") == []
        names = [n["node-name"] for n in self.query("query-named-block-nodes", {"flat": True})]
        assert not [n for n in names if n.startswith("volpack")], names
        assert not [p for p in self.tmp.iterdir() if p.name.startswith("volpack-fleece-")]


@contextlib.contextmanager
def running(tmp_path: Path, disk: Path) -> Iterator[subprocess.Popen[bytes]]:
    """qemu-storage-daemon over ``disk``: two QMP monitors and the guest's FUSE export."""
    qmp, guest = tmp_path / "qmp.sock", tmp_path / "guest.img"
    guest.touch()
    for sock in (qmp, tmp_path / "qmp2.sock"):
        sock.unlink(missing_ok=True)
    argv = [
        "qemu-storage-daemon",
        "--chardev",
        f"socket,path={qmp},server=on,wait=off,id=mon",
        "--monitor",
        "chardev=mon",
        "--chardev",
        f"socket,path={tmp_path / 'qmp2.sock'},server=on,wait=off,id=mon2",
        "--monitor",
        "chardev=mon2",
        "--blockdev",
        json.dumps({"driver": "file", "node-name": "file0", "filename": str(disk)}),
        "--blockdev",
        json.dumps({"driver": "qcow2", "node-name": "disk", "file": "file0"}),
        "--export",
        json.dumps(
            {
                "type": "fuse",
                "id": "guest",
                "node-name": "disk",
                "mountpoint": str(guest),
                "writable": True,
            }
        ),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (qmp.exists() and guest.stat().st_size == SIZE):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.skip(f"qemu-storage-daemon cannot run here (FUSE export): {err.strip()}")
            if time.monotonic() > deadline:
                pytest.fail("qemu-storage-daemon did not start in 20 s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Vm]:
    need("qemu-storage-daemon")
    need("qemu-img")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: the guest's writes need a FUSE export")
    raw = tmp_path / "seed.raw"
    with open(raw, "wb") as f:
        f.truncate(SIZE)
        f.write(random.Random(7).randbytes(USED))
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with running(tmp_path, disk) as proc:
        yield Vm(
            tmp_path / "qmp.sock", tmp_path / "qmp2.sock", tmp_path / "guest.img", disk, tmp, proc
        )


def volpack(vm: Vm, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(vm.tmp)}
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def start_backup(vm: Vm, archive: str, cwd: Path) -> subprocess.Popen[str]:
    """A slow backup (small frames, one thread, strong compression) of the VM's disk."""
    argv = [sys.executable, "-m", "volpack", "backup", vm.address, archive, "--no-catalog"]
    argv += ["--threads", "1", "--frame-size", "1M", "--compress", "zstd:15"]
    env = {**os.environ, "TMPDIR": str(vm.tmp)}
    return subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)


def wait_for_export(vm: Vm, proc: subprocess.Popen[str]) -> None:
    """Until volpack's fleecing export exists (asked through the second monitor): the
    transaction has happened."""
    deadline = time.monotonic() + 30
    q = Qmp(str(vm.qmp2))
    try:
        while not any(
            e["id"].startswith("volpack-export-") for e in q.execute("query-block-exports")
        ):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no fleecing export in 30 s"
            time.sleep(0.005)
    finally:
        q.close()


def restored(vm: Vm, archive: str, cwd: Path) -> bytes:
    r = volpack(vm, "restore", archive, "out.raw", "--force", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return (cwd / "out.raw").read_bytes()


def test_the_archive_equals_the_disk_at_the_transaction_while_the_guest_keeps_writing(tmp_path, vm):
    before = vm.guest.read_bytes()  # nothing writes until the transaction
    proc = start_backup(vm, "a.vpk", tmp_path)
    wait_for_export(vm, proc)
    # The guest overwrites all it holds, front to back, while volpack is stopped (so it reads
    # nearly everything after it was overwritten), then keeps writing at random places until
    # the backup ends.
    proc.send_signal(signal.SIGSTOP)
    rng = random.Random(3)
    writes = 0
    for off in range(0, USED, MiB):
        vm.write(off, rng.randbytes(MiB))
        writes += 1
    proc.send_signal(signal.SIGCONT)
    while proc.poll() is None:
        vm.write(rng.randrange(0, SIZE // 65536) * 65536, rng.randbytes(65536))
        writes += 1
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    after = vm.guest.read_bytes()
    assert after != before and writes >= USED // MiB
    assert restored(vm, "a.vpk", tmp_path) == before
    vm.assert_clean()
    [(name, recording)] = vm.bitmaps()
    assert name.startswith("volpack-") and recording


def test_a_backup_killed_mid_read_leaves_nothing_the_next_run_cannot_clean(tmp_path, vm):
    proc = start_backup(vm, "a.vpk", tmp_path)
    wait_for_export(vm, proc)
    proc.kill()
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    exports = [e["id"] for e in vm.query("query-block-exports")]
    assert any(e.startswith("volpack-export-") for e in exports)  # the kill left it behind
    vm.write(0, b"\x5a" * 65536)
    now = vm.guest.read_bytes()
    r = volpack(vm, "backup", vm.address, "b.vpk", "--no-catalog", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert restored(vm, "b.vpk", tmp_path) == now
    vm.assert_clean()
    # The killed run's bitmap was frozen by the second run: every write is still tracked.
    assert [rec for _, rec in vm.bitmaps()] == [False, True]


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [(signal.SIGINT, 130, "volpack: interrupted"), (signal.SIGTERM, 143, "volpack: terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_mid_backup_tears_everything_down_and_leaves_no_archive(
    tmp_path, vm, sig, code, line
):
    """Ctrl-C, ``kill``, ``timeout`` or a service manager stopping the job: the same cleanup."""
    proc = start_backup(vm, "a.vpk", tmp_path)
    wait_for_export(vm, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err, err
    assert line in err
    assert not (tmp_path / "a.vpk").exists()
    vm.assert_clean()
    assert not list(vm.tmp.iterdir())  # the private socket directory too
    assert all(rec for _, rec in vm.bitmaps())  # a first run freezes nothing


def test_a_copy_before_write_job_that_ends_mid_backup_fails_it_with_exit_3(tmp_path, vm):
    proc = start_backup(vm, "a.vpk", tmp_path)
    wait_for_export(vm, proc)
    proc.send_signal(signal.SIGSTOP)
    # What a full scratch directory does: QEMU ends the job, guest writes reach the view.
    q = Qmp(str(vm.qmp2))
    try:
        [job] = q.execute("query-block-jobs")
        q.execute("block-job-cancel", {"device": job["device"], "force": True})
    finally:
        q.close()
    vm.write(0, b"\x77" * 65536)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and err.count("\n") == 1, err
    assert "copy-before-write job" in err and "--scratch" in err
    assert not (tmp_path / "a.vpk").exists()
    vm.assert_clean()


def test_a_second_backup_through_another_monitor_is_refused_and_the_first_completes(tmp_path, vm):
    before = vm.guest.read_bytes()
    proc = start_backup(vm, "a.vpk", tmp_path)
    wait_for_export(vm, proc)
    proc.send_signal(signal.SIGSTOP)  # still running, whatever the machine's load
    try:
        r = volpack(vm, "backup", f"qmp:{vm.qmp2}#disk", "b.vpk", "--no-catalog", cwd=tmp_path)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "another volpack backup (PID" in r.stderr
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert restored(vm, "a.vpk", tmp_path) == before
    assert not (tmp_path / "b.vpk").exists()
    vm.assert_clean()
    assert [rec for _, rec in vm.bitmaps()] == [True]  # the refused run added none


def test_the_rotated_bitmap_holds_exactly_the_writes_between_two_backups(tmp_path, vm):
    first = QmpSource(vm.address)
    try:
        assert first.info.details["frozen_bitmaps"] == []
        bitmap = first.info.details["bitmap"]
    finally:
        first.close()
    vm.write(3 * MiB, b"\x01" * 4096)  # inside one 64 KiB granule
    vm.write(40 * MiB - 4096, b"\x02" * 8192)  # across two granules
    second = QmpSource(vm.address)
    try:
        assert second.info.details["frozen_bitmaps"] == [bitmap]
        dirty = second.dirty_extents(bitmap)
        assert second.dirty_bitmaps() == {bitmap: dirty}
    finally:
        second.close()
    k64 = 65536
    assert dirty == Extents.from_pairs([(3 * MiB, 3 * MiB + k64), (40 * MiB - k64, 40 * MiB + k64)])
    vm.assert_clean()


def test_a_failed_start_folds_the_new_bitmap_back_into_the_previous_one(tmp_path, vm):
    first = QmpSource(vm.address)
    first.close()
    state = vm.bitmaps()
    # Someone else's NBD server with an export: volpack cannot start its own private one.
    q = Qmp(str(vm.qmp))
    try:
        q.execute(
            "nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(tmp_path / "o")}}}
        )
        q.execute("blockdev-add", {"driver": "null-co", "node-name": "other0", "size": MiB})
        q.execute("block-export-add", {"type": "nbd", "id": "other", "node-name": "other0"})
    finally:
        q.close()
    with pytest.raises(SourceError, match="already runs an NBD server") as exc:
        QmpSource(vm.address)
    assert "\n" not in str(exc.value)
    assert vm.bitmaps() == state  # the same single recording bitmap, nothing frozen
    for command, arguments in (("block-export-del", {"id": "other"}), ("nbd-server-stop", None)):
        with contextlib.suppress(SourceError):
            vm.query(command, arguments)
    assert not [p for p in vm.tmp.iterdir() if p.name.startswith("volpack-")]


def test_a_bitmap_left_inconsistent_by_a_crashed_qemu_is_passed_over_not_trusted(tmp_path, vm):
    first = QmpSource(vm.address)
    first.close()
    [(stale, _)] = vm.bitmaps()
    vm.proc.terminate()  # a clean stop stores the persistent bitmap in the qcow2
    vm.proc.wait()
    with running(tmp_path, vm.disk) as proc:
        assert [b for b, _ in vm.bitmaps()] == [stale]
        proc.kill()  # QEMU dies with the stored bitmap in use: it is inconsistent now
        proc.wait()
    subprocess.run(["umount", "-l", str(vm.guest)], capture_output=True)
    with running(tmp_path, vm.disk) as proc:
        vm.proc = proc
        now = vm.guest.read_bytes()
        r = volpack(vm, "backup", vm.address, "a.vpk", "--no-catalog", "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        details = json.loads(r.stdout)["source"]["details"]
        assert details["frozen_bitmaps"] == []  # the inconsistent one was not frozen or exported
        assert restored(vm, "a.vpk", tmp_path) == now
        nodes = vm.query("query-named-block-nodes", {"flat": True})
        disk = next(n for n in nodes if n["node-name"] == "disk")
        states = {b["name"]: bool(b.get("inconsistent")) for b in disk["dirty-bitmaps"]}
        assert states.pop(stale) is True and list(states.values()) == [False]
        vm.assert_clean()


def test_an_unknown_node_and_a_missing_monitor_are_one_line_and_exit_3(tmp_path, vm):
    r = volpack(vm, "backup", f"qmp:{vm.qmp}#nope", "a.vpk", "--no-catalog", cwd=tmp_path)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "'nope'" in r.stderr and "disk" in r.stderr
    r = volpack(vm, "backup", f"qmp:{tmp_path}/none.sock#disk", "a.vpk", cwd=tmp_path)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot connect to the QMP monitor" in r.stderr
    assert not (tmp_path / "a.vpk").exists()
    r = volpack(vm, "backup", str(vm.disk), "a.vpk", "--scratch", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "only qmp: sources" in r.stderr


def test_scratch_puts_the_overlay_in_the_given_directory_and_removes_it(tmp_path, vm):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "backup", vm.address, "a.vpk", "--no-catalog"]
        + ["--scratch", str(scratch), "--threads", "1", "--frame-size", "1M"]
        + ["--compress", "zstd:15"],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(vm.tmp)},
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_export(vm, proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        assert list(scratch.glob("volpack-fleece-*/scratch.qcow2"))
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert list(scratch.iterdir()) == []
    vm.assert_clean()


def test_an_incremental_of_a_running_qemu_uses_its_rotated_bitmaps_and_restores_the_disk(
    tmp_path, vm
):
    """The second backup names the base: the bitmaps from the one the base started to the one
    this run froze are the (checked) hint; zeroes and rewrites reach the restored chain."""
    r = volpack(vm, "backup", vm.address, "full.vpk", "--no-catalog", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    vm.write(0, bytes(128 << 10))  # the guest zeroes what the full holds as data
    vm.write(40 * MiB, b"\xc3" * (3 * MiB))  # and writes where nothing was
    r = volpack(
        vm, "backup", vm.address, "inc.vpk", "--base", "full.vpk", "--no-catalog", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    changes = json.loads(r.stdout)["changes"]
    assert changes["method"].startswith("bitmap:volpack-"), changes
    # The hinted hash blocks (0, 40-42 MiB) and the sample, not the 24 MiB the disk holds.
    assert changes["read_bytes"] < 12 * MiB, changes
    assert restored(vm, "inc.vpk", tmp_path) == vm.guest.read_bytes()
    vm.assert_clean()
