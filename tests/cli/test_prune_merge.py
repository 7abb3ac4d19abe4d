"""``volpack prune --merge`` through the console entry point on real chains written by ``volpack
backup --base latest``: it writes a merged full beside the newest base a kept incremental needs
only as a base, records it, deletes the links it stands in for, and the kept incrementals still
restore byte-exact; dry-run shows the merge and writes nothing; a killed merge deletes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_catalog_chains import (
    Volume,
    backup,
    listed,
    nightly,
    one_line,
    restores_equal,
    run,
)

from volpack.errors import EXIT_OK, EXIT_USAGE

MiB = 1 << 20


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLPACK_CATALOG", str(tmp_path / "cat" / "catalog.sqlite"))
    media = tmp_path / "media"
    media.mkdir()
    return tmp_path, str(tmp_path / "cat" / "catalog.sqlite"), media, Volume(tmp_path / "vm.img")


def names(media) -> list[str]:
    return sorted(p.name for p in media.iterdir())


def test_prune_merge_leaves_fewer_archives_and_the_kept_newest_restores_byte_exact(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 5)
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--dry-run")
    assert code == EXIT_OK, err
    assert "keep 5, would delete 0" in out
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge", "--dry-run")
    assert code == EXIT_OK, err
    top = done[2]["archive_uuid"]
    assert "keep 2, would delete 3, would merge 1 into fulls" in out, out
    assert f"would merge {top[:8]}" in out and f"d2.merged-{top[:8]}.vpk" in out, out
    assert names(media) == [f"d{n}.vpk" for n in range(5)]  # dry-run writes nothing
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge", "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert set(report["deleted"]) == {d["archive_uuid"] for d in done[:3]}
    merged_name = f"d2.merged-{top[:8]}.vpk"
    assert names(media) == sorted(["d3.vpk", "d4.vpk", merged_name])  # 3 archives instead of 5
    [m] = report["merges"]
    rows = listed(capsys)
    assert set(rows) == {m["archive"], done[3]["archive_uuid"], done[4]["archive_uuid"]}
    merged = rows[m["archive"]]
    assert merged["kind"] == "merged" and merged["urls"] == [str(media / merged_name)]
    assert merged["state_digest"] == done[2]["state_digest"]
    assert merged["chain_id"] == done[2]["chain_id"]
    assert restores_equal(capsys, str(media / "d4.vpk"), vol, tmp / "r4.img")
    # The next night's prune finds the chain whole again (the merged full stands in).
    vol.change()
    backup(capsys, vol, media / "d5.vpk", "--base", "latest")
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge", "--json")
    assert code == EXIT_OK, err
    assert restores_equal(capsys, str(media / "d5.vpk"), vol, tmp / "r5.img")


def test_prune_merge_without_a_chain_to_shorten_is_a_plain_prune(env, capsys):
    tmp, catalog, media, vol = env
    nightly(capsys, vol, f"{media}/", 3)
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge")
    # The newest two need only d0, a full: nothing to merge, nothing to delete.
    assert code == EXIT_OK, err
    assert " merge " not in out and "keep 3, delete 0\n" in out
    assert names(media) == ["d0.vpk", "d1.vpk", "d2.vpk"]


def test_prune_merge_stops_with_nothing_deleted_when_the_merged_name_is_taken(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 4)
    top = done[1]["archive_uuid"]
    taken = media / f"d1.merged-{top[:8]}.vpk"
    taken.write_bytes(b"someone else's file")
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge")
    assert code == EXIT_USAGE
    one_line(err, "prune --merge", str(taken), "already exists", top, "nothing deleted", "move it")
    assert names(media) == sorted([f"d{n}.vpk" for n in range(4)] + [taken.name])
    assert taken.read_bytes() == b"someone else's file"
    assert len(listed(capsys)) == 4


def test_a_killed_prune_merge_deletes_nothing(env, capsys):
    tmp, catalog, media, vol = env
    # A volume large enough that the merge takes a moment to kill it in.
    big = Volume(tmp / "big.img")
    with open(big.path, "r+b") as f:
        f.truncate(512 * MiB)
        for at in range(0, 384 * MiB, 8 * MiB):
            f.seek(at)
            f.write(os.urandom(4 * MiB))
    done = nightly(capsys, big, f"{media}/", 4)
    before = names(media)
    env_vars = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "volpack", "prune", "--keep-last", "2", "--merge"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_vars,
    )
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and proc.poll() is None:
        partial = next((p for p in media.iterdir() if p.name.startswith(".")), None)
        if partial is not None:
            break
        time.sleep(0.005)
    if partial is None:
        pytest.fail(f"the merge never showed a partial archive: {proc.communicate()}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    left = [n for n in names(media) if not n.startswith(".")]
    assert left == before  # every link still there, no merged full under its final name
    assert set(listed(capsys)) == {d["archive_uuid"] for d in done}
    # Run again to the end: the interrupted prune left nothing in its way.
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge")
    assert code == EXIT_OK, err
    assert [n for n in names(media) if not n.startswith(".")] == sorted(
        ["d2.vpk", "d3.vpk", f"d1.merged-{done[1]['archive_uuid'][:8]}.vpk"]
    )
    assert restores_equal(capsys, str(media / "d3.vpk"), big, tmp / "r3.img")


@pytest.mark.s3
def test_prune_merge_on_s3_writes_the_merged_full_beside_its_base_and_restores(
    env, capsys, s3_bucket
):
    from volpack import media as M

    tmp, catalog, media, vol = env
    prefix = f"s3://{s3_bucket}/vm/"
    done = nightly(capsys, vol, prefix, 4)
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge", "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert set(report["deleted"]) == {d["archive_uuid"] for d in done[:2]}
    merged = f"{prefix}d1.merged-{done[1]['archive_uuid'][:8]}.vpk"
    assert sorted(u for u, _, _ in M.list_archives(prefix)) == sorted(
        [f"{prefix}d2.vpk", f"{prefix}d3.vpk", merged]
    )
    assert listed(capsys)[report["merges"][0]["archive"]]["urls"] == [merged]
    assert restores_equal(capsys, f"{prefix}d3.vpk", vol, tmp / "r3.img")


def test_prune_merge_of_an_encrypted_chain_stops_with_nothing_deleted_naming_volpack_merge(
    env, capsys
):
    tmp, catalog, media, vol = env
    pw = tmp / "pw"
    pw.write_text("a passphrase for the chain\n")
    key = ("--passphrase-file", str(pw))
    done = [backup(capsys, vol, media / "d0.vpk", *key)]
    for n in range(1, 4):
        vol.change()
        done.append(backup(capsys, vol, media / f"d{n}.vpk", "--base", "latest", *key))
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge")
    assert code == EXIT_USAGE, err
    one_line(err, "encrypted", "nothing deleted", "volpack merge", str(media / "d1.vpk"))
    assert names(media) == [f"d{n}.vpk" for n in range(4)]
    assert set(listed(capsys)) == {d["archive_uuid"] for d in done}


def _planned(catalog_path: str):
    """The prune plan and its medium check for --keep-last 2 --merge, as the CLI makes them."""
    from volpack.catalog.policy import Policy
    from volpack.catalog.prune import check, plan
    from volpack.catalog.store import Catalog

    cat = Catalog.open(catalog_path)
    pplan = plan(cat, Policy(last=2), merge=True)
    return cat, pplan, check(pplan)


def test_prune_merge_refuses_a_merged_full_that_does_not_stand_in_and_deletes_nothing(env, capsys):
    from volpack.catalog.prune_merge import write_merges
    from volpack.errors import ChainError
    from volpack.pipeline.merge import merge

    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 4)
    # Another volume's chain: merging it gives a real, intact merged full of the wrong state.
    other_dir = tmp / "other"
    other_dir.mkdir()
    other = Volume(tmp / "other.img")
    other.change()
    backup(capsys, other, other_dir / "o0.vpk")
    other.change()
    backup(capsys, other, other_dir / "o1.vpk", "--base", str(other_dir / "o0.vpk"))
    cat, pplan, checked = _planned(catalog)
    assert [m.top.uuid for m in pplan.merges] == [done[1]["archive_uuid"]]

    def wrong_chain(src: str, out: str) -> str:
        return merge(str(other_dir / "o1.vpk"), out).url

    before = names(media)
    with cat, pytest.raises(ChainError) as exc:
        write_merges(cat, pplan, checked, wrong_chain)
    msg = str(exc.value)
    assert "does not stand in for " + done[1]["archive_uuid"] in msg and "nothing deleted" in msg
    assert done[1]["state_digest"][:16] in msg and "verify --chain" in msg
    # The wrong full was written but is neither recorded nor used; every link is still there.
    assert set(names(media)) == set(before) | {f"d1.merged-{done[1]['archive_uuid'][:8]}.vpk"}
    assert set(listed(capsys)) >= {d["archive_uuid"] for d in done}
    assert restores_equal(capsys, str(media / "d3.vpk"), vol, tmp / "r3.img")


@pytest.mark.parametrize("meanwhile", ["another-volume", "new-full"])
def test_prune_merge_refuses_when_the_plan_changes_after_merging_and_deletes_nothing(
    env, capsys, meanwhile
):
    from volpack.catalog.prune_merge import replan, write_merges
    from volpack.errors import ChainError
    from volpack.pipeline.chain import Places
    from volpack.pipeline.merge import merge

    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 4)
    cat, pplan, checked = _planned(catalog)
    want = {e.uuid for e in pplan.remove}
    merged = f"d1.merged-{done[1]['archive_uuid'][:8]}.vpk"
    with cat:
        written = write_merges(
            cat, pplan, checked, lambda s, o: merge(s, o, places=Places(catalog=catalog)).url
        )
        # Backups land between the merge and the delete (another job's, or this volume's).
        if meanwhile == "another-volume":  # its own --keep-last 2 drops one of its three
            other = Volume(tmp / "other.img")
            for n in range(3):
                other.change()
                backup(capsys, other, media / f"o{n}.vpk")
            expect = f"the plan changed ({len(want) + 1} archives to delete instead of {len(want)})"
            extra = [f"o{n}.vpk" for n in range(3)]
        else:  # a new full and its incremental: nothing needs the merged full any more
            vol.change()
            backup(capsys, vol, media / "d4.vpk")
            vol.change()
            backup(capsys, vol, media / "d5.vpk", "--base", "latest")
            expect = f"merged full {written[done[1]['archive_uuid']].uuid} is not taken as a base"
            extra = ["d4.vpk", "d5.vpk"]
        with pytest.raises(ChainError) as exc:
            replan(cat, pplan, written, source=None)
    msg = str(exc.value)
    assert expect in msg and "nothing deleted" in msg and "run the prune again" in msg, msg
    assert names(media) == sorted([f"d{n}.vpk" for n in range(4)] + [merged] + extra)
    # Run again: the prune goes through on the new plan and the newest restores.
    code, out, err = run(capsys, "prune", "--keep-last", "2", "--merge")
    assert code == EXIT_OK, err
    newest = "d3.vpk" if meanwhile == "another-volume" else "d5.vpk"
    assert restores_equal(capsys, str(media / newest), vol, tmp / "r.img")
