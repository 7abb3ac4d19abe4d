"""source/probe.py: an image's kind from its first bytes, for every magic open_source knows."""

from __future__ import annotations

import pytest

from volpack.source.probe import QCOW2_MAGIC, QEMU_MAGIC, image_kind


@pytest.mark.parametrize(("at", "magic"), QEMU_MAGIC)
def test_each_qemu_magic_at_its_offset_is_a_qemu_image(tmp_path, at, magic):
    path = tmp_path / "img"
    path.write_bytes(bytes(at) + magic + bytes(512))
    assert image_kind(str(path)) == "qemu"
    path.write_bytes(bytes(at + 1) + magic + bytes(512))  # one byte off: not that format
    assert image_kind(str(path)) == "raw"


def test_qcow2_short_unreadable_and_plain_files(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(QCOW2_MAGIC + bytes(100))
    assert image_kind(str(path)) == "qcow2"
    path.write_bytes(QCOW2_MAGIC[:3])
    assert image_kind(str(path)) == "raw"
    path.write_bytes(b"")
    assert image_kind(str(path)) == "raw"
    assert image_kind(str(tmp_path / "missing")) == "raw"  # the raw reader says why
