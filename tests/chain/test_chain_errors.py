"""Broken chains and misused incrementals through the real CLI: each refusal is one line with
its documented exit code, and the target (or the base) is left exactly as it was."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from chainkit import MiB, backup, make_volume, ok, pwrite, sha, vp

import volpack
from cli_helpers import one_error_line
from volpack.errors import EXIT_CHAIN, EXIT_TARGET, EXIT_USAGE


def test_restore_of_an_incremental_whose_base_was_moved_away_names_it_and_writes_nothing(
    chain, tmp_path
):
    g1, g2 = chain.copy_to(tmp_path / "here", 1, 2)
    target = tmp_path / "out.img"
    line = one_error_line(vp("restore", str(g2), str(target)), EXIT_CHAIN, "not found", "--search")
    assert not target.exists()
    os.remove(g1)
    chain.copy_to(tmp_path / "elsewhere", 1)
    # the missing link is g1 now; its base g0 is found neither here nor there
    r = vp("restore", str(g2), str(target), "--search", str(tmp_path / "elsewhere"))
    assert one_error_line(r, EXIT_CHAIN, "not found") != line
    assert not target.exists()
    chain.copy_to(tmp_path / "elsewhere", 0)
    ok("restore", str(g2), str(target), "--search", str(tmp_path / "elsewhere"))
    assert sha(target) == sha(chain.copies[2])


def test_restore_refuses_a_base_replaced_by_another_archive_at_the_same_path(chain, tmp_path):
    g0, g1 = chain.copy_to(tmp_path, 0, 1)
    other = tmp_path / "other.img"
    make_volume(other, 8 * MiB + 12345, seed=8)
    backup(other, g0)
    target = tmp_path / "old.img"
    shutil.copyfile(chain.copies[0], target)
    before = sha(target)
    one_error_line(vp("restore", str(g1), str(target), "--force"), EXIT_CHAIN, str(g1))
    one_error_line(vp("verify", str(g1), "--chain"), EXIT_CHAIN)
    assert sha(target) == before
    # --apply needs no base: the target hashed whole proves the state the link records
    ok("restore", str(g1), str(target), "--apply", "--force")
    assert sha(target) == sha(chain.copies[1])


def test_an_incremental_keeps_its_base_block_size_and_refuses_another(chain, tmp_path):
    out = tmp_path / "inc.vpk"
    r = vp(
        "backup",
        str(chain.copies[1]),
        str(out),
        "--base",
        str(chain.archive(0)),
        "--block-size",
        "4K",
        "--no-catalog",
    )
    one_error_line(r, EXIT_USAGE, "--block-size", "65536")
    assert not out.exists()


def test_an_incremental_read_from_a_pipe_needs_apply_and_leaves_no_target(chain, tmp_path):
    target = tmp_path / "out.img"
    data = chain.archive(1).read_bytes()
    r = vp("restore", "-", str(target), stdin=data)
    one_error_line(r, EXIT_USAGE, "incremental", "--apply")
    assert not target.exists()


def test_apply_onto_a_target_not_in_the_base_state_is_refused_and_changes_nothing(chain, tmp_path):
    target = tmp_path / "t.img"
    shutil.copyfile(chain.copies[0], target)  # generation 0, not 1: g2 does not apply
    before = sha(target)
    r = vp("restore", str(chain.archive(2)), str(target), "--apply", "--force")
    one_error_line(r, EXIT_TARGET, str(target), "base's state", "nothing was written")
    assert sha(target) == before
    # one changed byte in the middle of an otherwise good target is found by the full check
    shutil.copyfile(chain.copies[1], target)
    with open(target, "r+b") as f:
        f.seek(5 * MiB + 3)
        f.write(b"\x01")
    before = sha(target)
    r = vp(
        "restore",
        str(chain.archive(2)),
        str(target),
        "--apply",
        "--force",
        "--verify-target",
        "full",
    )
    one_error_line(r, EXIT_TARGET, f"(bytes {5 * MiB}..)")
    assert sha(target) == before
    # a file of another size is not the base's volume at all
    with open(target, "r+b") as f:
        f.truncate(9 * MiB)
    before = sha(target)
    r = vp("restore", str(chain.archive(2)), str(target), "--apply", "--force")
    one_error_line(r, EXIT_TARGET, str(9 * MiB), "not the base's volume")
    assert sha(target) == before


def test_apply_needs_force_and_leaves_the_target_alone_without_it(chain, tmp_path):
    target = tmp_path / "t.img"
    shutil.copyfile(chain.copies[1], target)
    r = vp("restore", str(chain.archive(2)), str(target), "--apply")
    one_error_line(r, EXIT_TARGET, "--force")
    assert sha(target) == sha(chain.copies[1])
    ok("restore", str(chain.archive(2)), str(target), "--apply", "--force")
    assert sha(target) == sha(chain.copies[2])


def test_merge_refuses_a_full_and_an_onto_outside_the_chain(chain, tmp_path):
    out = tmp_path / "m.vpk"
    one_error_line(vp("merge", str(chain.archive(0)), str(out)), EXIT_USAGE, "full archive")
    r = vp("merge", str(chain.archive(2)), str(out), "--onto", str(chain.archive(2)))
    one_error_line(r, EXIT_USAGE, "--onto", "not a base")
    stranger = tmp_path / "stranger.vpk"
    backup(chain.copies[0], stranger)
    r = vp("merge", str(chain.archive(2)), str(out), "--onto", str(stranger))
    one_error_line(r, EXIT_USAGE, "--onto", "not a base")
    assert not out.exists()


def test_bitmap_without_base_is_a_usage_error(chain, tmp_path):
    out = tmp_path / "x.vpk"
    r = vp("backup", str(chain.copies[0]), str(out), "--bitmap", "daily", "--no-catalog")
    one_error_line(r, EXIT_USAGE, "--bitmap daily", "--base")
    assert not out.exists()


def test_verify_chain_reads_an_unchanged_link_instead_of_skipping_it(tmp_path):
    # An incremental with no changes leaves its base's state; it must still be the link read.
    volume = tmp_path / "v.img"
    make_volume(volume, 4 * MiB, seed=3)
    a = [tmp_path / f"g{k}.vpk" for k in range(3)]
    backup(volume, a[0])
    backup(volume, a[1], str(a[0]))
    pwrite(volume, 1000, b"changed")
    backup(volume, a[2], str(a[1]))
    r = ok("verify", str(a[2]), "--chain")
    assert "3 archives" in r.stdout, r.stdout
    assert str(a[1]) in r.stdout, r.stdout


def test_an_incremental_killed_mid_write_leaves_no_archive_and_the_next_run_works(tmp_path):
    volume, home = tmp_path / "v.img", tmp_path / "archives"
    home.mkdir()
    with open(volume, "wb") as f:
        f.truncate(24 * MiB)
    pwrite(volume, 0, os.urandom(MiB))
    base = home / "g0.vpk"
    backup(volume, base)
    base_sha = sha(base)
    pwrite(volume, 2 * MiB, os.urandom(16 * MiB))
    inc = home / "g1.vpk"
    argv = [sys.executable, "-m", "volpack", "backup", str(volume), str(inc), "--base", str(base)]
    argv += ["--no-catalog", "--compress", "zstd:19", "--threads", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(
            n.endswith(".partial") and (home / n).stat().st_size > 0 for n in os.listdir(home)
        ):
            assert proc.poll() is None, "the incremental ended before it was caught mid-write"
            assert time.monotonic() < deadline, "the incremental never started writing"
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not inc.exists()
    assert sha(base) == base_sha
    ok("backup", str(volume), str(inc), "--base", str(base), "--no-catalog", "--compress", "none")
    assert sorted(os.listdir(home)) == ["g0.vpk", "g1.vpk"]  # the killed run's partial is gone
    target = tmp_path / "out.img"
    ok("restore", str(inc), str(target))
    assert sha(target) == sha(volume)


def test_a_later_unchanged_link_never_stands_in_for_a_missing_base(tmp_path):
    # g2 and g3 changed nothing, so g3 leaves g1's state; with g1 gone it must not be taken for
    # g1's stand-in (g3's base is g2 itself: a loop), while a merged full of that state may.
    volume = tmp_path / "v.img"
    make_volume(volume, 4 * MiB, seed=5)
    a = [tmp_path / f"g{k}.vpk" for k in range(4)]
    backup(volume, a[0])
    pwrite(volume, 3000, b"changed")
    for k in (1, 2, 3):
        backup(volume, a[k], str(a[k - 1]))
    volpack.merge(str(a[3]), str(tmp_path / "full3.vpk"))
    (tmp_path / "away").mkdir()
    os.rename(tmp_path / "full3.vpk", tmp_path / "away" / "full3.vpk")
    os.remove(a[1])
    target = tmp_path / "out.img"
    one_error_line(vp("restore", str(a[2]), str(target)), EXIT_CHAIN, "not found", "--search")
    assert not target.exists()
    os.rename(tmp_path / "away" / "full3.vpk", tmp_path / "full3.vpk")
    ok("restore", str(a[2]), str(target))
    assert sha(target) == sha(volume)


def test_a_damaged_base_with_a_merged_stand_in_restores_right_and_says_so(tmp_path):
    # g1 is damaged where it lies; the merged full of g0+g1 leaves its state, so the restore of
    # g2 is right, but the damage is named (exit 1), never passed over in silence.
    from volpack.errors import EXIT_OK, EXIT_WARNING

    volume = tmp_path / "v.img"
    make_volume(volume, 4 * MiB, seed=6)
    a = [tmp_path / f"g{k}.vpk" for k in range(3)]
    backup(volume, a[0])
    pwrite(volume, 5000, b"one")
    backup(volume, a[1], str(a[0]))
    volpack.merge(str(a[1]), str(tmp_path / "m1.vpk"))
    pwrite(volume, 2 * MiB, b"two")
    backup(volume, a[2], str(a[1]))
    g1_uuid = volpack.open_archive(str(a[1])).uuid
    target = tmp_path / "out.img"
    r = vp("restore", str(a[2]), str(target))  # intact: the named base, no warning
    assert r.returncode == EXIT_OK and "warning" not in r.stderr, r.stderr
    size = os.path.getsize(a[1])
    pwrite(a[1], size - 200, b"\xff" * 16)  # inside the trailer: g1 no longer opens
    os.remove(target)
    r = vp("restore", str(a[2]), str(target))
    assert r.returncode == EXIT_WARNING, r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith("volpack: warning:")]
    assert g1_uuid in line and str(a[1]) in line and "does not open" in line, line
    assert str(tmp_path / "m1.vpk") in line and "same state" in line, line
    assert sha(target) == sha(volume)
    r = vp("verify", str(a[2]), "--chain")
    assert r.returncode == EXIT_WARNING and "does not open" in r.stderr, r.stderr
