"""LVM sources read offline from PV images whose metadata the real LVM tools wrote on loop devices.

Oracles: the segment PE ranges from ``lvs -o+seg_pe_ranges``, ``pe_start`` from ``pvs``, and the
bytes at those offsets of the PV images; for thin LVs, ``thin_dump`` of the pool metadata. There
is no device-mapper here, so LVs are created with activation off (``--driverloaded n -an -Zn``)
and the thin pool's VG text is installed with ``vgcfgrestore --force``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from volpack.errors import SourceError, UsageError
from volpack.source import open_source
from volpack.source.lvm import open_lvm

pytestmark = pytest.mark.root

TOOLS = (
    "losetup",
    "pvcreate",
    "vgcreate",
    "lvcreate",
    "lvs",
    "vgcfgbackup",
    "vgcfgrestore",
    "thin_restore",
    "thin_dump",
)
CONF = Path(__file__).resolve().parent.parent / "lvm.conf"
MiB = 1 << 20
CHUNK = 64 * 1024


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to attach loop devices for the LVM tools"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"LVM tools missing: {', '.join(missing)} (apt install lvm2 thin-provisioning-tools)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop device support (/dev/loop-control missing)"
    return None


class LvmLab:
    """PV images on loop devices, a private lvm.conf, and helpers to run and query LVM."""

    def __init__(self, workdir: Path, sizes: list[int], vg: str, pvcreate: tuple[str, ...] = ()):
        self.dir = workdir
        self.vg = vg
        self.images = [workdir / f"pv{i}.img" for i in range(len(sizes))]
        self.loops: list[str] = []
        for img, size in zip(self.images, sizes, strict=True):
            with open(img, "wb") as f:
                f.truncate(size)
            out = subprocess.run(
                ["losetup", "-f", "--show", str(img)], capture_output=True, text=True
            )
            if out.returncode != 0:
                self.close()
                pytest.skip(f"cannot attach a loop device: {out.stderr.strip()}")
            self.loops.append(out.stdout.strip())
        accept = "".join(f'"a|^{re.escape(loop)}$|", ' for loop in self.loops)
        conf = CONF.read_text().replace("@WORKDIR@", str(workdir)).replace("@ACCEPT@", accept)
        (workdir / "lvm.conf").write_text(conf)
        (workdir / "lock").mkdir()
        self.env = {**os.environ, "LVM_SYSTEM_DIR": str(workdir), "LVM_SUPPRESS_FD_WARNINGS": "1"}
        self.lvm("pvcreate", *pvcreate, *self.loops)
        self.lvm("vgcreate", "-s", "1M", vg, *self.loops)

    def lvm(self, *args: str) -> str:
        res = subprocess.run(
            args, env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {res.stderr}")
        return res.stdout

    def lvcreate(self, name: str, *args: str, pv: str | None = None) -> None:
        where = [pv] if pv else []
        self.lvm(
            "lvcreate",
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-y",
            "-n",
            name,
            *args,
            self.vg,
            *where,
        )

    def report(self, cmd: str, fields: str, *extra: str) -> list[dict[str, str]]:
        out = self.lvm(
            cmd, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, *extra
        )
        key = {"lvs": "lv", "pvs": "pv", "vgs": "vg"}[cmd]
        return json.loads(out)["report"][0][key]

    def image_of(self, loop: str) -> Path:
        return self.images[self.loops.index(loop)]

    def extent_size(self) -> int:
        return int(self.report("vgs", "vg_extent_size", self.vg)[0]["vg_extent_size"])

    def pe_start(self, loop: str) -> int:
        rows = self.report("pvs", "pv_name,pe_start", *self.loops)
        return int(next(r["pe_start"] for r in rows if r["pv_name"] == loop))

    def segments(self, lv: str) -> list[dict[str, str]]:
        rows = self.report(
            "lvs", "lv_name,seg_start,seg_size,seg_pe_ranges,stripes,stripe_size", "-a", self.vg
        )
        rows = [r for r in rows if r["lv_name"].strip("[]") == lv]
        return sorted(rows, key=lambda r: int(r["seg_start"]))

    def expected_bytes(self, lv: str) -> bytes:
        """The LV's bytes assembled from the lvs report and the PV images (the oracle)."""
        x = self.extent_size()
        out = bytearray()
        for seg in self.segments(lv):
            areas = []
            for rng in seg["seg_pe_ranges"].split():
                loop, _, span = rng.rpartition(":")
                first, last = (int(v) for v in span.split("-"))
                with open(self.image_of(loop), "rb") as f:
                    f.seek(self.pe_start(loop) + first * x)
                    areas.append(f.read((last - first + 1) * x))
            n = int(seg["stripes"])
            if n == 1:
                out += b"".join(areas)
                continue
            s = int(seg["stripe_size"])
            for row in range(len(areas[0]) // s):
                for area in areas:
                    out += area[row * s : (row + 1) * s]
        return bytes(out)

    def fill_data_areas(self, seed: int) -> None:
        """Random bytes in every physical extent, so every extent is distinguishable."""
        rng = np.random.default_rng(seed)
        rows = self.report("pvs", "pv_name,pv_pe_count", *self.loops)
        count = {r["pv_name"]: int(r["pv_pe_count"]) for r in rows}
        for loop, img in zip(self.loops, self.images, strict=True):
            start = self.pe_start(loop)
            size = count[loop] * self.extent_size()  # not past the extents: a metadata copy
            with open(img, "r+b") as f:  # may sit at the end of the PV
                f.seek(start)
                f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())

    def close(self) -> None:
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        self.loops = []


