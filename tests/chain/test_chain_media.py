"""A chain on every medium: three links backed up to the SeaweedFS S3 fixture and restored from
the prefix; a chain on the emulated tape applied in order with ``--apply`` straight from the tape
(the bases are not readable at random there: the whole target is checked against the state the
link records); an incremental piped into ``restore - --apply``."""

from __future__ import annotations

import shutil

import pytest
from chainkit import backup, generation_edits, make_volume, ok, sha, vp

from cli_helpers import one_error_line
from volpack.errors import EXIT_TARGET
from volpack.media import open_writer
from volpack.media.tape import emulator as te

MiB = 1 << 20


@pytest.mark.s3
def test_a_three_link_chain_on_s3_restores_from_its_prefix(s3_bucket, tmp_path):
    volume = tmp_path / "v.img"
    make_volume(volume, 8 * MiB + 4000, seed=11)
    prefix = f"s3://{s3_bucket}/hosts/vm1/"
    copies = []
    for k in range(3):
        if k:
            generation_edits(volume, seed=200 + k)
        backup(volume, f"{prefix}g{k}.vpk", f"{prefix}g{k - 1}.vpk" if k else None)
        copies.append(tmp_path / f"copy{k}.img")
        shutil.copyfile(volume, copies[-1])
    for k in (2, 1):
        target = tmp_path / f"r{k}.img"
        ok("restore", f"{prefix}g{k}.vpk", str(target))
        assert sha(target) == sha(copies[k]), f"generation {k} from S3 differs"
    assert "3 archives" in ok("verify", f"{prefix}g2.vpk", "--chain").stdout
    target = tmp_path / "r1.img"
    ok("restore", f"{prefix}g2.vpk", str(target), "--apply", "--force")
    assert sha(target) == sha(copies[2])


def _to_tape(url: str, archive) -> None:
    """An archive file copied onto the tape as one tape file, through volpack's tape writer."""
    writer = open_writer(url)
    try:
        writer.write(archive.read_bytes())
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def test_a_chain_on_tape_is_applied_in_order_from_the_tape(chain, tmp_path):
    cart = te.create_cartridge(str(tmp_path / "cart"), capacity=64 * MiB, early_warning=MiB)
    drive = str(tmp_path / "drive")
    te.load(drive, cart)
    for k in range(3):
        _to_tape(f"tape+emu:{drive}", chain.archive(k))
    assert len(te.cartridge_files(cart)) == 3
    target = tmp_path / "t.img"
    ok("restore", f"tape+emu:{drive}#1", str(target))
    assert sha(target) == sha(chain.copies[0])
    wrong = tmp_path / "wrong.img"
    shutil.copyfile(target, wrong)
    # generation 2 onto generation 0: refused, with nothing but the tape to check against
    r = vp("restore", f"tape+emu:{drive}#3", str(wrong), "--apply", "--force")
    one_error_line(r, EXIT_TARGET, "base's state", "nothing was written")
    assert sha(wrong) == sha(chain.copies[0])
    for k in (1, 2):
        ok("restore", f"tape+emu:{drive}#{k + 1}", str(target), "--apply", "--force")
        assert sha(target) == sha(chain.copies[k]), f"generation {k} applied from tape differs"


def test_an_incremental_piped_into_restore_apply_changes_the_target(chain, tmp_path):
    target = tmp_path / "t.img"
    shutil.copyfile(chain.copies[1], target)
    data = chain.archive(2).read_bytes()
    r = vp(
        "restore", "-", str(target), "--apply", "--force", "--search", str(chain.home), stdin=data
    )
    assert r.returncode == 0, r.stderr
    assert sha(target) == sha(chain.copies[2])
    # without --search the base is not found: the whole target is hashed instead
    shutil.copyfile(chain.copies[1], target)
    r = vp("restore", "-", str(target), "--apply", "--force", stdin=data)
    assert r.returncode == 0, r.stderr
    assert sha(target) == sha(chain.copies[2])
    shutil.copyfile(chain.copies[0], target)
    r = vp("restore", "-", str(target), "--apply", "--force", stdin=data)
    one_error_line(r, EXIT_TARGET, "hashed whole", "nothing was written")
    assert sha(target) == sha(chain.copies[0])
