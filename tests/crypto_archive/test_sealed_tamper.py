"""The tamper suite on real sealed archives: damage is found by the checksums (exit 4, or 5 when
the archive is cut short), and every forgery whose unkeyed checks were all recomputed
(tests/crypto_archive/forge.py) is refused by the AEAD or the header MAC (exit 12). In every
case verify fails, restore fails, and a restore target that existed keeps its bytes."""

from __future__ import annotations

import random
import struct

import forge
import pytest
from sealed_cases import FRAME

import volpack
from volpack.errors import VolpackError
from volpack.format import records as R

TARGET_BYTES = b"the target before the restore\n" * 1000


@pytest.fixture(scope="module")
def archives(tmp_path_factory, volume, test_keys):
    """Two archives of the same volume and geometry sealed to the same keys (A and B), as bytes."""
    d = tmp_path_factory.mktemp("tamper")
    out = []
    for name in ("a", "b"):
        volpack.backup(
            volume, str(d / f"{name}.vpk"), frame_size=FRAME, encrypt=test_keys.encrypt()
        )
        out.append((d / f"{name}.vpk").read_bytes())
    return out


@pytest.fixture(scope="module")
def keyring(test_keys):
    return test_keys.keyring(key_file=True)


def refusals(data: bytes, keyring, tmp_path) -> set[int]:
    """The exit codes of verify (sequential reader) and restore (random access, then stream) of
    ``data`` with the right key; asserts both fail and the existing target is untouched."""
    path = tmp_path / "t.vpk"
    path.write_bytes(data)
    target = tmp_path / "target.img"
    target.write_bytes(TARGET_BYTES)
    codes = set()
    for run in (
        lambda: volpack.verify(str(path), keyring=keyring),
        lambda: volpack.restore(str(path), str(target), force=True, keyring=keyring),
    ):
        with pytest.raises(VolpackError) as exc:
            run()
        codes.add(exc.value.exit_code)
    assert target.read_bytes() == TARGET_BYTES
    return codes


def test_the_untampered_archive_verifies_and_forge_rebuilds_it_byte_for_byte(archives, keyring):
    a = archives[0]
    assert forge.build(forge.split(a)) == a


def test_a_bit_flipped_anywhere_is_damage_found_before_any_key_is_needed(
    archives, keyring, tmp_path
):
    a = archives[0]
    parts = forge.split(a)
    rng = random.Random(1)
    positions = set()
    bounds = sorted({*parts.boundaries, len(a) - R.FOOTER_SIZE, len(a)})
    for start, end in zip(bounds, bounds[1:], strict=False):
        positions.update(
            {start, start + 1, end - 1, *(rng.randrange(start, end) for _ in range(3))}
        )
    codes: set[int] = set()
    for pos in sorted(p for p in positions if 0 <= p < len(a)):
        data = bytearray(a)
        data[pos] ^= 1 << rng.randrange(8)
        got = refusals(bytes(data), keyring, tmp_path)
        assert got <= {4, 5}, (pos, got)
        codes |= got
    assert 4 in codes


def test_truncation_at_every_record_boundary_is_an_incomplete_archive(archives, keyring, tmp_path):
    a = archives[0]
    bounds = forge.split(a).boundaries
    for cut in sorted({*bounds, len(a) - R.FOOTER_SIZE, len(a) - 1}):
        if cut == 0:
            continue
        assert refusals(a[:cut], keyring, tmp_path) == {5}, cut


def _forged(parts: forge.Parts, tmp_path, keyring) -> set[int]:
    return refusals(forge.build(parts), keyring, tmp_path)


