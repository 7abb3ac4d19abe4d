"""``backup --fsfreeze`` takes only libvirt: sources (the guest agent is reached through
libvirt): any other source is one usage line naming the kinds that take it, exit 2, no archive.
"""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.parametrize(
    "source", ["IMAGE", "nbd+unix:///?socket=/nonexistent.sock", "qmp:/nonexistent.qmp#drive0"]
)
def test_fsfreeze_on_a_source_without_a_guest_agent_is_a_usage_error(tmp_path, source) -> None:
    image = tmp_path / "v.img"
    image.write_bytes(b"\0" * 65536)
    source = source.replace("IMAGE", str(image))
    archive = tmp_path / "v.vpk"
    r = subprocess.run(
        ["python3", "-m", "volpack", "backup", source, str(archive), "--fsfreeze", "--no-catalog"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--fsfreeze" in r.stderr and "libvirt:DOMAIN" in r.stderr and source in r.stderr
    assert not archive.exists()
