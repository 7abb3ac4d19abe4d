"""Volumes in: raw files and block devices, qcow2 images, LVM logical volumes, NBD exports, a
running QEMU's disk over QMP (fleecing), and other QEMU image formats (vmdk, vdi, vhdx, vpc, qed)
through a private qemu-storage-daemon.

``open_source`` picks the reader; each reader yields size, data runs, physical map and bytes.
"""

from __future__ import annotations

from volpack.source.base import PhysicalMap, Source, SourceInfo
from volpack.source.probe import image_kind

__all__ = ["PhysicalMap", "Source", "SourceInfo", "open_source", "SOURCE_FORMATS"]

SOURCE_FORMATS = ("auto", "raw", "qcow2", "lvm")


def open_source(path: str, source_format: str = "auto", *, pvs: tuple[str, ...] = ()) -> Source:
    """Open ``path`` read-only as a volume.

    ``source_format`` is one of SOURCE_FORMATS; ``auto`` looks at the content. ``pvs`` lists the
    physical volumes for ``lvm:VG/LV`` paths.
    """
    from volpack.source.checks import check_volume_path
    from volpack.source.raw import open_raw

    if path.startswith(("nbd://", "nbd+unix://")):
        from volpack.source.nbd import open_nbd

        return open_nbd(path)
    if path.startswith("qmp:"):
        from volpack.source.fleece import open_qmp

        return open_qmp(path)
    if path.startswith("libvirt:"):
        from volpack.source.libvirt import open_libvirt

        return open_libvirt(path)
    if source_format == "lvm" or path.startswith("lvm:"):
        from volpack.source.lvm import open_lvm

        return open_lvm(path, pvs)
    check_volume_path(path)  # before the probe opens it: a FIFO would block
    kind = image_kind(path) if source_format == "auto" else source_format
    if kind == "qcow2":
        from volpack.source.qcow2 import open_qcow2

        return open_qcow2(path)
    if kind == "qemu":
        from volpack.source.qemu_image import open_qemu_image

        image = open_qemu_image(path)
        if image is not None:
            return image
    return open_raw(path)
