"""Incremental chains in the catalog through the console entry point, on real archives written by
``volpack backup --base``: what backup and ``catalog rebuild`` record, ``list --chains``, prune
keeping every base the newest archive needs (file medium and the SeaweedFS S3 fixture), prune
stopping on a chain in doubt, and ``--base latest`` when the newest archive is gone or on tape."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3

import pytest

from volpack.cli import main
from volpack.errors import EXIT_CATALOG, EXIT_CHAIN, EXIT_OK, EXIT_WARNING
from volpack.pipeline.chain import open_chain

MiB = 1 << 20
CHAIN_FIELDS = (
    "kind",
    "chain_id",
    "chain_seq",
    "base_uuid",
    "base_digest",
    "base_state_digest",
    "state_digest",
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, *words: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("volpack: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


class Volume:
    """A 16 MiB sparse image that changes a little each "night"."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.rnd = random.Random(7)
        with open(self.path, "wb") as f:
            f.truncate(16 * MiB)
            for at in (0, 6 * MiB, 15 * MiB):
                f.seek(at)
                f.write(self.rnd.randbytes(512 << 10))

    def change(self) -> None:
        with open(self.path, "r+b") as f:
            for _ in range(3):
                f.seek(self.rnd.randrange(0, 16 * MiB - 8192, 4096))
                f.write(self.rnd.randbytes(8192))

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


@pytest.fixture
def env(tmp_path, monkeypatch):
    catalog = str(tmp_path / "cat" / "catalog.sqlite")
    monkeypatch.setenv("VOLPACK_CATALOG", catalog)
    media = tmp_path / "media"
    media.mkdir()
    return tmp_path, catalog, media, Volume(tmp_path / "vm.img")


def backup(capsys, vol: Volume, dst, *extra: str) -> dict:
    code, out, err = run(capsys, "backup", "--allow-mounted", "--json", *extra, vol.path, str(dst))
    assert code == EXIT_OK, err
    return json.loads(out)


def nightly(capsys, vol: Volume, where: str, nights: int, first: int = 0) -> list[dict]:
    """A full, then an incremental on ``--base latest`` after each night's changes."""
    done = [backup(capsys, vol, f"{where}d{first}.vpk")]
    for n in range(first + 1, first + nights):
        vol.change()
        done.append(backup(capsys, vol, f"{where}d{n}.vpk", "--base", "latest"))
    return done


def listed(capsys, *extra: str) -> dict[str, dict]:
    code, out, err = run(capsys, "list", "--json", *extra)
    assert code == EXIT_OK, err
    return {e["uuid"]: e for e in json.loads(out)}


def chain_reads_back(url: str, vol: Volume) -> bool:
    with open_chain(url) as view:
        return view.read(0, view.size) == vol.read()


def restores_equal(capsys, url: str, vol: Volume, target) -> bool:
    """``volpack restore`` of ``url`` (its chain found next to it) gives the volume's bytes."""
    code, _, err = run(capsys, "restore", url, str(target))
    assert code == EXIT_OK, err
    with open(target, "rb") as f:
        return f.read() == vol.read()


def test_backup_records_each_link_of_a_chain_and_rebuild_reads_the_same_back(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 3)
    rows = listed(capsys)
    full, i1, i2 = (rows[d["archive_uuid"]] for d in done)
    assert (full["kind"], full["chain_seq"], full["base_uuid"]) == ("full", 0, None)
    assert (i1["kind"], i1["chain_seq"], i1["base_uuid"]) == ("incremental", 1, full["uuid"])
    assert (i2["chain_seq"], i2["base_uuid"], i2["base_digest"]) == (2, i1["uuid"], i1["digest"])
    assert i2["base_state_digest"] == i1["state_digest"] and i2["chain_id"] == full["chain_id"]
    assert all(
        r["state_digest"] == d["state_digest"] for r, d in zip((full, i1, i2), done, strict=True)
    )
    other = str(tmp / "rebuilt.sqlite")
    code, _, err = run(capsys, "catalog", "rebuild", str(media), "--catalog", other)
    assert code == EXIT_OK, err
    again = listed(capsys, "--catalog", other)
    for uid, row in rows.items():
        assert {f: again[uid][f] for f in CHAIN_FIELDS} == {f: row[f] for f in CHAIN_FIELDS}


