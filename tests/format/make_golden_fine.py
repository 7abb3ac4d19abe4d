"""Make the golden FINE incremental (format 1.4 bit 5) and its base (run once per version that
changes what they hold; checked in under golden/fine-MAJOR.MINOR):

    python3 tests/format/make_golden_fine.py [--replace]

A qcow2 image written with ``qemu-io`` patterns (deterministic), a full backup, then a persistent
dirty bitmap and small changes — a 4 KiB write beside the base's data, an 8 KiB write where the
base held nothing, a discard and a zero-write — and the incremental that bitmap drives, which
covers the bitmap's 64 KiB granules, not whole 1 MiB hash blocks. tests/chain/test_chain_golden.py
decodes it, recomputes its hash table entries from the restored bytes and restores it forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KiB, MiB = 1 << 10, 1 << 20
SIZE = 8 * MiB
BEFORE = ("write -P 0x11 0 3M", "write -P 0x22 5M 1M")
CHANGES = (
    f"write -P 0x33 {MiB + 64 * KiB} 4k",  # beside the base's data in hash block 1
    f"write -P 0x44 {6 * MiB + 512 * KiB} 8k",  # where the base held nothing (hash block 6)
    f"discard {2 * MiB} 64k",  # a trim in hash block 2
    f"write -z {5 * MiB} 64k",  # zeros in hash block 5
)


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def qemu_io(image: str, cmds: tuple[str, ...]) -> None:
    argv = ["qemu-io", "-f", "qcow2", "-d", "unmap"]
    for c in cmds:
        argv += ["-c", c]
    _run(*argv, image)


def raw_sha256(image: str, work: str) -> str:
    raw = os.path.join(work, "state.raw")
    _run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw)
    with open(raw, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    sys.path.insert(0, HERE)
    from golden_guard import guard

    from volpack.format import records as R

    out = os.path.join(HERE, "golden", f"fine-{R.MAJOR}.{R.MINOR}")
    guard(__doc__, out)
    os.makedirs(out, exist_ok=True)
    vp = [sys.executable, "-m", "volpack"]
    facts = []
    with tempfile.TemporaryDirectory() as work:
        image = os.path.join(work, "v.qcow2")
        _run("qemu-img", "create", "-q", "-f", "qcow2", image, str(SIZE))
        qemu_io(image, BEFORE)
        base = os.path.join(out, "base.vpk")
        inc = os.path.join(out, "inc.vpk")
        for p in (base, inc):
            if os.path.exists(p):
                os.remove(p)
        common = ["--compress", "none", "--no-catalog", "-q", "--block-size", "4096"]
        _run(*vp, "backup", image, base, *common)
        facts.append(("base.vpk", raw_sha256(image, work)))
        _run("qemu-img", "bitmap", "--add", "--enable", image, "daily")
        qemu_io(image, CHANGES)
        _run(*vp, "backup", image, inc, *common, "--base", base, "--bitmap", "daily")
        facts.append(("inc.vpk", raw_sha256(image, work)))
    import volpack

    recorded = []
    for name, sha in facts:
        with volpack.open_archive(os.path.join(out, name)) as a:
            recorded.append(
                {
                    "archive": name,
                    "uuid": a.uuid,
                    "digest": a.digest.split(":")[-1],
                    "state_digest": a.trailer.state_digest.hex(),
                    "fine": a.header.fine,
                    "volume_size": a.size,
                    "volume_sha256": sha,
                }
            )
    assert recorded[1]["fine"], "the incremental did not come out FINE"
    with open(os.path.join(out, "fine.json"), "w") as f:
        json.dump(recorded, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
