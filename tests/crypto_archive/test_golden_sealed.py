"""The golden sealed archives of formats 1.3 and 1.4 (tests/format/golden/encrypted/, with their
published test keys) open with each of their three keys forever, verify without a key as media,
and their bytes follow docs/format.md section 10 as recomputed here from the spec alone: key-file
slot, subkeys, header MAC, chain hash key, a sealed table, a sealed frame, the keyed hash table
and state digest, and the digest (1.3: every byte; 1.4: the metadata stream)."""

from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import struct
import uuid

import blake3
import pytest
import xxhash
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import volpack
from spec_digest import metadata_stream

GOLDEN = pathlib.Path(__file__).parent.parent / "format" / "golden" / "encrypted"
VERSIONS = sorted(p.stem for p in GOLDEN.glob("*.vpk"))


def _facts(version: str) -> dict:
    return json.loads((GOLDEN / f"{version}.json").read_text())


def test_there_is_a_golden_sealed_archive_for_the_current_version():
    from volpack.format import records as R

    assert f"v{R.MAJOR}.{R.MINOR}" in VERSIONS


def _keyring(kind: str, version: str):
    from volpack.crypto import DecryptKeys, Passphrase
    from volpack.crypto.files import read_identities, read_key_file
    from volpack.format.keyring import Keyring

    if kind == "identity":
        identities = read_identities(str(GOLDEN / f"{version}.identity"))
        return Keyring.of(DecryptKeys(identities=identities))
    if kind == "key-file":
        key = read_key_file(str(GOLDEN / f"{version}.keyfile"))
        return Keyring.of(DecryptKeys(key_files=(key,)))
    phrase = (GOLDEN / f"{version}.passphrase").read_bytes().rstrip(b"\n")
    return Keyring.of(DecryptKeys(passphrases=(Passphrase(phrase),)))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["identity", "key-file", "passphrase"])
def test_golden_sealed_archive_restores_with_each_of_its_keys(kind, version, tmp_path):
    facts = _facts(version)
    out = tmp_path / "out.img"
    volpack.restore(str(GOLDEN / f"{version}.vpk"), str(out), keyring=_keyring(kind, version))
    data = out.read_bytes()
    assert len(data) == facts["volume_size"]
    assert hashlib.sha256(data).hexdigest() == facts["volume_sha256"]


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_sealed_archive_verifies_as_media_without_a_key_and_whole_with_one(version):
    facts, archive = _facts(version), GOLDEN / f"{version}.vpk"
    public = volpack.verify(str(archive))
    assert (public.digest, public.authenticated) == (facts["digest"], False)
    keyed = volpack.verify(str(archive), keyring=_keyring("key-file", version))
    assert keyed.authenticated and keyed.state_digest == facts["state_digest"]


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _ad(uid: bytes, kind: int, final: int, seq: int, dense: int, public: bytes) -> bytes:
    return struct.pack("<8s16sBBHQQI", b"VPKSEAL1", uid, kind, final, 1, seq, dense, len(public))


