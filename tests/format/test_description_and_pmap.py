"""DESC and PMAP as docs/format.md §3.1 and §3.2 state them: the description's keys (every one the
writer emits is listed), its tolerance (unknown keys kept, wrong types read as missing) and its
one hard rule (a checksummed DESC must be a JSON object); the physical map's unknown-place rule;
and PMAP and ATAB being independent of each other."""

from __future__ import annotations

import json
import re
import time
import uuid as uuidlib
from pathlib import Path

import numpy as np
import pytest

import volpack
from volpack.compact.table import AddressTable
from volpack.errors import CorruptArchive
from volpack.extents import Extents
from volpack.format import records as R
from volpack.format.description import ArchiveDescription
from volpack.format.hashtable import HashBuilder
from volpack.format.pmap import decode_pmap, encode_pmap
from volpack.format.random_access import open_archive
from volpack.format.writer import ArchiveWriter
from volpack.media import open_writer
from volpack.physmap import PM_UNKNOWN, PM_ZERO, PhysicalMap
from volpack.pipeline.info import summary
from volumes import same_bytes, write_sparse

SPEC = Path(__file__).resolve().parents[2] / "docs" / "format.md"
BLOCK = 4096
FRAME = 65536


def write_archive(path: Path, desc_payload: bytes, data: bytes) -> None:
    """A complete, correctly sealed archive of ``data`` (every block used, no physical map known)
    whose DESC payload is ``desc_payload`` byte for byte."""
    blocks = -(-len(data) // BLOCK)
    table = AddressTable.from_used(Extents.span(0, blocks), BLOCK)
    header = R.Header(
        uuid=str(uuidlib.uuid4()),
        block_size=BLOCK,
        frame_size=FRAME,
        volume_size=len(data),
        used_blocks=table.used_blocks,
        created_ns=time.time_ns(),
        codec=R.CODEC_NONE,
        codec_level=0,
    )
    head = (
        R.encode_record(R.TAG_DESC, desc_payload)
        + encode_pmap(PhysicalMap.unknown(len(data)))
        + R.encode_atab(table.volume_block, table.count)
    )
    dense = memoryview(data + bytes(-len(data) % BLOCK))
    medium = open_writer(str(path))
    hashes = HashBuilder(table, header.volume_size, header.hash_block_size)
    writer = ArchiveWriter(medium, header, head, threads=1, hashes=hashes)
    writer.write_head()

    def produce(seq: int, view: memoryview) -> None:
        view[:] = dense[seq * FRAME : seq * FRAME + len(view)]

    writer.write_frames(produce)
    writer.finish()
    medium.commit()


def key_paths(value: object, prefix: str = "") -> set[str]:
    """``source.kind``-style paths of every key in a JSON value (``regions[]`` for arrays)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            out.add(path)
            if not path.endswith(".details"):  # free-form per source kind or detector
                out |= key_paths(v, path)
    elif isinstance(value, list):
        for item in value:
            out |= key_paths(item, prefix + "[]")
    return out


def spec_section(title: str) -> str:
    text = SPEC.read_text()
    start = text.index(title)
    return text[start : text.index("\n### ", start + 1)]


def test_every_key_the_writer_puts_in_desc_is_listed_in_the_spec(tmp_path):
    vol, arc = tmp_path / "v.img", tmp_path / "v.vpk"
    write_sparse(str(vol), 1 << 20, [(8192, b"data" * 1000)])
    volpack.backup(str(vol), str(arc), frame_size=FRAME, staging=str(tmp_path / "stage"))
    with open_archive(str(arc)) as a:
        recorded = a.description
    section = spec_section("### 3.1 DESC")
    listed = set(re.findall(r"^\| `([a-z_.\[\]]+)`", section, re.M))
    listed |= {f"detection.regions[].{k}" for k in ("end",)}  # listed as `.start`, `.end`
    paths = key_paths(recorded)
    assert "detection.mode" in paths and "options.staging" in paths
    assert paths <= listed, f"keys the writer emits but docs/format.md §3.1 omits: {paths - listed}"


def test_the_description_reads_back_what_backup_wrote_and_writes_it_back_unchanged(tmp_path):
    vol, arc = tmp_path / "v.img", tmp_path / "v.vpk"
    write_sparse(str(vol), 1 << 20, [(0, b"x" * 5000)])
    result = volpack.backup(str(vol), str(arc), frame_size=FRAME, detect="zeros")
    with open_archive(str(arc)) as a:
        desc, recorded = a.desc, a.description
    assert desc.to_json() == recorded
    assert desc.source.kind == "file" and desc.source.path == str(vol)
    assert desc.detection.mode == "zeros"
    assert [r.detector for r in desc.detection.regions] == ["holes+zeros"]
    assert desc.options.compress == "zstd:1" and desc.options.staging is False
    assert result.source == recorded["source"] and result.detection == recorded["detection"]


def test_unknown_keys_are_kept_and_wrong_types_read_as_missing():
    raw = {
        "tool": 7,
        "source": {"kind": "lvm", "path": ["not", "a", "string"], "details": "x"},
        "detection": {"mode": "fs", "regions": [{"start": 0, "end": 10, "detector": "ext"}, 5]},
        "options": "none",
        "future": {"keys": [1, 2]},
    }
    desc = ArchiveDescription.from_json(raw)
    assert desc.tool is None and desc.host is None
    assert desc.source.kind == "lvm" and desc.source.path is None and desc.source.details == {}
    assert [r.detector for r in desc.detection.regions] == ["ext"]
    assert not desc.detection.complete  # a region was malformed: verify treats all as zeros
    assert desc.options.compress is None
    assert desc.extra == {"future": {"keys": [1, 2]}}
    assert desc.to_json()["future"] == {"keys": [1, 2]}
    assert ArchiveDescription.from_json({}) == ArchiveDescription()


def test_an_archive_with_a_foreign_description_restores_and_its_unknown_keys_are_reported(tmp_path):
    data = bytes(range(256)) * 40
    arc = tmp_path / "f.vpk"
    write_archive(arc, json.dumps({"source": 5, "written_by": "another tool"}).encode(), data)
    volpack.verify(str(arc))
    out = tmp_path / "out.img"
    volpack.restore(str(arc), str(out))
    assert out.read_bytes() == data
    assert summary(str(arc))["source"] == {"details": {}}
    with open_archive(str(arc)) as a:
        assert a.desc.extra == {"written_by": "another tool"}


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"null", b"\xff\xfe", b"{"])
def test_a_checksummed_description_that_is_not_a_json_object_is_refused_as_damaged(
    tmp_path, payload
):
    arc = tmp_path / "d.vpk"
    write_archive(arc, payload, b"y" * 9000)
    for check in (
        volpack.verify,
        open_archive,
        lambda url: volpack.restore(url, str(tmp_path / "o")),
    ):
        with pytest.raises(CorruptArchive, match="description is not") as e:
            check(str(arc))
        assert e.value.exit_code == 4
    assert not (tmp_path / "o").exists()


def pmap_record(*runs: tuple[int, int, int, int, int]) -> bytes:
    """A PMAP payload with one device and the given (start, length, physical, device, flags)."""
    arr = np.array(list(runs), R.PMAP_DTYPE)
    return R.encode_pmap(("disk",), arr)[R.RECORD_SIZE :]


HEADER = R.Header("00000000-0000-0000-0000-000000000001", BLOCK, FRAME, 1 << 20, 256, 0)
UNKNOWN = R.UNKNOWN_OFFSET


@pytest.mark.parametrize(
    "run",
    [
        (0, 4096, UNKNOWN, -1, 0),  # no device, but not flagged UNKNOWN
        (0, 4096, UNKNOWN, 0, PM_UNKNOWN),  # flagged UNKNOWN, but on a device
    ],
)
def test_a_physical_map_run_whose_device_and_unknown_flag_disagree_is_damaged(run):
    with pytest.raises(CorruptArchive, match=r"device -?\d+ and UNKNOWN flag (set|clear)") as e:
        decode_pmap(pmap_record(run), HEADER, "test")
    assert e.value.exit_code == 4


def test_a_run_without_a_device_reads_with_an_unknown_offset_whatever_was_written():
    pm = decode_pmap(pmap_record((0, 4096, 12345, -1, PM_UNKNOWN)), HEADER, "test")
    assert pm.runs() == [(0, 4096, -1, -1, PM_UNKNOWN)]


def test_encode_and_decode_pmap_round_trip_known_unknown_and_zero_runs():
    pm = PhysicalMap.build(
        ("a.qcow2", "b.qcow2"),
        [(0, 4096, 0, 65536, 0), (4096, 8192, 1, -1, PM_ZERO), (16384, 4096, -1, -1, PM_UNKNOWN)],
    )
    back = decode_pmap(encode_pmap(pm)[R.RECORD_SIZE :], HEADER, "test")
    assert back.devices == pm.devices and back.runs() == pm.runs()


def test_the_physical_map_may_cover_blocks_the_address_table_leaves_out(tmp_path):
    vol, arc = tmp_path / "z.img", tmp_path / "z.vpk"
    with open(vol, "wb") as f:  # written zeros are allocated: FIEMAP maps them
        f.write(b"d" * 8192 + bytes(65536) + b"e" * 4096)
    volpack.backup(str(vol), str(arc), frame_size=FRAME, detect="zeros")
    with open_archive(str(arc)) as a:
        used = a.used_bytes()
        mapped = Extents.from_arrays(
            a.physical_map.starts, a.physical_map.starts + a.physical_map.lengths
        )
    if not mapped.total():
        pytest.skip("this filesystem gives no FIEMAP extents")
    assert mapped.subtract(used).total() >= 65536
    out = tmp_path / "out.img"
    volpack.restore(str(arc), str(out))
    assert same_bytes(str(vol), str(out))


def test_the_address_table_may_hold_blocks_no_physical_map_run_covers(tmp_path):
    vol, arc = tmp_path / "h.img", tmp_path / "h.vpk"
    write_sparse(str(vol), 1 << 20, [(0, b"a" * 4096), (900_000, b"b" * 4096)])
    volpack.backup(str(vol), str(arc), frame_size=FRAME, detect="all-used")
    with open_archive(str(arc)) as a:
        pm = a.physical_map
        mapped = Extents.from_arrays(pm.starts, pm.starts + pm.lengths)
        assert a.used_bytes().subtract(mapped).total() > 0  # the holes are held, not mapped
    volpack.verify(str(arc))
    out = tmp_path / "out.img"
    volpack.restore(str(arc), str(out))
    assert same_bytes(str(vol), str(out))
