"""What an image file is, told from its first bytes: qcow2, another QEMU format, or raw.

``open_source`` asks this for every path before it picks a reader, so it imports no reader: a raw
backup should not load the qcow2 and QEMU sources just to learn it needs neither.
"""

from __future__ import annotations

QCOW2_MAGIC = b"QFI\xfb"
# Formats read through qemu-nbd, and how each announces itself in its first bytes (qemu's own
# probes). A fixed VHD has its footer at the end only and qemu reads it as raw, as volpack does.
QEMU_FORMATS = ("vmdk", "vdi", "vhdx", "vpc", "qed")
QEMU_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"KDMV"),  # vmdk sparse extent
    (0, b"# Disk DescriptorFile"),  # vmdk descriptor
    (0x40, b"\x7f\x10\xda\xbe"),  # vdi signature 0xbeda107f, little-endian
    (0, b"vhdxfile"),
    (0, b"conectix"),  # dynamic VHD (vpc)
    (0, b"QED\x00"),
)


def image_kind(path: str) -> str:
    """``"qcow2"``, ``"qemu"`` (one of QEMU_FORMATS) or ``"raw"`` (also when unreadable: the
    raw reader then says why)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x44)
    except OSError:
        return "raw"
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    if any(head[at : at + len(m)] == m for at, m in QEMU_MAGIC):
        return "qemu"
    return "raw"
