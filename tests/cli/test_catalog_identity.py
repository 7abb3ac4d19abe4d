"""Archives are identified by their id, not by where they were written: nightly ``backup --force``
to one file, prune, restore by id and by time, locations written over outside the catalog, and
catalog rebuild, all through the console entry point on real archives."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys

import pytest

from volpack.cli import main
from volpack.errors import EXIT_CATALOG, EXIT_MEDIUM, EXIT_OK, EXIT_WARNING


def make_volume(path, seed: int) -> str:
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    change_volume(str(path), seed)
    return str(path)


def change_volume(path: str, seed: int) -> None:
    """Write a distinct pattern at three places, so each night's archive differs."""
    with open(path, "r+b") as f:
        for at in (0, 3 << 20, (8 << 20) - 65536):
            f.seek(at)
            f.write(bytes([seed % 251 + 1]) * 65536)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def backup(capsys, src: str, dst, *extra: str) -> dict:
    code, out, err = run(capsys, "backup", "--allow-mounted", "--json", *extra, src, str(dst))
    assert code == EXIT_OK, err
    return json.loads(out)


def listed(capsys, *extra: str) -> list[dict]:
    code, out, err = run(capsys, "list", "--json", *extra)
    assert code == EXIT_OK, err
    return json.loads(out)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("volpack: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLPACK_CATALOG", str(tmp_path / "catalog.sqlite"))
    media = tmp_path / "media"
    media.mkdir()
    return tmp_path, media, make_volume(tmp_path / "disk.img", 1)


def nightly(capsys, src: str, dst, tmp, nights: int = 3) -> list[dict]:
    """``backup disk.img disk.vpk --force`` on each of ``nights`` nights, the volume changing in
    between; a copy of the volume as it was each night is kept for comparison."""
    results = []
    for n in range(nights):
        change_volume(src, 10 + n)
        shutil.copyfile(src, tmp / f"night{n}.img")
        results.append(backup(capsys, src, dst, "--force"))
    return results


def test_nightly_force_backups_then_prune_keep_last_1_keeps_the_kept_archive_file(env, capsys):
    tmp, media, src = env
    results = nightly(capsys, src, media / "disk.vpk", tmp)
    rows = listed(capsys)
    assert [r["uuid"] for r in rows] == [r["archive_uuid"] for r in results]
    assert [r["is_superseded"] for r in rows] == [True, True, False]
    assert rows[0]["superseded"][0]["by"] == results[1]["archive_uuid"]
    assert rows[0]["urls"] == [] and rows[2]["urls"] == [str(media / "disk.vpk")]
    code, out, _ = run(capsys, "list")
    assert out.count("superseded:") == 2
    code, out, err = run(capsys, "prune", "--keep-last", "1")
    assert code == EXIT_OK, err
    assert "keep 1, delete 0, forget 2 superseded" in out
    assert (media / "disk.vpk").exists()
    assert [r["uuid"] for r in listed(capsys)] == [results[2]["archive_uuid"]]
    code, _, err = run(capsys, "restore", results[2]["archive_uuid"][:8], str(tmp / "back.img"))
    assert code == EXIT_OK, err
    assert filecmp.cmp(tmp / "night2.img", tmp / "back.img", shallow=False)
    code, _, err = run(capsys, "verify", str(media / "disk.vpk"))
    assert code == EXIT_OK, err


def test_restore_by_first_id_after_in_place_backups_is_refused_before_the_target_is_touched(
    env, capsys
):
    tmp, media, src = env
    results = nightly(capsys, src, media / "disk.vpk", tmp)
    first, newest = results[0]["archive_uuid"], results[2]["archive_uuid"]
    target = tmp / "target.img"
    target.write_bytes(b"precious" * 1000)
    code, _, err = run(capsys, "restore", "--force", first, str(target))
    assert code == EXIT_CATALOG
    line = one_line(err)
    assert first in line and "overwritten by archive " + results[1]["archive_uuid"] in line
    assert newest[:8] in line  # the archive that is there now, and how to pick it
    assert target.read_bytes() == b"precious" * 1000


