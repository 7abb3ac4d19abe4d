"""Leftovers of killed runs: a real ``python3 -m volpack backup`` is SIGKILLed while it writes its
hidden partial file; a later backup to the same place removes that partial, while the partial of
a writer that is still running is never touched (its lock proves it alive). ``volpack cleanup``
lists and removes the same leftovers in a directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from volpack import partials

MiB = 1 << 20


def vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "volpack", *args], capture_output=True, text=True)


def partial_files(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".partial"))


@pytest.fixture
def dense_image(tmp_path):
    """32 MiB of random data: with zstd level 19 on one thread, a backup of it takes long
    enough (tens of seconds) to be caught mid-write."""
    path = tmp_path / "dense.img"
    with open(path, "wb") as f:
        for _ in range(32):
            f.write(os.urandom(MiB))
    return str(path)


@contextlib.contextmanager
def slow_backup(image: str, archive: str):
    """A running ``volpack backup`` that has started writing its partial; killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "backup", image, archive, "--no-catalog"]
        + ["--compress", "zstd:19", "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # Under nohup the suite ignores SIGHUP and so would the backup (volpack respects it).
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        directory = os.path.dirname(archive)
        deadline = time.monotonic() + 60
        while True:
            names = partial_files(directory)
            if names and os.stat(os.path.join(directory, names[0])).st_size > 0:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the backup never started writing"
            time.sleep(0.01)
        yield proc, os.path.join(directory, names[0])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_signal_mid_write_removes_the_partial_and_says_so_in_one_line(
    tmp_path, dense_image, sig, code
):
    """``kill``, ``timeout`` and service managers send SIGTERM, a dropped SSH session SIGHUP:
    each runs the same cleanup as Ctrl-C (Python's default would end the process and leave the
    partial behind)."""
    os.mkdir(tmp_path / "out")
    archive = str(tmp_path / "out" / "disk.vpk")
    with slow_backup(dense_image, archive) as (proc, _):
        proc.send_signal(sig)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == code, err
    assert err.splitlines()[-1].startswith("volpack: ") and "Traceback" not in err, err
    assert os.listdir(tmp_path / "out") == []


def test_a_backup_after_a_kill_9_mid_write_succeeds_and_leaves_no_partial(tmp_path, dense_image):
    archive = str(tmp_path / "out" / "disk.vpk")
    os.mkdir(tmp_path / "out")
    with slow_backup(dense_image, archive) as (proc, partial):
        assert stat.S_IMODE(os.stat(partial).st_mode) == 0o600
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert os.path.exists(partial), "SIGKILL leaves the partial behind"
    assert not os.path.exists(archive)

    p = vp("backup", dense_image, archive, "--no-catalog", "--compress", "none")
    assert p.returncode == 0, p.stderr
    assert partial_files(tmp_path / "out") == []
    assert os.listdir(tmp_path / "out") == ["disk.vpk"]
    assert "left by an interrupted run" in p.stderr
    assert vp("verify", archive, "--against", dense_image).returncode == 0


def test_a_restore_removes_the_dead_partials_of_its_target(tmp_path, dense_image):
    archive = str(tmp_path / "disk.vpk")
    assert vp("backup", dense_image, archive, "--no-catalog", "--compress", "none").returncode == 0
    target = tmp_path / "restored.img"
    dead = tmp_path / ".restored.img.0123abcd.partial"  # as a killed restore leaves it
    dead.write_bytes(b"half a restore")
    other = tmp_path / ".other.img.0123abcd.partial"  # another name: not this restore's
    other.write_bytes(b"x")
    p = vp("restore", archive, str(target))
    assert p.returncode == 0, p.stderr
    assert not dead.exists() and other.exists()


def test_a_live_writers_partial_survives_a_concurrent_backup_and_cleanup(tmp_path, dense_image):
    out = tmp_path / "out"
    out.mkdir()
    archive = str(out / "disk.vpk")
    with slow_backup(dense_image, archive) as (proc, partial):
        size_before = os.stat(partial).st_size
        p = vp("backup", dense_image, archive, "--no-catalog", "--compress", "none")
        assert p.returncode == 0, p.stderr
        assert os.path.exists(partial) and proc.poll() is None

        p = vp("cleanup", str(out), "--json")
        assert p.returncode == 0, p.stderr
        (item,) = json.loads(p.stdout)["leftovers"]
        assert item["url"] == partial and item["action"] == "kept"
        assert "running writer" in item["reason"]
        assert os.path.exists(partial) and proc.poll() is None
        assert os.stat(partial).st_size >= size_before  # still being written

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    p = vp("cleanup", str(out))
    assert p.returncode == 0, p.stderr
    assert f"removed      {partial}" in p.stdout
    assert os.listdir(out) == ["disk.vpk"]


def test_cleanup_dry_run_lists_then_cleanup_removes_only_dead_partials(tmp_path):
    dead = tmp_path / ".a.vpk.0123abcd.partial"
    dead.write_bytes(b"x" * 5000)
    live = tmp_path / ".b.vpk.89abcdef.partial"
    live.write_bytes(b"y")
    archive = tmp_path / "c.vpk"  # archives and other names are never touched
    archive.write_bytes(b"z")
    lookalike = tmp_path / ".notes.partial"
    lookalike.write_bytes(b"w")
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a running writer holds it
        p = vp("cleanup", str(tmp_path), "--dry-run")
        assert p.returncode == 0, p.stderr
        assert f"would remove {dead} (4.9 KiB)" in p.stdout
        assert f"kept         {live}" in p.stdout
        assert "2 leftover(s); 1 would be removed, 1 kept" in p.stdout
        assert dead.exists()

        p = vp("cleanup", f"file:{tmp_path}")
        assert p.returncode == 0, p.stderr
        assert f"removed      {dead}" in p.stdout and "1 removed (4.9 KiB), 1 kept" in p.stdout
        assert not dead.exists() and live.exists() and archive.exists() and lookalike.exists()
    finally:
        os.close(holder)


def test_cleanup_of_a_file_path_removes_only_the_partials_of_that_name(tmp_path):
    mine = tmp_path / ".a.vpk.0123abcd.partial"
    mine.write_bytes(b"x")
    other = tmp_path / ".b.vpk.0123abcd.partial"
    other.write_bytes(b"x")
    p = vp("cleanup", str(tmp_path / "a.vpk"), "--json")
    assert p.returncode == 0, p.stderr
    assert [i["url"] for i in json.loads(p.stdout)["leftovers"]] == [str(mine)]
    assert not mine.exists() and other.exists()


def test_cleanup_older_than_keeps_younger_dead_partials(tmp_path):
    fresh = tmp_path / ".a.vpk.0123abcd.partial"
    fresh.write_bytes(b"x")
    p = vp("cleanup", str(tmp_path), "--older-than", "1h")
    assert p.returncode == 0, p.stderr
    assert "younger than 1.0 h" in p.stdout and fresh.exists()
    old = time.time() - 7200
    os.utime(fresh, (old, old))
    assert vp("cleanup", str(tmp_path), "--older-than", "1h").returncode == 0
    assert not fresh.exists()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--older-than", "24"], 2, "no unit"),
        (["--older-than", "1y"], 2, "not a duration"),
        (["--older-than=-5m"], 2, "not a duration"),
    ],
)
def test_cleanup_bad_durations_are_one_line_usage_errors(tmp_path, args, code, words):
    p = vp("cleanup", str(tmp_path), *args)
    assert p.returncode == code and p.stderr.count("\n") == 1 and words in p.stderr


def test_cleanup_of_a_missing_directory_is_an_error_not_nothing_there(tmp_path):
    p = vp("cleanup", str(tmp_path / "nowhere" / "a.vpk"))
    assert p.returncode == 7 and p.stderr.count("\n") == 1 and "does not exist" in p.stderr
    p = vp("cleanup", "-")
    assert p.returncode == 2 and p.stderr.count("\n") == 1


def test_a_partial_is_in_use_while_its_writer_holds_it_and_dead_after(tmp_path):
    tmp, fd = partials.create(str(tmp_path / "x.vpk"))
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600 & ~_umask()
        assert partials.probe(tmp).state == partials.IN_USE
        assert partials.remove_if_dead(tmp).state == partials.IN_USE and os.path.exists(tmp)
    finally:
        os.close(fd)
    assert partials.probe(tmp).state == partials.DEAD
    assert partials.remove_if_dead(tmp).state == partials.DEAD and not os.path.exists(tmp)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
