"""An NBD export's dirty bitmap (``qemu-nbd -B``) as the hint of an incremental, end to end: a full
over NBD, then writes, a zero write and a discard made with qemu-io into the qcow2 image behind
the export, then ``backup nbd+unix://… --base full --bitmap cbt``: small, found by the bitmap,
and the restored chain equals the image (``qemu-img compare``)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.nbd_servers import need, qemu_nbd, url

MiB = 1 << 20


def run_cli(*args: str) -> tuple[int, str, str]:
    r = subprocess.run(
        [sys.executable, "-m", "volpack", *args], capture_output=True, text=True, timeout=300
    )
    return r.returncode, r.stdout, r.stderr


def sh(*argv: str) -> None:
    need(argv[0])
    subprocess.run(argv, check=True, capture_output=True)


def test_an_nbd_dirty_bitmap_drives_an_incremental_whose_chain_restores_the_image(tmp_path):
    img = tmp_path / "vm.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(img), str(64 * MiB))
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 8M", "-c", "write -P 0x11 40M 3M", str(img))
    sock = tmp_path / "nbd.sock"
    full, inc = tmp_path / "full.vpk", tmp_path / "inc.vpk"
    with qemu_nbd(img, sock, "qcow2"):
        code, _, err = run_cli("backup", url(sock), str(full), "--no-catalog")
        assert code == 0, err
    # The bitmap starts at the full: what the guest writes from now on is tracked.
    sh("qemu-img", "bitmap", "--add", "--enable", str(img), "cbt")
    sh(
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -z 0 64k",  # zeroed: must come back as zeros, not as 0xaa
        "-c",
        "discard 64k 64k",  # trimmed: likewise
        "-c",
        "write -P 0xbb 128k 64k",
        "-c",
        "write -P 0xcc 50M 1M",
        str(img),
    )
    with qemu_nbd(img, sock, "qcow2", bitmap="cbt"):
        code, out, err = run_cli(
            "backup", url(sock), str(inc), "--base", str(full), "--bitmap", "cbt",
            "--no-catalog", "--json",
        )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["changes"]["method"] == "bitmap:cbt"
    # Two hash blocks changed (0 and 50 MiB); the check read those plus the sample, not 11 MiB.
    assert result["used_blocks"] * result["block_size"] <= 2 * MiB
    assert result["changes"]["read_bytes"] < 8 * MiB
    out_img = tmp_path / "restored.img"
    code, _, err = run_cli("restore", str(inc), str(out_img))
    assert code == 0, err
    need("qemu-img")
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(out_img), str(img)],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
