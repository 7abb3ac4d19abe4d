"""Sealed archives through every verb, from the command line: backup seals, restore opens from a
file, a pipe and S3; verify without a key checks the media and says so, with a key everything;
info shows public fields only without a key; serve offers the volume to a real NBD client. A wrong
or missing key is one line with its exit code and leaves the target untouched."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import forge
import pytest
from sealed_cases import FRAME, SECRET_TEXT

from cli_helpers import one_error_line

VP = [sys.executable, "-m", "volpack"]


def vp(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VOLPACK_PASSPHRASE"}
    return subprocess.run([*VP, *args], capture_output=True, text=True, env=env, **kw)


def ok(*args: str) -> subprocess.CompletedProcess:
    r = vp(*args)
    assert r.returncode == 0, r.stderr
    return r


def test_backup_to_a_file_restores_exactly_with_the_identity_or_the_key_file(
    volume, test_keys, tmp_path
):
    a = tmp_path / "a.vpk"
    ok(
        "backup",
        volume,
        str(a),
        "--no-catalog",
        "--recipient",
        test_keys.recipient,
        "--key-file",
        test_keys.key_file,
        "--frame-size",
        "64K",
    )
    for key in (["-i", test_keys.identity_file], ["--key-file", test_keys.key_file]):
        out = tmp_path / "out.img"
        ok("restore", str(a), str(out), *key)
        assert out.read_bytes() == pathlib.Path(volume).read_bytes()
        out.unlink()


def test_backup_to_a_pipe_restores_from_a_pipe(volume, test_keys, tmp_path):
    out = tmp_path / "out.img"
    backup = subprocess.Popen(
        [*VP, "backup", volume, "-", "--no-catalog", "--recipient", test_keys.recipient],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    r = subprocess.run(
        [*VP, "restore", "-", str(out), "-i", test_keys.identity_file],
        stdin=backup.stdout,
        capture_output=True,
        text=True,
    )
    backup.stdout.close()
    assert backup.wait() == 0 and r.returncode == 0, r.stderr
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()


def test_a_passphrase_file_seals_and_opens(volume, test_keys, tmp_path):
    a, out = tmp_path / "p.vpk", tmp_path / "out.img"
    ok("backup", volume, str(a), "--no-catalog", "--passphrase-file", test_keys.passphrase_file)
    ok("restore", str(a), str(out), "--passphrase-file", test_keys.passphrase_file)
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()


@pytest.mark.s3
def test_a_sealed_archive_on_s3_restores_and_verifies_with_the_key(
    volume, test_keys, tmp_path, s3_bucket
):
    url = f"s3://{s3_bucket}/sealed.vpk"
    ok("backup", volume, url, "--no-catalog", "--key-file", test_keys.key_file)
    out = tmp_path / "out.img"
    ok("restore", url, str(out), "--key-file", test_keys.key_file)
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()
    assert "authenticated" in ok("verify", url, "--key-file", test_keys.key_file).stdout
    one_error_line(
        vp("restore", url, str(tmp_path / "x.img"), "--key-file", test_keys.other_key_file),
        12,
        "key slot",
    )
    assert not (tmp_path / "x.img").exists()


def test_the_archive_holds_none_of_the_volume_its_text_or_its_description_in_clear(sealed, volume):
    data = pathlib.Path(sealed).read_bytes()
    plain = pathlib.Path(volume).read_bytes()
    assert SECRET_TEXT % 1234 not in data
    assert os.path.basename(volume).encode() not in data and b"volpack 0" not in data
    # No 64-byte piece of the incompressible data survives.
    for at in range(1 << 20, (1 << 20) + (600 << 10), 64 << 10):
        assert plain[at : at + 64] not in data


def test_two_archives_of_one_volume_share_no_data_key_and_no_ciphertext(
    volume, test_keys, tmp_path
):
    import volpack

    blobs = []
    for name in ("x", "y"):
        volpack.backup(
            volume,
            str(tmp_path / name),
            frame_size=FRAME,
            encrypt=test_keys.encrypt(recipient=False),
        )
        blobs.append((tmp_path / name).read_bytes())
    # Every sealed byte: head records after KEYS, frame bodies, the sealed hash table.
    x, y = (
        b"".join([*(pl for _, pl in p.records[1:]), *(s for *_, s in p.frames), p.hash_part])
        for p in map(forge.split, blobs)
    )
    pieces = {x[i : i + 16] for i in range(0, len(x) - 16, 16)}
    assert not any(y[i : i + 16] in pieces for i in range(len(y) - 16))


def test_verify_without_a_key_checks_the_media_and_says_nothing_was_authenticated(sealed):
    r = ok("verify", sealed, "--json")
    result = json.loads(r.stdout)
    assert result["encrypted"] is True and result["authenticated"] is False
    text = ok("verify", sealed).stdout
    assert "media ok" in text and "not authenticated" in text


def test_verify_with_the_key_authenticates_every_record(sealed, test_keys):
    result = json.loads(ok("verify", sealed, "--json", "--key-file", test_keys.key_file).stdout)
    assert result["encrypted"] is True and result["authenticated"] is True
    assert result["state_digest"]


def test_info_without_a_key_shows_only_public_fields(sealed, test_keys, volume):
    public = json.loads(ok("info", sealed, "--json").stdout)
    assert public["encrypted"] is True and public["format"] == "1.4"
    assert public["source"] == {} and public["detection"] == {}
    assert public["tool"] is None and public["host"] is None and public["devices"] is None
    assert public["volume_size"] == os.path.getsize(volume)
    assert "sealed" in ok("info", sealed).stdout
    opened = json.loads(ok("info", sealed, "--json", "--key-file", test_keys.key_file).stdout)
    assert opened["source"]["path"] == volume and opened["tool"].startswith("volpack")


def test_unencrypted_archives_are_format_1_4_like_sealed_ones_without_the_sealing(volume, tmp_path):
    ok("backup", volume, str(tmp_path / "plain.vpk"), "--no-catalog")
    info = json.loads(ok("info", str(tmp_path / "plain.vpk"), "--json").stdout)
    assert info["format"] == "1.4" and info["encrypted"] is False


def test_a_wrong_key_is_one_line_exit_12_and_the_target_is_untouched(sealed, test_keys, tmp_path):
    target = tmp_path / "t.img"
    target.write_bytes(b"keep me" * 1000)
    r = vp("restore", sealed, str(target), "--force", "-i", test_keys.other_identity_file)
    one_error_line(r, 12, "key slot", "identit")
    assert target.read_bytes() == b"keep me" * 1000
    r = vp("restore", sealed, str(tmp_path / "new.img"), "--key-file", test_keys.other_key_file)
    one_error_line(r, 12)
    assert not (tmp_path / "new.img").exists()
    with open(sealed, "rb") as f:
        r = vp(
            "restore", "-", str(tmp_path / "new.img"), "-i", test_keys.other_identity_file, stdin=f
        )
    one_error_line(r, 12)
    assert not (tmp_path / "new.img").exists()


def test_no_key_is_exit_2_naming_the_options_before_the_target_is_touched(sealed, tmp_path):
    r = vp("restore", sealed, str(tmp_path / "new.img"), stdin=subprocess.DEVNULL)
    one_error_line(r, 2, "encrypted", "--identity")
    assert not (tmp_path / "new.img").exists()


def test_an_incremental_on_a_sealed_base_needs_keys_and_the_same_chain(volume, test_keys, tmp_path):
    full = tmp_path / "full.vpk"
    ok("backup", volume, str(full), "--no-catalog", "--key-file", test_keys.key_file)
    # unsealed incremental on a sealed base: refused
    one_error_line(
        vp("backup", volume, str(tmp_path / "i.vpk"), "--no-catalog", "--base", str(full)), 2
    )
    assert not (tmp_path / "i.vpk").exists()


def test_serve_offers_a_sealed_archive_to_a_real_nbd_client(sealed, test_keys, volume, tmp_path):
    import shutil

    if not shutil.which("nbdcopy"):
        pytest.skip("nbdcopy is not installed (scripts/test.sh installs it)")
    sock = tmp_path / "nbd.sock"
    proc = subprocess.Popen(
        [*VP, "serve", "--socket", str(sock), "--key-file", test_keys.key_file, sealed],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "volpack serve did not start"
            time.sleep(0.1)
        out = tmp_path / "copy.img"
        name = os.path.basename(sealed)[: -len(".vpk")]
        r = subprocess.run(
            ["nbdcopy", f"nbd+unix:///{name}?socket={sock}", str(out)], capture_output=True
        )
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == pathlib.Path(volume).read_bytes()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_serve_with_a_wrong_key_refuses_to_start_with_exit_12(sealed, test_keys, tmp_path):
    r = vp("serve", "--socket", str(tmp_path / "s"), "--key-file", test_keys.other_key_file, sealed)
    one_error_line(r, 12)


def test_mount_offers_a_sealed_archive_as_a_file_with_the_key(sealed, test_keys, volume, tmp_path):
    import signal

    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing (no FUSE in this machine)")
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"mfusepy/libfuse3 not usable: {exc}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*VP, "mount", sealed, str(mnt), "--key-file", test_keys.key_file, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "volpack mount did not mount"
            time.sleep(0.05)
        (name,) = os.listdir(mnt)
        assert (mnt / name).read_bytes() == pathlib.Path(volume).read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def test_a_sealed_archive_spans_emulated_tapes_and_restores_with_the_key(
    volume, test_keys, tmp_path
):
    import volpack
    from volpack.media.tape import emulator as te
    from volpack.media.tape import tape_url

    carts = [
        te.create_cartridge(str(tmp_path / f"c{i}"), capacity=2 << 20, early_warning=1 << 20)
        for i in range(4)
    ]
    drive = str(tmp_path / "drive")
    te.load(drive, carts[0])
    nxt = f"{sys.executable} -m volpack.media.tape next {drive} " + " ".join(carts)
    url = tape_url(f"tape+emu:{drive}", next_command=nxt)
    result = volpack.backup(volume, url, frame_size=FRAME, encrypt=test_keys.encrypt())
    assert len([c for c in carts if te.cartridge_files(c)]) >= 2
    te.load(drive, carts[0])
    out = tmp_path / "out.img"
    volpack.restore(url, str(out), keyring=test_keys.keyring(identity=True))
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()
    te.load(drive, carts[0])
    assert volpack.verify(url).digest == result.digest  # media check without a key


def test_chacha20_poly1305_archives_record_their_cipher_and_restore(volume, test_keys, tmp_path):
    a, out = tmp_path / "c.vpk", tmp_path / "out.img"
    ok(
        "backup",
        volume,
        str(a),
        "--no-catalog",
        "--key-file",
        test_keys.key_file,
        "--cipher",
        "chacha20-poly1305",
    )
    keys_at = 256 + 32  # the KEYS payload: cipher first
    assert a.read_bytes()[keys_at : keys_at + 2] == (2).to_bytes(2, "little")
    ok("restore", str(a), str(out), "--key-file", test_keys.key_file)
    assert out.read_bytes() == pathlib.Path(volume).read_bytes()


def test_info_shows_each_key_slot_s_kind_and_fingerprint_as_the_catalog_records_them(
    volume, test_keys, tmp_path
):
    catalog = str(tmp_path / "cat.sqlite")
    a = str(tmp_path / "a.vpk")
    keys = ("--recipient", test_keys.recipient, "--key-file", test_keys.key_file)
    ok("backup", volume, a, "--catalog", catalog, *keys)
    [entry] = json.loads(ok("list", "--json", "--catalog", catalog).stdout)
    assert len(entry["key_slots"]) == 2
    expected = [{"kind": fp.split(":")[0], "fingerprint": fp} for fp in entry["key_slots"]]
    assert {e["kind"] for e in expected} == {"x25519", "key-file"}
    secrets = [
        pathlib.Path(test_keys.key_file).read_bytes().hex(),
        pathlib.Path(test_keys.identity_file).read_text().split("AGE-SECRET-KEY-")[1][:20],
    ]
    for args in ((), ("--key-file", test_keys.key_file)):  # without and with a key
        shown = json.loads(ok("info", a, "--json", *args).stdout)
        assert shown["key_slots"] == expected
        text = ok("info", a, *args).stdout
        assert [ln.split()[-1] for ln in text.splitlines() if ln.startswith("key slot")] == [
            e["fingerprint"] for e in expected
        ]
        assert not any(s.lower() in (text + json.dumps(shown)).lower() for s in secrets)
    with open(a, "rb") as stream:  # from a stream: the head's KEYS record
        r = vp("info", "-", "--json", stdin=stream)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key_slots"] == expected
    plain = str(tmp_path / "p.vpk")
    ok("backup", volume, plain, "--no-catalog")
    assert json.loads(ok("info", plain, "--json").stdout)["key_slots"] is None
    assert "key slot" not in ok("info", plain).stdout