def test_restore_by_id_reads_the_id_on_the_medium_when_the_catalog_was_not_told(env, capsys):
    tmp, media, src = env
    mine = backup(capsys, src, media / "a.vpk")["archive_uuid"]
    change_volume(src, 99)
    other = tmp / "other.sqlite"
    theirs = backup(capsys, src, media / "a.vpk", "--force", "--catalog", str(other))
    code, _, err = run(capsys, "restore", mine[:8], str(tmp / "r.img"))
    assert code == EXIT_CATALOG
    line = one_line(err)
    assert f"holds archive {theirs['archive_uuid']}" in line and mine in line
    assert "nothing was written" in line and str(media / "a.vpk") in line
    assert not (tmp / "r.img").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith("r.img")]  # no temporary either


def test_restore_volume_at_time_picks_that_time_or_refuses_an_overwritten_one(env, capsys):
    tmp, media, src = env
    change_volume(src, 50)
    shutil.copyfile(src, tmp / "weekly.img")
    weekly = backup(capsys, src, media / "weekly.vpk")
    results = nightly(capsys, src, media / "disk.vpk", tmp, nights=2)
    t = [weekly["created_ns"]] + [r["created_ns"] for r in results]

    def at(a: int, b: int) -> str:
        return f"@{(a + b) / 2e9}"

    code, _, err = run(capsys, "restore", "--volume", src, "--at", at(t[0], t[1]), str(tmp / "w"))
    assert code == EXIT_OK, err
    assert filecmp.cmp(tmp / "weekly.img", tmp / "w", shallow=False)
    code, _, err = run(capsys, "restore", "--volume", src, "--at", at(t[1], t[2]), str(tmp / "x"))
    assert code == EXIT_CATALOG
    line = one_line(err)
    assert results[0]["archive_uuid"] in line
    assert weekly["archive_uuid"][:8] in line and results[1]["archive_uuid"][:8] in line
    assert not (tmp / "x").exists()
    code, _, err = run(capsys, "restore", "--volume", src, str(tmp / "now"))
    assert code == EXIT_OK, err
    assert filecmp.cmp(tmp / "night1.img", tmp / "now", shallow=False)


def test_restore_volume_at_time_refuses_when_the_medium_holds_another_archive(env, capsys):
    tmp, media, src = env
    mine = backup(capsys, src, media / "a.vpk")["archive_uuid"]
    change_volume(src, 7)
    backup(capsys, src, media / "a.vpk", "--force", "--no-catalog")
    code, _, err = run(capsys, "restore", "--volume", src, str(tmp / "r.img"))
    assert code == EXIT_CATALOG and mine in one_line(err)
    assert not (tmp / "r.img").exists()


@pytest.mark.parametrize("how", ["copied over", "another catalog"])
def test_prune_never_deletes_a_location_overwritten_outside_the_catalog(env, capsys, caplog, how):
    tmp, media, src = env
    ids = []
    for n in range(3):
        change_volume(src, 20 + n)
        ids.append(backup(capsys, src, media / f"a{n}.vpk")["archive_uuid"])
    if how == "copied over":
        shutil.copyfile(media / "a2.vpk", media / "a0.vpk")
        now_there = ids[2]
    else:
        change_volume(src, 30)
        other = str(tmp / "other.sqlite")
        now_there = backup(capsys, src, media / "a0.vpk", "--force", "--catalog", other)[
            "archive_uuid"
        ]
    saved = (media / "a0.vpk").read_bytes()
    code, out, err = run(capsys, "prune", "--keep-last", "1", "--dry-run")
    assert code == EXIT_WARNING and f"holds {now_there} now" in err + caplog.text
    caplog.clear()
    code, out, err = run(capsys, "prune", "--keep-last", "1")
    assert code == EXIT_WARNING, err
    warning = f"{media / 'a0.vpk'}: not deleted: it holds {now_there} now, not archive {ids[0]}"
    assert warning in err + caplog.text
    assert (media / "a0.vpk").read_bytes() == saved
    assert sorted(p.name for p in media.iterdir()) == ["a0.vpk", "a2.vpk"]
    assert [r["uuid"] for r in listed(capsys)] == [ids[2]]


