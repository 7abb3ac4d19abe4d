"""The golden archive of every released format version decodes forever; the spec's byte tables
match the structs in the code."""

import hashlib
import json
import os
import pathlib
import re

import pytest

import volpack
from volpack.format import records as R
from volpack.format.random_access import open_archive

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
SPEC = os.path.join(HERE, "..", "..", "docs", "format.md")
VERSIONS = sorted(f[:-4] for f in os.listdir(GOLDEN) if f.endswith(".vpk"))


def test_there_is_a_golden_archive_for_the_current_version():
    assert f"v{R.MAJOR}.{R.MINOR}" in VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_archive_restores_to_the_recorded_volume(version, tmp_path):
    facts = json.loads(pathlib.Path(os.path.join(GOLDEN, f"{version}.json")).read_text())
    archive = os.path.join(GOLDEN, f"{version}.vpk")
    v = volpack.verify(archive)
    assert v.digest == facts["digest"] and v.frame_count == facts["frame_count"]
    out = str(tmp_path / "out.img")
    volpack.restore(archive, out)
    data = pathlib.Path(out).read_bytes()
    assert len(data) == facts["volume_size"]
    assert hashlib.sha256(data).hexdigest() == facts["volume_sha256"]
    with open_archive(archive) as a:
        assert a.uuid == facts["uuid"] and a.header.used_blocks == facts["used_blocks"]
        assert a.read(0, a.size) == data


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_volume_generator_still_makes_the_recorded_volume(version, tmp_path):
    import make_golden  # noqa: PLC0415 (test-local helper)

    if version != f"v{R.MAJOR}.{R.MINOR}":
        pytest.skip("only the current version's generator is kept")
    make_golden.golden_volume(str(tmp_path / "v.img"))
    facts = json.loads(pathlib.Path(os.path.join(GOLDEN, f"{version}.json")).read_text())
    digest = hashlib.sha256(pathlib.Path(tmp_path / "v.img").read_bytes()).hexdigest()
    assert digest == facts["volume_sha256"]


def spec_tables() -> dict[str, list[tuple[int, int]]]:
    """Byte tables of docs/format.md by the heading above them: [(offset, size)]."""
    tables: dict[str, list[tuple[int, int]]] = {}
    heading = ""
    for line in pathlib.Path(SPEC).read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("#"):
            heading = line.strip("# \n")
        elif line.startswith("Run (") or line.startswith("Run,"):
            heading += " / run"
        m = re.match(r"^\|\s*(\d+)\s*\|\s*(\d+)", line)
        if m:
            tables.setdefault(heading, []).append((int(m.group(1)), int(m.group(2))))
    return tables


def _span(rows: list[tuple[int, int]]) -> int:
    for (o1, s1), (o2, _) in zip(rows, rows[1:], strict=False):
        assert o1 + s1 == o2, f"spec table has a gap or overlap at offset {o1}"
    return rows[-1][0] + rows[-1][1]


def test_spec_byte_tables_match_the_struct_sizes_in_the_code():
    t = spec_tables()
    assert _span(t["2. Header (256 bytes, at offset 0)"]) == R.HEADER_SIZE == 256
    assert _span(t["3. Records"]) == R.RECORD_SIZE == 32
    assert _span(t["4. Frames"]) == R.FRAME_HEADER_SIZE == 48
    assert _span(t["6. Footer (64 bytes, the last bytes of the archive)"]) == R.FOOTER_SIZE == 64
    assert _span(t["3.2 PMAP: physical map / run"]) == R.PMAP_DTYPE.itemsize == 32
    assert _span(t["3.2 PMAP: physical map"][:3]) == 16
    assert _span(t["5. Trailer (TRLR record payload)"][:5]) == R.TRAILER_FIXED.size == 64
    assert R.ATAB_DTYPE.itemsize == 24 and R.INDEX_DTYPE.itemsize == 16


def test_golden_1_1_frame_checksums_are_seeded_with_uuid_sequence_and_dense_offset():
    """The seed formula of docs/format.md section 4, computed here from the spec alone."""
    import uuid

    import xxhash
    import zstandard

    data = pathlib.Path(os.path.join(GOLDEN, "v1.1.vpk")).read_bytes()
    facts = json.loads(pathlib.Path(os.path.join(GOLDEN, "v1.1.json")).read_text())
    assert int.from_bytes(data[8:10], "little") == 1 and int.from_bytes(data[10:12], "little") == 1
    assert int.from_bytes(data[16:24], "little") == 1 << 2  # BOUND, nothing else
    uid = uuid.UUID(facts["uuid"]).bytes
    with open_archive(os.path.join(GOLDEN, "v1.1.vpk")) as a:
        offsets = a.trailer.index["offset"].tolist()
    assert len(offsets) == facts["frame_count"]
    for seq, off in enumerate(offsets):
        tag, codec, _, _, fseq, doff, raw_len, stored, rsum = R.FRAME.unpack_from(data, off)
        body = data[off + 48 : off + 48 + stored]
        raw = zstandard.ZstdDecompressor().decompress(body) if codec == 1 else body
        seed = xxhash.xxh3_64_intdigest(
            uid + seq.to_bytes(8, "little") + doff.to_bytes(8, "little")
        )
        assert (tag, fseq, len(raw)) == (b"FRAM", seq, raw_len)
        assert xxhash.xxh3_64_intdigest(raw, seed) == rsum
        assert xxhash.xxh3_64_intdigest(raw) != rsum