def test_show_names_an_incremental_s_kind_chain_seq_and_base(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 2)
    code, out, err = run(capsys, "show", done[1]["archive_uuid"][:8])
    assert code == EXIT_OK, err
    assert re.search(r"^kind:\s+incremental$", out, re.M)
    assert re.search(rf"^chain:\s+{done[0]['chain_id']} seq 1$", out, re.M)
    assert re.search(
        rf"^base:\s+{done[0]['archive_uuid']} \(digest {done[0]['digest']}\)", out, re.M
    )


def test_list_chains_draws_full_then_incrementals_with_seq_and_location(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 3)
    code, out, err = run(capsys, "list", "--chains")
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0].startswith(f"chain {done[0]['chain_id'][:8]}") and vol.path in lines[0]
    for n, (line, d) in enumerate(zip(lines[1:4], done, strict=True)):
        assert re.search(rf"(full|incremental)\s+{n}\s+{d['archive_uuid'][:8]}\s", line), line
        assert line.endswith(str(media / f"d{n}.vpk"))
    assert "└─ incremental" in lines[2] and lines[3].index("└─") > lines[2].index("└─")
    assert lines[-1] == "1 chains, 3 archives"
    code, out, _ = run(capsys, "list", "--chains", "--json")
    chains = json.loads(out)
    assert [a["uuid"] for a in chains[0]["archives"]] == [d["archive_uuid"] for d in done]
    assert [a["depth"] for a in chains[0]["archives"]] == [0, 1, 2]
    assert [a["base_state"] for a in chains[0]["archives"]] == ["full", "ok", "ok"]


def test_list_chains_marks_an_incremental_whose_base_the_catalog_lacks(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 2)
    lonely = str(tmp / "lonely.sqlite")
    code, _, err = run(capsys, "catalog", "rebuild", str(media / "d1.vpk"), "--catalog", lonely)
    assert code == EXIT_OK, err
    code, out, _ = run(capsys, "list", "--chains", "--catalog", lonely)
    assert code == EXIT_OK
    assert f"! base {done[0]['archive_uuid'][:8]} not in the catalog" in out