def _nonce(kind: int, seq: int) -> bytes:
    return struct.pack("<B3xQ", kind, seq)


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_sealed_archive_follows_section_10_recomputed_from_the_spec(version, tmp_path):
    facts, archive = _facts(version), GOLDEN / f"{version}.vpk"
    minor = int(version.split(".")[1])
    data = archive.read_bytes()
    header = data[:256]
    assert int.from_bytes(header[10:12], "little") == minor
    metadigest = 1 << 4 if minor >= 4 else 0
    # ENCRYPTED BOUND HASHED, and from 1.4 METADIGEST
    assert int.from_bytes(header[16:24], "little") == 1 | 1 << 2 | 1 << 3 | metadigest
    uid = uuid.UUID(facts["uuid"]).bytes
    # KEYS: record header, then cipher, reserved, n, slot list, sealed chain key, MAC
    assert data[256:260] == b"KEYS"
    klen = int.from_bytes(data[264:272], "little")
    keys = data[288 : 288 + klen]
    cipher, _, n = struct.unpack_from("<HHI", keys)
    assert cipher == 1 and klen == 88 + n
    slots, sealed_chain_key, mac = keys[8 : 8 + n], keys[8 + n : 56 + n], keys[56 + n :]
    # the key-file slot (kind 3): salt, wrapped; ChaCha20-Poly1305 under an HKDF of the file
    pos, data_key = 4, None
    for _ in range(int.from_bytes(slots[:2], "little")):
        kind, length = slots[pos], int.from_bytes(slots[pos + 2 : pos + 4], "little")
        body = slots[pos + 4 : pos + 4 + length]
        if kind == 3:
            kek = _hkdf(
                (GOLDEN / f"{version}.keyfile").read_bytes(),
                body[:16],
                b"volpack/v1/slot/key-file",
            )
            data_key = ChaCha20Poly1305(kek).decrypt(
                bytes(12), body[16:], b"volpack/v1/slot/key-file"
            )
        pos += 4 + length
    assert data_key is not None and len(data_key) == 16
    frames_key, tables_key, mac_key, hash_key = (
        _hkdf(data_key, uid, b"volpack/v1/" + label)
        for label in (b"frames", b"tables", b"header-mac", b"hash-table")
    )
    assert hmac.new(mac_key, header + keys[:-32], hashlib.sha256).digest() == mac
    chain_key = AESGCM(tables_key).decrypt(
        _nonce(8, 0), sealed_chain_key, _ad(uid, 8, 0, 0, 0, b"")
    )
    assert chain_key == hash_key  # a full starts its chain with its own hash-table subkey
    # DESC, sealed as kind 4 with its tag as public fields
    at = 288 + klen
    assert data[at : at + 4] == b"DESC"
    dlen = int.from_bytes(data[at + 8 : at + 16], "little")
    sealed_desc = data[at + 32 : at + 32 + dlen]
    desc = AESGCM(tables_key).decrypt(
        _nonce(4, 0), sealed_desc, _ad(uid, 4, 0, 0, 0, b"DESC") + b"DESC"
    )
    assert json.loads(desc)["tool"].startswith("volpack")
    # frame 0: its header's first 32 bytes are public; checksum over the sealed bytes
    from volpack.format.random_access import open_archive

    with open_archive(str(archive), public=True) as a:
        off = int(a.trailer.index["offset"][0])
        toff = a.trailer.trailer_offset
    fh = data[off : off + 48]
    codec, stored_len, csum = fh[4], int.from_bytes(fh[28:32], "little"), fh[32:40]
    stored = data[off + 48 : off + 48 + stored_len]
    seed = xxhash.xxh3_64_intdigest(uid + bytes(16))
    assert xxhash.xxh3_64_intdigest(stored, seed).to_bytes(8, "little") == csum
    plain = AESGCM(frames_key).decrypt(
        _nonce(1, 0), stored, _ad(uid, 1, 0, 0, 0, fh[:32]) + fh[:32]
    )
    raw = zstandard.ZstdDecompressor().decompress(plain) if codec == 1 else plain
    assert len(raw) == int.from_bytes(fh[24:28], "little")
    # the hash table: sealed as kind 5 (final), keyed BLAKE3 of each non-zero hash block
    out = tmp_path / "v.img"
    volpack.restore(str(archive), str(out), keyring=_keyring("key-file", version))
    volume = out.read_bytes()
    assert raw[:4096] == volume[3 * 4096 : 4 * 4096]  # the first used block, at dense offset 0
    hbs = int.from_bytes(header[84:88], "little")
    entries = b""
    for index in range(-(-len(volume) // hbs)):
        block = volume[index * hbs : (index + 1) * hbs]
        h = blake3.blake3(block, key=chain_key).digest()[:16]
        if h != blake3.blake3(bytes(len(block)), key=chain_key).digest()[:16]:
            entries += index.to_bytes(8, "little") + h
    state = blake3.blake3(
        b"volpack state v1" + struct.pack("<QI", len(volume), hbs) + entries, key=chain_key
    ).digest()
    assert state.hex() == facts["state_digest"]
    payload = data[toff + 32 : -64]
    count = len(entries) // 24
    assert payload[-72:-64] == count.to_bytes(8, "little") and payload[-64:-32] == state
    sealed_entries = payload[-72 - len(entries) - 16 : -72]
    public = count.to_bytes(8, "little") + state
    opened = AESGCM(tables_key).decrypt(
        _nonce(5, 0), sealed_entries, _ad(uid, 5, 1, 0, 0, public) + public
    )
    assert opened == entries
    # the digest: 1.3 over every byte before the TRLR record, 1.4 over the metadata stream (the
    # sealed frame bytes left out), each then the trailer payload up to the digest
    covered = metadata_stream(data[:toff]) if metadigest else data[:toff]
    assert payload[-32:] == blake3.blake3(covered + payload[:-32]).digest()
    assert payload[-32:].hex() == facts["digest"]
