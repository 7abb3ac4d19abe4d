"""Format 1.4 (METADIGEST): the digest covers head, frame headers and trailer, not the frames'
stored bytes. Damage to those bytes is still refused by every reader (the frame checksum, exit 4),
a deliberate edit with the checksum recomputed is caught by verify's block hash table (plain) or
the AEAD tag (sealed), and 1.2 / 1.3 archives are still checked by their own rule: the digest over
every byte."""

from __future__ import annotations

import json
import pathlib
import random
import subprocess
import sys
import uuid as uuidlib

import blake3
import pytest

import volpack
from cli_helpers import one_error_line
from spec_digest import spec_digest
from volpack.errors import CorruptArchive
from volpack.format import records as R
from volumes import write_sparse

GOLDEN = pathlib.Path(__file__).parent / "golden"
KiB = 1 << 10


def vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volpack", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def raw_archive(tmp_path_factory) -> bytes:
    """A 1.4 archive of four frames stored raw (random data, --compress none)."""
    d = tmp_path_factory.mktemp("meta")
    rng = random.Random(14)
    vol = str(d / "v.img")
    write_sparse(
        vol, 1 << 20, [(0, rng.randbytes(128 * KiB)), (512 * KiB, rng.randbytes(128 * KiB))]
    )
    arc = d / "v.vpk"
    volpack.backup(vol, str(arc), frame_size=65536, compress="none", allow_mounted=True)
    return arc.read_bytes()


def frame_offsets(data: bytes) -> list[int]:
    """Archive offsets of the frame headers, walked from the head (no gaps, section 1)."""
    pos, out = R.HEADER_SIZE, []
    toff = int.from_bytes(data[-56:-48], "little")
    while pos < toff:
        if data[pos : pos + 4] == b"FRAM":
            out.append(pos)
            pos += R.FRAME_HEADER_SIZE + int.from_bytes(data[pos + 28 : pos + 32], "little")
        else:
            pos += R.RECORD_SIZE + int.from_bytes(data[pos + 8 : pos + 16], "little")
    return out


def rewritten_frame(data: bytes, off: int, *, flip_at: int | None = None, **fields) -> bytes:
    """``data`` with the frame at ``off`` edited (a stored byte flipped at ``flip_at`` bytes into
    its stored bytes, header fields replaced) and its checksum and header checksum recomputed,
    as a forger without keys can: the frame itself passes every check a reader runs on it."""
    names = ["tag", "codec", "flags", "reserved", "seq", "doff", "raw", "stored", "csum"]
    values = dict(zip(names, R.FRAME.unpack_from(data, off), strict=True))
    body = bytearray(data[off + R.FRAME_HEADER_SIZE : off + R.FRAME_HEADER_SIZE + values["stored"]])
    if flip_at is not None:
        body[flip_at] ^= 0x01
        uid = uuidlib.UUID(bytes=data[32:48]).bytes
        values["csum"] = R.checksum(bytes(body), R.frame_seed(uid, values["seq"], values["doff"]))
    values.update(fields)
    head = R.FRAME.pack(*[values[n] for n in names])
    frame = head + R.checksum(head).to_bytes(8, "little") + bytes(body)
    return data[:off] + frame + data[off + len(frame) :]