def test_nightly_incrementals_then_prune_keep_last_1_deletes_nothing_the_newest_needs(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 4)
    code, out, err = run(capsys, "prune", "--keep-last", "1")
    assert code == EXIT_OK, err
    assert "keep 4, delete 0" in out
    for lower, upper in zip(done, done[1:], strict=False):
        assert f"{lower['archive_uuid'][:8]}" in out
        assert f"(kept as base of {upper['archive_uuid'][:8]})" in out
    assert sorted(p.name for p in media.iterdir()) == [f"d{n}.vpk" for n in range(4)]
    assert chain_reads_back(str(media / "d3.vpk"), vol)
    assert restores_equal(capsys, str(media / "d3.vpk"), vol, tmp / "r3.img")
    # A new full and one incremental: the old chain is needed by nothing kept any more.
    vol.change()
    new = nightly(capsys, vol, f"{media}/", 2, first=4)
    code, out, err = run(capsys, "prune", "--keep-last", "1", "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert set(report["deleted"]) == {d["archive_uuid"] for d in done}
    assert [k["base_of"] for k in report["keep"]] == [[], [new[1]["archive_uuid"]]]
    assert sorted(p.name for p in media.iterdir()) == ["d4.vpk", "d5.vpk"]
    assert chain_reads_back(str(media / "d5.vpk"), vol)
    assert restores_equal(capsys, str(media / "d5.vpk"), vol, tmp / "r5.img")


def test_prune_after_merge_keeps_the_merged_full_an_incremental_builds_on(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 3)
    code, out, err = run(capsys, "merge", "--json", str(media / "d2.vpk"), str(media / "m2.vpk"))
    assert code == EXIT_OK, err
    rows = listed(capsys)
    merged = next(r for r in rows.values() if r["urls"] == [str(media / "m2.vpk")])
    assert merged["kind"] == "merged" and merged["state_digest"] == done[2]["state_digest"]
    vol.change()
    top = backup(capsys, vol, media / "d3.vpk", "--base", "latest")
    assert top["base_uuid"] == merged["uuid"]
    code, out, err = run(capsys, "prune", "--keep-last", "1", "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert set(report["deleted"]) == {d["archive_uuid"] for d in done}
    assert sorted(p.name for p in media.iterdir()) == ["d3.vpk", "m2.vpk"]
    assert restores_equal(capsys, str(media / "d3.vpk"), vol, tmp / "r.img")


@pytest.mark.s3
def test_prune_on_s3_keeps_every_link_the_newest_incremental_needs(env, capsys, s3_bucket):
    from volpack import media as M

    tmp, catalog, media, vol = env
    prefix = f"s3://{s3_bucket}/vm/"
    done = nightly(capsys, vol, prefix, 3)
    code, out, err = run(capsys, "prune", "--keep-last", "1", "--json")
    assert code == EXIT_OK, err
    assert json.loads(out)["deleted"] == []
    names = [u for u, _, _ in M.list_archives(prefix)]
    assert names == [f"{prefix}d{n}.vpk" for n in range(3)]
    assert chain_reads_back(f"{prefix}d2.vpk", vol)
    assert restores_equal(capsys, f"{prefix}d2.vpk", vol, tmp / "r2.img")
    vol.change()
    nightly(capsys, vol, prefix, 2, first=3)
    code, out, err = run(capsys, "prune", "--keep-last", "1", "--json")
    assert code == EXIT_OK, err
    assert set(json.loads(out)["deleted"]) == {d["archive_uuid"] for d in done}
    assert [u for u, _, _ in M.list_archives(prefix)] == [f"{prefix}d3.vpk", f"{prefix}d4.vpk"]
    assert chain_reads_back(f"{prefix}d4.vpk", vol)
    assert restores_equal(capsys, f"{prefix}d4.vpk", vol, tmp / "r4.img")


def test_prune_stops_with_nothing_deleted_when_the_catalog_lacks_a_kept_incremental_s_base(
    env, capsys
):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 3)
    lonely = str(tmp / "lonely.sqlite")
    for name in ("d0.vpk", "d2.vpk"):  # the middle link is on the medium, not in this catalog
        code, _, err = run(capsys, "catalog", "rebuild", str(media / name), "--catalog", lonely)
        assert code == EXIT_OK, err
    code, _, err = run(capsys, "prune", "--keep-last", "1", "--catalog", lonely)
    assert code == EXIT_CHAIN
    one_line(err, done[2]["archive_uuid"], done[1]["archive_uuid"], "nothing deleted", "rebuild")
    assert sorted(p.name for p in media.iterdir()) == ["d0.vpk", "d1.vpk", "d2.vpk"]


def test_prune_stops_when_the_catalogued_base_is_not_the_archive_the_link_names(env, capsys):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 2)
    with sqlite3.connect(catalog) as db:  # as if another archive had been recorded under its id
        db.execute(
            "UPDATE archives SET digest = ? WHERE uuid = ?", ("0" * 64, done[0]["archive_uuid"])
        )
    code, _, err = run(capsys, "prune", "--keep-last", "1")
    assert code == EXIT_CHAIN
    one_line(err, done[0]["archive_uuid"], "two archives claim it", "nothing deleted")
    assert len(list(media.iterdir())) == 2