def test_golden_1_1_digest_covers_the_trailer_and_head_hash_the_head():
    import blake3

    data = pathlib.Path(os.path.join(GOLDEN, "v1.1.vpk")).read_bytes()
    facts = json.loads(pathlib.Path(os.path.join(GOLDEN, "v1.1.json")).read_text())
    toff = int.from_bytes(data[-56:-48], "little")
    payload = data[toff + 32 : -64]
    assert payload[-32:].hex() == facts["digest"]
    assert blake3.blake3(data[:toff] + payload[:-32]).hexdigest() == facts["digest"]
    with open_archive(os.path.join(GOLDEN, "v1.1.vpk")) as a:
        first_frame = int(a.trailer.index["offset"][0])
    assert payload[32:64] == blake3.blake3(data[:first_frame]).digest()


def test_golden_1_2_hash_table_and_state_digest_follow_the_spec(tmp_path):
    """Section 5.1 computed from the spec alone: 16-byte BLAKE3 per non-zero 1 MiB hash block of
    the restored volume, the state digest over label, sizes and entries; header fields of 2."""
    import struct
    import uuid

    import blake3

    data = pathlib.Path(os.path.join(GOLDEN, "v1.2.vpk")).read_bytes()
    assert int.from_bytes(data[10:12], "little") == 2
    assert int.from_bytes(data[16:24], "little") == (1 << 2) | (1 << 3)  # BOUND, HASHED
    hbs = int.from_bytes(data[84:88], "little")
    assert hbs == 1 << 20 and data[88:104] != bytes(16) and data[104:112] == bytes(8)
    assert data[112:248] == bytes(136)  # no base link in a full; the rest reserved
    out = tmp_path / "v.img"
    volpack.restore(os.path.join(GOLDEN, "v1.2.vpk"), str(out))
    volume = out.read_bytes()
    entries = b""
    for index in range(-(-len(volume) // hbs)):
        block = volume[index * hbs : (index + 1) * hbs]
        h = blake3.blake3(block).digest()[:16]
        if h != blake3.blake3(bytes(len(block))).digest()[:16]:
            entries += index.to_bytes(8, "little") + h
    state = blake3.blake3(
        b"volpack state v1" + struct.pack("<QI", len(volume), hbs) + entries
    ).digest()
    toff = int.from_bytes(data[-56:-48], "little")
    payload = data[toff + 32 : -64]
    count = len(entries) // 24
    assert payload[-72:-64] == count.to_bytes(8, "little")
    assert payload[-64:-32] == state
    assert payload[-72 - len(entries) : -72] == entries
    with open_archive(os.path.join(GOLDEN, "v1.2.vpk")) as a:
        assert a.state_digest == state.hex() and a.header.chain_id == str(
            uuid.UUID(bytes=data[88:104])
        )


def test_golden_1_4_digest_covers_head_frame_headers_and_trailer_but_no_frame_payload():
    """Section 5's METADIGEST rule computed from the spec alone: BLAKE3 over the header, head
    records, every 48-byte frame header and the trailer payload up to the digest."""
    import blake3

    data = pathlib.Path(os.path.join(GOLDEN, "v1.4.vpk")).read_bytes()
    facts = json.loads(pathlib.Path(os.path.join(GOLDEN, "v1.4.json")).read_text())
    assert int.from_bytes(data[10:12], "little") == 4
    assert int.from_bytes(data[16:24], "little") == (1 << 2) | (1 << 3) | (1 << 4)
    toff = int.from_bytes(data[-56:-48], "little")
    payload = data[toff + 32 : -64]
    assert payload[-32:].hex() == facts["digest"]
    # walk the parts from the header: records, then frames, up to the trailer (no gaps)
    stream, pos, frames = [data[:256]], 256, 0
    while pos < toff:
        if data[pos : pos + 4] == b"FRAM":
            stream.append(data[pos : pos + 48])
            pos += 48 + int.from_bytes(data[pos + 28 : pos + 32], "little")
            frames += 1
        else:
            assert data[pos : pos + 4] in (b"DESC", b"PMAP", b"ATAB")
            end = pos + 32 + int.from_bytes(data[pos + 8 : pos + 16], "little")
            stream.append(data[pos:end])
            pos = end
    assert pos == toff and frames == facts["frame_count"] > 0
    assert blake3.blake3(b"".join(stream) + payload[:-32]).hexdigest() == facts["digest"]
    assert blake3.blake3(data[:toff] + payload[:-32]).hexdigest() != facts["digest"]


@pytest.mark.parametrize(
    "script",
    sorted(f for f in os.listdir(HERE) if f.startswith("make_golden") and f.endswith(".py")),
)
def test_a_golden_script_run_by_mistake_replaces_nothing(script):
    """``--help`` prints usage; without ``--replace`` the current version's files stay as
    checked in (one line, exit 1)."""
    import subprocess
    import sys

    def snapshot() -> dict[str, float]:
        return {
            os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime
            for d, _, files in os.walk(GOLDEN)
            for f in files
        }

    before = snapshot()
    path = os.path.join(HERE, script)
    helped = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--replace" in helped.stdout
    run = subprocess.run([sys.executable, path], capture_output=True, text=True)
    assert run.returncode == 1
    assert "is checked in already" in run.stderr and len(run.stderr.splitlines()) == 1
    assert snapshot() == before