def test_prune_aborts_when_a_kept_archive_was_overwritten_outside_the_catalog(env, capsys):
    tmp, media, src = env
    ids = [backup(capsys, src, media / f"a{n}.vpk")["archive_uuid"] for n in range(2)]
    change_volume(src, 40)
    backup(capsys, src, media / "a1.vpk", "--force", "--no-catalog")
    code, _, err = run(capsys, "prune", "--keep-last", "1")
    assert code == EXIT_MEDIUM
    line = one_line(err)
    assert ids[1] in line and "which the policy keeps" in line and "nothing deleted" in line
    assert sorted(p.name for p in media.iterdir()) == ["a0.vpk", "a1.vpk"]
    assert len(listed(capsys)) == 2


def test_catalog_rebuild_after_in_place_backups_stays_consistent(env, capsys):
    tmp, media, src = env
    results = nightly(capsys, src, media / "disk.vpk", tmp)
    before = listed(capsys)
    code, out, err = run(capsys, "catalog", "rebuild", str(media))
    assert code == EXIT_OK, err
    after = listed(capsys)
    assert [(r["uuid"], r["urls"], r["is_superseded"]) for r in after] == [
        (r["uuid"], r["urls"], r["is_superseded"]) for r in before
    ]
    # A second copy, then written over behind volpack's back: rebuild reads what is there now.
    shutil.copyfile(media / "disk.vpk", media / "copy.vpk")
    assert run(capsys, "catalog", "rebuild", str(media))[0] == EXIT_OK
    assert len(listed(capsys)[2]["urls"]) == 2
    change_volume(src, 60)
    stray = backup(capsys, src, media / "copy.vpk", "--force", "--no-catalog")
    assert run(capsys, "catalog", "rebuild", str(media))[0] == EXIT_OK
    rows = {r["uuid"]: r for r in listed(capsys)}
    assert rows[stray["archive_uuid"]]["urls"] == [str(media / "copy.vpk")]
    assert rows[results[2]["archive_uuid"]]["urls"] == [str(media / "disk.vpk")]
    assert rows[results[2]["archive_uuid"]]["superseded"][0]["url"] == str(media / "copy.vpk")
    assert run(capsys, "prune", "--keep-last", "2")[0] == EXIT_OK
    assert sorted(p.name for p in media.iterdir()) == ["copy.vpk", "disk.vpk"]


def test_show_names_the_archive_that_wrote_over_a_superseded_one(env, capsys):
    tmp, media, src = env
    results = nightly(capsys, src, media / "disk.vpk", tmp, nights=2)
    code, out, _ = run(capsys, "show", results[0]["archive_uuid"])
    assert code == EXIT_OK
    assert f"{media / 'disk.vpk'} overwritten by {results[1]['archive_uuid']}" in out


def _closed_pipe_run(*argv: str) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe whose reader has already gone (like `| head` exiting)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "volpack", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("extra", [(), ("--json",)])
def test_list_into_a_closed_pipe_ends_quietly_with_exit_0(env, capsys, extra):
    tmp, media, src = env
    backup(capsys, src, media / "a.vpk")
    done = _closed_pipe_run("list", *extra)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr == ""


def test_list_piped_into_head_exits_0(env, capsys):
    """More rows than a pipe buffers (64 KiB), so `head` leaves while volpack still writes."""
    from volpack.catalog import ArchiveEntry, Catalog

    tmp, media, src = env
    with Catalog.open(os.environ["VOLPACK_CATALOG"]) as catalog:
        for n in range(1500):
            catalog.add(
                ArchiveEntry(
                    f"{n:08x}-0000-4000-8000-000000000000", 1e9 + n, src, "file", 8 << 20, 4096,
                    n, "1.0", urls=(str(media / f"a{n}.vpk"),),
                )
            )  # fmt: skip
    shell = f"{sys.executable} -m volpack list | head -n 1; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.startswith("ID ") and done.stderr == ""


def test_a_failing_verb_keeps_its_exit_code_when_stdout_is_closed(env, capsys):
    tmp, media, src = env
    done = _closed_pipe_run("show", "ffffffff")
    assert done.returncode == EXIT_CATALOG and "no catalog here" in done.stderr


def test_backup_to_stdout_into_a_closed_pipe_is_still_a_medium_error(env, capsys):
    tmp, media, src = env
    done = _closed_pipe_run("backup", "--allow-mounted", "--no-catalog", src, "-")
    assert done.returncode == EXIT_MEDIUM and "broken pipe" in done.stderr