def test_rebuild_refuses_a_second_archive_under_a_recorded_id_and_warns(env, capsys, caplog):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 1)
    with sqlite3.connect(catalog) as db:
        db.execute(
            "UPDATE archives SET digest = ? WHERE uuid = ?", ("0" * 64, done[0]["archive_uuid"])
        )
    code, out, _ = run(capsys, "catalog", "rebuild", str(media))
    assert code == EXIT_WARNING
    assert "two different archives claim one id" in out and "recorded 0 archives" in out


def test_base_latest_passes_by_a_newest_archive_that_was_deleted(env, capsys, caplog):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 2)
    os.remove(media / "d1.vpk")
    vol.change()
    made = backup(capsys, vol, media / "d2.vpk", "--base", "latest")
    assert made["base_uuid"] == done[0]["archive_uuid"] and made["chain_seq"] == 1
    assert any(
        "is not at" in r.getMessage() and "deleted" in r.getMessage() for r in caplog.records
    )
    assert chain_reads_back(str(media / "d2.vpk"), vol)


def test_base_latest_passes_by_a_newest_archive_written_over(env, capsys, caplog):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 2)
    other = Volume(tmp / "other.img")
    other.change()
    # Recorded: the catalog marks d1 superseded. Not recorded: the header read there tells.
    backup(capsys, other, media / "d1.vpk", "--force")
    vol.change()
    made = backup(capsys, vol, media / "d2.vpk", "--base", "latest")
    assert made["base_uuid"] == done[0]["archive_uuid"]
    shutil.copy(media / "d2.vpk", media / "keep.vpk")
    backup(capsys, other, media / "d2.vpk", "--force", "--no-catalog")
    vol.change()
    made = backup(capsys, vol, media / "d3.vpk", "--base", "latest")
    assert made["base_uuid"] == done[0]["archive_uuid"]
    assert any("holds archive" in r.getMessage() for r in caplog.records)


def test_base_latest_takes_a_relative_source_path_as_recorded(env, capsys, monkeypatch):
    tmp, catalog, media, vol = env
    done = nightly(capsys, vol, f"{media}/", 1)
    monkeypatch.chdir(tmp)
    code, out, err = run(
        capsys, "backup", "--allow-mounted", "--json", "vm.img", "m1.vpk", "--base", "latest"
    )
    assert code == EXIT_OK, err
    assert json.loads(out)["base_uuid"] == done[0]["archive_uuid"]


def test_base_latest_on_tape_is_refused_naming_base_path(env, capsys):
    from volpack.media.tape import emulator as te

    tmp, catalog, media, vol = env
    drive = str(tmp / "drive")
    te.load(drive, te.create_cartridge(str(tmp / "cart"), capacity=64 * MiB))
    backup(capsys, vol, f"tape+emu:{drive}")
    vol.change()
    code, _, err = run(
        capsys, "backup", "--allow-mounted", vol.path, str(media / "i.vpk"), "--base", "latest"
    )
    assert code == EXIT_CHAIN
    one_line(err, f"tape+emu:{drive}#1", "cannot be read at random", "--base PATH")
    assert not (media / "i.vpk").exists()


def test_base_latest_without_any_live_archive_is_one_clear_line(env, capsys):
    tmp, catalog, media, vol = env
    nightly(capsys, vol, f"{media}/", 1)
    os.remove(media / "d0.vpk")
    code, _, err = run(
        capsys, "backup", "--allow-mounted", vol.path, str(media / "i.vpk"), "--base", "latest"
    )
    assert code == EXIT_CHAIN
    one_line(err, "no archive of", "still exists", "deleted", "--base PATH")
    code, _, err = run(
        capsys,
        "backup",
        "--allow-mounted",
        vol.path,
        str(media / "i.vpk"),
        "--base",
        "latest",
        "--catalog",
        str(tmp / "none.sqlite"),
    )
    assert code == EXIT_CATALOG
    one_line(err, "no catalog here")