def test_a_sealed_frame_altered_with_its_checksums_recomputed_fails_its_tag(
    archives, keyring, tmp_path
):
    parts = forge.split(archives[0])
    for seq in (0, len(parts.frames) // 2, len(parts.frames) - 1):
        p = forge.split(archives[0])
        codec, raw, stored = p.frames[seq]
        p.frames[seq] = (codec, raw, stored[:5] + bytes([stored[5] ^ 1]) + stored[6:])
        assert _forged(p, tmp_path, keyring) == {12}


def test_frames_swapped_duplicated_or_dropped_are_refused(archives, keyring, tmp_path):
    parts = forge.split(archives[0])
    n = len(parts.frames)
    sizes = [len(s) for _, _, s in parts.frames]
    i, j = next((i, j) for i in range(n) for j in range(i + 1, n - 1) if sizes[i] == sizes[j])
    swapped = forge.split(archives[0])
    swapped.frames[i], swapped.frames[j] = swapped.frames[j], swapped.frames[i]
    assert _forged(swapped, tmp_path, keyring) == {12}
    duplicated = forge.split(archives[0])
    duplicated.frames[j] = duplicated.frames[i]
    assert _forged(duplicated, tmp_path, keyring) == {12}
    # Dropping a frame needs a header with fewer used blocks: the header MAC refuses it.
    dropped = forge.split(archives[0])
    del dropped.frames[j]
    used = struct.unpack_from("<Q", dropped.header, 64)[0]
    struct.pack_into("<Q", dropped.header, 64, used - FRAME // 4096)
    assert _forged(dropped, tmp_path, keyring) == {12}
    # ... and without the header changed, the counts disagree (damage).
    kept_header = forge.split(archives[0])
    del kept_header.frames[j]
    assert _forged(kept_header, tmp_path, keyring) <= {4, 12}


def test_a_frame_or_table_spliced_from_another_archive_to_the_same_keys_fails(
    archives, keyring, tmp_path
):
    a, b = archives
    for seq in (0, 3):
        p = forge.split(a)
        p.frames[seq] = forge.split(b).frames[seq]
        assert _forged(p, tmp_path, keyring) == {12}
    for k in range(1, 4):  # DESC, PMAP, ATAB
        p = forge.split(a)
        p.records[k] = forge.split(b).records[k]
        assert _forged(p, tmp_path, keyring) == {12}, p.records[k][0]
    p = forge.split(a)
    p.hash_part = forge.split(b).hash_part
    assert _forged(p, tmp_path, keyring) == {12}


@pytest.mark.parametrize(
    ("offset", "fmt", "delta", "field"),
    [
        (56, "<Q", 4096, "volume_size"),
        (72, "<Q", 1, "created_ns"),
        (81, "<b", 2, "codec_level"),
        (88, "<Q", 1, "chain_id"),
        (104, "<Q", 1, "chain_seq"),
    ],
)
def test_a_header_field_changed_with_its_checksum_recomputed_fails_the_header_mac(
    archives, keyring, tmp_path, offset, fmt, delta, field
):
    p = forge.split(archives[0])
    value = struct.unpack_from(fmt, p.header, offset)[0]
    struct.pack_into(fmt, p.header, offset, value + delta)
    assert _forged(p, tmp_path, keyring) == {12}, field


def _keys_record(payload: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(cipher head, slots, sealed chain key ‖ MAC) of a KEYS payload."""
    n = int.from_bytes(payload[4:8], "little")
    slots_bytes, rest = payload[8 : 8 + n], payload[8 + n :]
    count, pos, slots = int.from_bytes(slots_bytes[:2], "little"), 4, []
    for _ in range(count):
        length = int.from_bytes(slots_bytes[pos + 2 : pos + 4], "little")
        slots.append(slots_bytes[pos : pos + 4 + length])
        pos += 4 + length
    return payload[:4], slots, rest


def _with_slots(payload: bytes, slots: list[bytes], rest: bytes | None = None) -> bytes:
    head, _, old_rest = _keys_record(payload)
    body = len(slots).to_bytes(2, "little") + bytes(2) + b"".join(slots)
    return head + len(body).to_bytes(4, "little") + body + (old_rest if rest is None else rest)


def test_key_slots_removed_swapped_or_taken_from_another_archive_fail_the_header_mac(
    archives, test_keys, tmp_path
):
    a, b = archives
    by_identity = test_keys.keyring(identity=True)
    by_file = test_keys.keyring(key_file=True)
    payload = forge.split(a).records[0][1]
    _, slots, _ = _keys_record(payload)
    assert [s[0] for s in slots] == [1, 3]  # the recipient's x25519 slot, then the key file's
    removed = forge.split(a)
    removed.records[0] = (R.TAG_KEYS, _with_slots(payload, slots[:1]))
    assert _forged(removed, tmp_path, by_identity) == {12}
    assert _forged(removed, tmp_path, by_file) == {12}  # no slot opens for it any more
    swapped = forge.split(a)
    swapped.records[0] = (R.TAG_KEYS, _with_slots(payload, slots[::-1]))
    assert _forged(swapped, tmp_path, by_identity) == {12}
    # B's key-file slot wraps B's data key: it opens, and the MAC under B's key fails.
    _, b_slots, _ = _keys_record(forge.split(b).records[0][1])
    foreign = forge.split(a)
    foreign.records[0] = (R.TAG_KEYS, _with_slots(payload, [slots[0], b_slots[1]]))
    assert _forged(foreign, tmp_path, by_file) == {12}


def test_a_wrong_identity_key_file_or_passphrase_is_refused_with_exit_12(
    archives, test_keys, tmp_path
):
    for keyring in (
        test_keys.keyring(identity=True, other=True),
        test_keys.keyring(key_file=True, other=True),
        test_keys.keyring(passphrase=True),
    ):
        assert refusals(archives[0], keyring, tmp_path) == {12}