def flipped(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x20
    return bytes(b)


def test_the_digest_of_a_new_archive_leaves_out_the_frames_stored_bytes(raw_archive):
    toff = int.from_bytes(raw_archive[-56:-48], "little")
    body = raw_archive[toff + R.RECORD_SIZE : -R.FOOTER_SIZE - R.DIGEST_SIZE]
    recorded = raw_archive[-R.FOOTER_SIZE - R.DIGEST_SIZE : -R.FOOTER_SIZE]
    assert R.Header.decode(raw_archive[: R.HEADER_SIZE]).meta_digest
    assert recorded == spec_digest(raw_archive[:toff], body)
    off = frame_offsets(raw_archive)[2]
    # the same digest whatever a frame's stored bytes hold
    edited = flipped(raw_archive, off + R.FRAME_HEADER_SIZE + 1000)
    assert spec_digest(edited[:toff], body) == recorded


@pytest.mark.parametrize("frame", [0, 3])
def test_a_flipped_stored_byte_of_a_1_4_frame_is_refused_by_restore_and_verify_exit_4(
    raw_archive, frame, tmp_path
):
    off = frame_offsets(raw_archive)[frame]
    path = tmp_path / "bad.vpk"
    path.write_bytes(flipped(raw_archive, off + R.FRAME_HEADER_SIZE + 4321))
    one_error_line(vp("verify", str(path)), 4, f"frame {frame} checksum", "damaged")
    out = tmp_path / "out.img"
    one_error_line(vp("restore", str(path), str(out)), 4, f"frame {frame} checksum")
    assert not out.exists()


def test_a_flipped_stored_byte_of_a_compressed_1_4_frame_is_refused_exit_4(tmp_path):
    data = (GOLDEN / "v1.4.vpk").read_bytes()
    off = frame_offsets(data)[1]
    path = tmp_path / "bad.vpk"
    path.write_bytes(flipped(data, off + R.FRAME_HEADER_SIZE + 2000))
    one_error_line(vp("verify", str(path)), 4, "frame 1")
    one_error_line(vp("restore", str(path), str(tmp_path / "out.img")), 4, "frame 1")
    assert not (tmp_path / "out.img").exists()


def test_a_reserved_frame_header_field_edited_with_its_checksum_recomputed_fails_the_digest(
    raw_archive, tmp_path
):
    # No other check reads the reserved field: only the digest, which covers frame headers.
    off = frame_offsets(raw_archive)[1]
    path = tmp_path / "bad.vpk"
    path.write_bytes(rewritten_frame(raw_archive, off, reserved=1))
    one_error_line(vp("verify", str(path)), 4, "archive digest")
    one_error_line(vp("restore", str(path), str(tmp_path / "out.img")), 4, "archive digest")
    assert not (tmp_path / "out.img").exists()


def resealed(data: bytes, *, metadigest: bool | None = None) -> bytes:
    """``data`` with its digest and TRLR checksums recomputed (by the rule its header names, or
    the one ``metadigest`` forces): what a forger who edited the frames does last."""
    toff = int.from_bytes(data[-56:-48], "little")
    body = data[toff + R.RECORD_SIZE : -R.FOOTER_SIZE - R.DIGEST_SIZE]
    digest = spec_digest(data[:toff], body, metadigest=metadigest)
    return data[:toff] + R.encode_record(R.TAG_TRLR, body + digest) + data[-R.FOOTER_SIZE :]


def test_a_1_4_frame_edited_with_its_checksum_recomputed_fails_the_digest_over_its_header(
    raw_archive, tmp_path
):
    # The frame header carries the new checksum, and the digest covers the frame header.
    off = frame_offsets(raw_archive)[2]
    path = tmp_path / "forged.vpk"
    path.write_bytes(rewritten_frame(raw_archive, off, flip_at=777))
    out = tmp_path / "out.img"
    one_error_line(vp("restore", str(path), str(out)), 4, "archive digest")
    assert not out.exists()
    one_error_line(vp("verify", str(path)), 4, "does not hash as the block hash table records")


def test_a_1_4_frame_edited_with_checksum_and_digest_recomputed_is_refused_by_verify(
    raw_archive, tmp_path
):
    # A whole forgery: only the block hash table, which the data must hash to, is left.
    off = frame_offsets(raw_archive)[2]
    path = tmp_path / "forged.vpk"
    path.write_bytes(resealed(rewritten_frame(raw_archive, off, flip_at=777)))
    one_error_line(vp("verify", str(path)), 4, "does not hash as the block hash table records")


def test_a_1_2_archive_is_still_refused_when_its_frame_bytes_differ_from_its_digest(tmp_path):
    # A frame edited, its checksum recomputed, the digest recomputed by the 1.4 rule: a reader
    # that took the 1.4 rule for a 1.2 archive would accept it; restore checks every byte.
    data = (GOLDEN / "chain-1.2" / "g0.vpk").read_bytes()
    assert not R.Header.decode(data[: R.HEADER_SIZE]).meta_digest
    off = frame_offsets(data)[1]
    assert data[off + 4] == R.CODEC_NONE  # stored raw: its checksum can be recomputed
    path = tmp_path / "forged.vpk"
    path.write_bytes(resealed(rewritten_frame(data, off, flip_at=100), metadigest=True))
    out = tmp_path / "out.img"
    with pytest.raises(CorruptArchive, match="archive digest"):
        volpack.restore(str(path), str(out))
    assert not out.exists()
    one_error_line(vp("restore", str(path), str(out)), 4, "archive digest")


def _sealed_forgery(version: str, tmp_path, *, metadigest: bool) -> tuple[pathlib.Path, str]:
    data = (GOLDEN / "encrypted" / f"{version}.vpk").read_bytes()
    off = frame_offsets(data)[0]
    path = tmp_path / f"forged-{version}.vpk"
    path.write_bytes(resealed(rewritten_frame(data, off, flip_at=50), metadigest=metadigest))
    return path, str(GOLDEN / "encrypted" / f"{version}.keyfile")


def test_a_sealed_1_3_archive_is_still_refused_without_a_key_when_its_frame_bytes_differ(
    tmp_path,
):
    path, _ = _sealed_forgery("v1.3", tmp_path, metadigest=True)
    one_error_line(vp("verify", str(path)), 4, "archive digest")


def test_a_sealed_1_4_frame_edited_with_every_unkeyed_check_recomputed_fails_its_tag(tmp_path):
    path, key_file = _sealed_forgery("v1.4", tmp_path, metadigest=True)
    # Without a key only media damage can be found, and this frame is not damaged as media.
    r = vp("verify", str(path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["authenticated"] is False, r.stderr
    one_error_line(vp("verify", str(path), "--key-file", key_file), 12)
    out = tmp_path / "out.img"
    one_error_line(vp("restore", str(path), str(out), "--key-file", key_file), 12)
    assert not out.exists()


def with_header(data: bytes, *, minor: int, incompat: int) -> bytes:
    """``data`` with the header's minor and incompatible bits replaced, its checksum recomputed."""
    body = bytearray(data[: R.HEADER.size])
    body[10:12] = minor.to_bytes(2, "little")
    body[16:24] = incompat.to_bytes(8, "little")
    return bytes(body) + R.checksum(bytes(body)).to_bytes(8, "little") + data[R.HEADER_SIZE :]


@pytest.mark.parametrize(
    "minor,incompat,message",
    [
        (4, R.FEATURE_BOUND | R.FEATURE_HASHED, "1.4 archive without the METADIGEST feature bit"),
        (
            1,
            R.FEATURE_BOUND | R.FEATURE_METADIGEST,
            "METADIGEST feature bit without BOUND and HASHED",
        ),
        (3, R.FEATURE_HASHED | R.FEATURE_METADIGEST, "without the BOUND feature bit"),
    ],
)
def test_a_header_whose_metadigest_bit_disagrees_with_its_version_is_damaged_exit_4(
    raw_archive, minor, incompat, message, tmp_path
):
    path = tmp_path / "bad.vpk"
    path.write_bytes(with_header(raw_archive, minor=minor, incompat=incompat))
    one_error_line(vp("verify", str(path)), 4, message)
    one_error_line(vp("info", str(path)), 4, message)


def test_a_1_4_archive_relabelled_1_3_without_the_bit_fails_the_every_byte_digest(
    raw_archive, tmp_path
):
    # Header, its trailer copy, the head hash and the footer all say 1.3, every checksum holds,
    # the digest is still the metadata stream's: only the digest rule tells the lie apart.
    out = bytearray(with_header(raw_archive, minor=3, incompat=R.FEATURE_BOUND | R.FEATURE_HASHED))
    toff = int.from_bytes(raw_archive[-56:-48], "little")
    fixed = toff + R.RECORD_SIZE
    out[fixed + R.TRAILER_FIXED.size : fixed + R.TRAILER_FIXED.size + R.HEADER_SIZE] = out[
        : R.HEADER_SIZE
    ]
    out[fixed + 32 : fixed + 64] = blake3.blake3(
        bytes(out[: frame_offsets(raw_archive)[0]])
    ).digest()
    foot = bytearray(out[-R.FOOTER_SIZE :])
    foot[42:44] = (3).to_bytes(2, "little")
    foot[56:64] = R.checksum(bytes(foot[:56])).to_bytes(8, "little")
    out[-R.FOOTER_SIZE :] = foot
    path = tmp_path / "relabelled.vpk"
    path.write_bytes(resealed(bytes(out), metadigest=True))
    one_error_line(vp("verify", str(path)), 4, "archive digest")
    one_error_line(vp("restore", str(path), str(tmp_path / "out.img")), 4, "archive digest")
    # and with the digest taken by the 1.3 rule it is a good 1.3 archive
    path.write_bytes(resealed(bytes(out), metadigest=False))
    assert vp("verify", str(path)).returncode == 0