def read_all(src, chunk: int = 3 * MiB + 4096) -> bytes:
    out = bytearray(src.size)
    view = memoryview(out)
    for off in range(0, src.size, chunk):
        src.read_into(off, view[off : off + chunk])
    return bytes(out)


# -- thin pool construction -----------------------------------------------------------------------

THIN_DEVICES = {1: 24 * MiB, 2: 8 * MiB, 5: 40 * MiB}  # device id → thin LV size


def thin_xml(nr_data_blocks: int, seed: int) -> tuple[str, dict[int, list[tuple[int, int]]]]:
    """Scattered mappings for each thin device: runs and single blocks, shared data blocks never."""
    rng = random.Random(seed)
    free = list(range(nr_data_blocks))
    rng.shuffle(free)
    maps: dict[int, list[tuple[int, int]]] = {}
    lines = [
        f'<superblock uuid="" time="2" transaction="7" flags="0" version="2" '
        f'data_block_size="{CHUNK // 512}" nr_data_blocks="{nr_data_blocks}">'
    ]
    for dev, size in THIN_DEVICES.items():
        blocks = size // CHUNK
        virt = sorted(rng.sample(range(blocks), min(blocks // 3, 60)))
        # A contiguous run too, so range_mappings appear alongside single ones.
        base = free[:8]
        del free[:8]
        start = min(base)
        run = [(v, start + i) for i, v in enumerate(range(blocks - 8, blocks))]
        pairs = [(v, free.pop()) for v in virt if v < blocks - 8] + run
        maps[dev] = pairs
        lines.append(
            f'  <device dev_id="{dev}" mapped_blocks="{len(pairs)}" transaction="0" '
            f'creation_time="0" snap_time="0">'
        )
        for v, d in pairs:
            lines.append(f'    <single_mapping origin_block="{v}" data_block="{d}" time="0"/>')
        lines.append("  </device>")
    lines.append("</superblock>")
    return "\n".join(lines) + "\n", maps


def thin_sections(
    vg: str, pool_extents: int, transaction: int, devices: dict[int, int] = THIN_DEVICES
) -> str:
    uid = "abcdef-ghij-klmn-opqr-stuv-wxyz-{:06d}"
    out = [
        f"""
\t\tpool {{
\t\t\tid = "{uid.format(0)}"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {{
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = {pool_extents}
\t\t\t\ttype = "thin-pool"
\t\t\t\tmetadata = "pool_tmeta"
\t\t\t\tpool = "pool_tdata"
\t\t\t\ttransaction_id = {transaction}
\t\t\t\tchunk_size = {CHUNK // 512}
\t\t\t\tdiscards = "passdown"
\t\t\t\tzero_new_blocks = 0
\t\t\t}}
\t\t}}
"""
    ]
    for dev, size in devices.items():
        out.append(f"""
\t\tthin{dev} {{
\t\t\tid = "{uid.format(dev)}"
\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]
\t\t\tflags = []
\t\t\tsegment_count = 1
\t\t\tsegment1 {{
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = {size // MiB}
\t\t\t\ttype = "thin"
\t\t\t\tthin_pool = "pool"
\t\t\t\ttransaction_id = 0
\t\t\t\tdevice_id = {dev}
\t\t\t}}
\t\t}}
""")
    return "".join(out)


def make_thin_pool(
    lab: LvmLab,
    data_mib: int,
    meta_mib: int,
    transaction: int = 7,
    devices: dict[int, int] = THIN_DEVICES,
    striped: bool = True,
) -> None:
    """pool_tdata/pool_tmeta as plain LVs, then the VG text turned into a thin pool whose thin
    LVs are ``thin{id}`` for each device id → size in ``devices``."""
    if striped:
        lab.lvcreate("pdata", "-L", f"{data_mib}M", "-i", "2", "-I", "64k")
    else:
        lab.lvcreate("pdata", "-L", f"{data_mib}M", pv=lab.loops[0])
    lab.lvcreate("pmeta", "-L", f"{meta_mib}M", pv=lab.loops[1])
    backup = lab.dir / "vg.txt"
    lab.lvm("vgcfgbackup", "-f", str(backup), lab.vg)
    text = backup.read_text()
    for old, new in (("pdata", "pool_tdata"), ("pmeta", "pool_tmeta")):
        text = re.sub(
            rf"\t\t{old} {{\n(\t\t\tid = \"[^\"]+\"\n)\t\t\tstatus = \[\"READ\", \"WRITE\", \"VISIBLE\"\]",
            rf'\t\t{new} {{\n\1\t\t\tstatus = ["READ", "WRITE"]',
            text,
        )
    text = text.replace(
        "\tlogical_volumes {\n",
        "\tlogical_volumes {\n" + thin_sections(lab.vg, data_mib, transaction, devices),
        1,
    )
    backup.write_text(text)
    lab.lvm("vgcfgrestore", "--force", "-f", str(backup), lab.vg)


def write_lv_bytes(lab: LvmLab, lv: str, data: bytes) -> None:
    """Put ``data`` at the start of a linear LV by its lvs PE range."""
    (seg,) = lab.segments(lv)
    loop, _, span = seg["seg_pe_ranges"].rpartition(":")
    first = int(span.split("-")[0])
    with open(lab.image_of(loop), "r+b") as f:
        f.seek(lab.pe_start(loop) + first * lab.extent_size())
        f.write(data)


def thin_dump_maps(meta: Path) -> dict[int, list[tuple[int, int, int]]]:
    """thin_dump's view: device → [(origin_begin, data_begin, length)]."""
    root = ET.fromstring(
        subprocess.run(["thin_dump", str(meta)], capture_output=True, text=True, check=True).stdout
    )
    out: dict[int, list[tuple[int, int, int]]] = {}
    for dev in root.iter("device"):
        runs = []
        for m in dev:
            if m.tag == "single_mapping":
                runs.append((int(m.get("origin_block")), int(m.get("data_block")), 1))
            else:
                runs.append(
                    (int(m.get("origin_begin")), int(m.get("data_begin")), int(m.get("length")))
                )
        out[int(dev.get("dev_id"))] = runs
    return out


def merge_runs(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    merged: list[tuple[int, int, int]] = []
    for v, d, n in sorted(runs):
        if merged and merged[-1][0] + merged[-1][2] == v and merged[-1][1] + merged[-1][2] == d:
            pv, pd, pn = merged[-1]
            merged[-1] = (pv, pd, pn + n)
        else:
            merged.append((v, d, n))
    return merged


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="lab")
def lab_fixture(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = LvmLab(tmp_path_factory.mktemp("lvm"), [64 * MiB, 64 * MiB], f"vpk{os.getpid()}")
    try:
        lab.lvcreate("lin", "-L", "3M", pv=lab.loops[0])
        lab.lvcreate("multi", "-L", "2M", pv=lab.loops[0])
        lab.lvcreate("gap", "-L", "1M", pv=lab.loops[0])
        lab.lvm("lvextend", "--driverloaded", "n", "-L", "+3M", f"{lab.vg}/multi", lab.loops[0])
        lab.lvm("lvextend", "--driverloaded", "n", "-L", "+2M", f"{lab.vg}/multi", lab.loops[1])
        lab.lvcreate("striped", "-L", "8M", "-i", "2", "-I", "64k")
        lab.lvcreate("narrow", "-L", "4M", "-i", "2", "-I", "4k")
        make_thin_pool(lab, data_mib=16, meta_mib=4)
        lab.fill_data_areas(seed=4)
        # Thin metadata from thin_restore, written where pool_tmeta lives.
        xml, maps = thin_xml(16 * MiB // CHUNK, seed=9)
        (lab.dir / "meta.xml").write_text(xml)
        meta = lab.dir / "meta.bin"
        with open(meta, "wb") as f:
            f.truncate(4 * MiB)
        subprocess.run(
            ["thin_restore", "-i", str(lab.dir / "meta.xml"), "-o", str(meta)],
            check=True,
            capture_output=True,
        )
        write_lv_bytes(lab, "pool_tmeta", meta.read_bytes())
        lab.thin_maps = maps
        yield lab
    finally:
        lab.close()


def pvs_of(lab: LvmLab) -> tuple[str, ...]:
    return tuple(str(p) for p in lab.images)


# -- thick LVs --------------------------------------------------------------------------------------


def test_linear_lv_reads_the_bytes_at_its_pe_range(lab):
    src = open_source(f"lvm:{lab.vg}/lin", pvs=pvs_of(lab))
    try:
        assert src.size == 3 * MiB
        assert read_all(src) == lab.expected_bytes("lin")
        assert src.info.kind == "lvm"
        assert src.info.details["lv"] == "lin" and src.info.details["vg"] == lab.vg
        assert src.data_extents().total() == 3 * MiB
    finally:
        src.close()


def test_multi_segment_lv_follows_every_segment_across_both_pvs(lab):
    assert len(lab.segments("multi")) == 3
    src = open_lvm(f"lvm:{lab.vg}/multi", pvs_of(lab))
    try:
        assert src.size == 7 * MiB
        assert read_all(src, chunk=MiB // 2 + 512) == lab.expected_bytes("multi")
        assert len(src.info.details["segments"]) == 3
        assert len(src.physical_map().devices) == 2
    finally:
        src.close()


@pytest.mark.parametrize("lv", ["striped", "narrow"])
def test_striped_lv_interleaves_stripe_size_chunks_across_two_pvs(lab, lv):
    src = open_lvm(f"lvm:{lab.vg}/{lv}", pvs_of(lab))
    try:
        assert read_all(src, chunk=100_000) == lab.expected_bytes(lv)
        (seg,) = src.info.details["segments"]
        assert seg["stripe_size"] == int(lab.segments(lv)[0]["stripe_size"])
    finally:
        src.close()


def test_physical_map_matches_lvs_pe_ranges_and_pvs_pe_start(lab):
    x = lab.extent_size()
    src = open_lvm(f"lvm:{lab.vg}/multi", pvs_of(lab))
    try:
        pm = src.physical_map()
        got = [(s, n, pm.devices[d], off) for s, n, d, off, _ in pm.runs()]
    finally:
        src.close()
    want = []
    for seg in lab.segments("multi"):
        loop, _, span = seg["seg_pe_ranges"].rpartition(":")
        first, last = (int(v) for v in span.split("-"))
        want.append(
            (
                int(seg["seg_start"]),
                (last - first + 1) * x,
                str(lab.image_of(loop)),
                lab.pe_start(loop) + first * x,
            )
        )
    assert got == want


def test_pvs_are_matched_by_uuid_in_any_order_and_as_loop_devices(lab):
    expected = lab.expected_bytes("striped")
    for pvs in (tuple(reversed(pvs_of(lab))), tuple(lab.loops)):
        src = open_lvm(f"lvm:{lab.vg}/striped", pvs)
        try:
            assert read_all(src) == expected
        finally:
            src.close()


def test_missing_pv_is_refused_naming_its_uuid(lab):
    uuid = lab.report("pvs", "pv_name,pv_uuid", *lab.loops)
    second = next(r["pv_uuid"] for r in uuid if r["pv_name"] == lab.loops[1])
    with pytest.raises(SourceError, match=re.escape(second)):
        open_lvm(f"lvm:{lab.vg}/striped", (str(lab.images[0]),))
    # An LV entirely on the PV that is given still opens.
    open_lvm(f"lvm:{lab.vg}/lin", (str(lab.images[0]),)).close()


def test_unknown_lv_vg_or_bad_name_is_refused(lab):
    with pytest.raises(SourceError, match="no such LV"):
        open_lvm(f"lvm:{lab.vg}/nope", pvs_of(lab))
    with pytest.raises(SourceError, match="not on the given PVs"):
        open_lvm("lvm:novg/lin", pvs_of(lab))
    with pytest.raises(UsageError):
        open_lvm("lvm:justavg", pvs_of(lab))
    with pytest.raises(UsageError, match="--pv"):
        open_lvm(f"lvm:{lab.vg}/lin", ())


def test_damaged_metadata_text_is_refused(lab, tmp_path):
    bad = tmp_path / "bad.img"
    shutil.copyfile(lab.images[0], bad)
    with open(bad, "r+b") as f:
        f.seek(4096)
        header = f.read(512)
        offset = int.from_bytes(header[40:48], "little")
        f.seek(4096 + offset + 20)
        byte = f.read(1)
        f.seek(4096 + offset + 20)
        f.write(bytes([byte[0] ^ 0x20]))
    with pytest.raises(SourceError, match="checksum"):
        open_lvm(f"lvm:{lab.vg}/lin", (str(bad), str(lab.images[1])))


def test_image_without_lvm_label_is_refused_and_left_closed(tmp_path):
    img = tmp_path / "blank.img"
    img.write_bytes(bytes(MiB))
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(SourceError, match="LABELONE"):
        open_lvm("lvm:vg/lv", (str(img),))
    opened = set(os.listdir("/proc/self/fd")) - before
    assert not [os.readlink(f"/proc/self/fd/{fd}") for fd in opened if fd.isdigit()]


def test_metadata_ring_buffer_that_wrapped_still_yields_the_newest_vg(tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = LvmLab(tmp_path, [32 * MiB], f"vpw{os.getpid()}")
    try:
        tags = [f"--addtag=t{i:03d}" + "x" * 900 for i in range(100)]
        lab.lvm("vgchange", *tags, lab.vg)
        img = lab.images[0]
        wrapped = False
        for i in range(40):
            lab.lvcreate(f"l{i}", "-L", "1M")
            with open(img, "rb") as f:
                f.seek(4096)
                head = f.read(512)
            size = int.from_bytes(head[32:40], "little")
            off = int.from_bytes(head[40:48], "little")
            length = int.from_bytes(head[48:56], "little")
            if off + length > size:
                wrapped = True
                break
        assert wrapped, "the metadata ring never wrapped"
        lab.fill_data_areas(seed=1)
        src = open_lvm(f"lvm:{lab.vg}/l{i}", (str(img),))
        try:
            assert src.info.details["seqno"] == int(
                lab.report("vgs", "vg_seqno", lab.vg)[0]["vg_seqno"]
            )
            assert read_all(src) == lab.expected_bytes(f"l{i}")
        finally:
            src.close()
    finally:
        lab.close()


# -- thin LVs ---------------------------------------------------------------------------------------


def pool_meta_file(lab: LvmLab, tmp_path: Path) -> Path:
    meta = tmp_path / "tmeta.bin"
    meta.write_bytes(lab.expected_bytes("pool_tmeta"))
    return meta


@pytest.mark.parametrize("dev", sorted(THIN_DEVICES))
def test_thin_lv_used_map_equals_thin_dump_of_the_pool_metadata(lab, tmp_path, dev):
    dumped = thin_dump_maps(pool_meta_file(lab, tmp_path))
    src = open_lvm(f"lvm:{lab.vg}/thin{dev}", pvs_of(lab))
    try:
        want = merge_runs(dumped[dev])
        used = [(s // CHUNK, (e - s) // CHUNK) for s, e in src.data_extents()]
        merged_virt = []
        for v, _, n in want:
            if merged_virt and merged_virt[-1][0] + merged_virt[-1][1] == v:
                merged_virt[-1] = (merged_virt[-1][0], merged_virt[-1][1] + n)
            else:
                merged_virt.append((v, n))
        assert used == merged_virt
        assert src.size == THIN_DEVICES[dev]
        details = src.info.details["thin"]
        assert details["device_id"] == dev and details["transaction_id"] == 7
        assert details["mapped_blocks"] == sum(n for _, _, n in want)
    finally:
        src.close()


@pytest.mark.parametrize("dev", sorted(THIN_DEVICES))
def test_thin_lv_bytes_are_the_mapped_data_blocks_and_zeros_elsewhere(lab, tmp_path, dev):
    data = lab.expected_bytes("pool_tdata")
    want = bytearray(THIN_DEVICES[dev])
    for v, d, n in thin_dump_maps(pool_meta_file(lab, tmp_path))[dev]:
        want[v * CHUNK : (v + n) * CHUNK] = data[d * CHUNK : (d + n) * CHUNK]
    src = open_lvm(f"lvm:{lab.vg}/thin{dev}", pvs_of(lab))
    try:
        assert read_all(src, chunk=300_000) == bytes(want)
        # Every physical run is inside pool_tdata's stripes: the thin map composed with them.
        pm = src.physical_map()
        assert pm.lengths.sum() == src.data_extents().total()
    finally:
        src.close()


def test_thin_pool_whose_transaction_id_disagrees_with_the_vg_is_refused(lab, tmp_path):
    pvs = [tmp_path / "a.img", tmp_path / "b.img"]
    for src_img, dst in zip(lab.images, pvs, strict=True):
        shutil.copyfile(src_img, dst)
    # Rewrite the metadata on the copies with a different transaction id than the VG records.
    xml = (lab.dir / "meta.xml").read_text().replace('transaction="7"', 'transaction="8"')
    (tmp_path / "m.xml").write_text(xml)
    meta = tmp_path / "m.bin"
    with open(meta, "wb") as f:
        f.truncate(4 * MiB)
    subprocess.run(
        ["thin_restore", "-i", str(tmp_path / "m.xml"), "-o", str(meta)],
        check=True,
        capture_output=True,
    )
    (seg,) = lab.segments("pool_tmeta")
    loop, _, span = seg["seg_pe_ranges"].rpartition(":")
    with open(pvs[lab.loops.index(loop)], "r+b") as f:
        f.seek(lab.pe_start(loop) + int(span.split("-")[0]) * lab.extent_size())
        f.write(meta.read_bytes())
    with pytest.raises(SourceError, match="transaction id is 8 but the VG expects 7"):
        open_lvm(f"lvm:{lab.vg}/thin1", tuple(str(p) for p in pvs))


def test_thin_pool_with_damaged_metadata_block_is_refused(lab, tmp_path):
    pvs = [tmp_path / "a.img", tmp_path / "b.img"]
    for src_img, dst in zip(lab.images, pvs, strict=True):
        shutil.copyfile(src_img, dst)
    (seg,) = lab.segments("pool_tmeta")
    loop, _, span = seg["seg_pe_ranges"].rpartition(":")
    start = lab.pe_start(loop) + int(span.split("-")[0]) * lab.extent_size()
    with open(pvs[lab.loops.index(loop)], "r+b") as f:
        f.seek(start + 100)  # inside the superblock, covered by its checksum
        f.write(b"\xff")
    with pytest.raises(SourceError, match="checksum"):
        open_lvm(f"lvm:{lab.vg}/thin2", tuple(str(p) for p in pvs))


def test_cloned_pv_and_truncated_pv_are_refused(lab, tmp_path):
    clone = tmp_path / "clone.img"
    shutil.copyfile(lab.images[0], clone)
    with pytest.raises(SourceError, match="cloned PV"):
        open_lvm(f"lvm:{lab.vg}/lin", (str(lab.images[0]), str(clone)))
    with open(clone, "r+b") as f:
        f.truncate(40 * MiB)
    with pytest.raises(SourceError, match="truncated"):
        open_lvm(f"lvm:{lab.vg}/lin", (str(clone), str(lab.images[1])))


def test_pv_with_two_metadata_copies_reads_either_and_agrees(tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = LvmLab(tmp_path, [32 * MiB], f"vp2m{os.getpid()}", pvcreate=("--pvmetadatacopies", "2"))
    try:
        lab.lvcreate("a", "-L", "2M")
        lab.fill_data_areas(seed=3)
        fd = os.open(lab.images[0], os.O_RDONLY)
        try:
            from volpack.source.lvm_metadata import read_metadata, read_pv_label

            label = read_pv_label(fd, str(lab.images[0]))
            copies = read_metadata(fd, label, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        assert len(label.metadata_areas) == 2 and len(copies) == 2
        assert copies[1].mda_offset > 16 * MiB  # the second copy sits at the end of the PV
        assert copies[0].text == copies[1].text
        src = open_lvm(f"lvm:{lab.vg}/a", (str(lab.images[0]),))
        try:
            assert read_all(src) == lab.expected_bytes("a")
        finally:
            src.close()
    finally:
        lab.close()
