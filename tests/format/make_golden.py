"""Make the golden archive of the current format version (run once per released version):

    python3 tests/format/make_golden.py [--replace]

The volume is generated deterministically by ``golden_volume``; the archive is checked in under
tests/format/golden/ and must decode forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
VOLUME_SIZE = (1 << 20) + 123  # not a multiple of the block size


def golden_volume(path: str) -> None:
    """Hole at the start, text, random data, a zero run inside data, a short last block."""
    rng = random.Random(20261124)
    text = b"".join(b"volpack golden line %06d\n" % i for i in range(600))
    with open(path, "wb") as f:
        f.truncate(VOLUME_SIZE)
        f.seek(3 * 4096)
        f.write(text)
        f.seek(300_000)
        f.write(rng.randbytes(100_000) + bytes(3 * 4096) + rng.randbytes(50_000))
        f.seek(VOLUME_SIZE - 50)
        f.write(b"E" * 50)


def main() -> int:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))
    sys.path.insert(0, HERE)
    from golden_guard import guard

    import volpack
    from volpack.format.records import MAJOR, MINOR

    name = f"v{MAJOR}.{MINOR}"
    guard(__doc__, os.path.join(GOLDEN, f"{name}.vpk"), os.path.join(GOLDEN, f"{name}.json"))
    os.makedirs(GOLDEN, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vol = os.path.join(tmp, "golden.img")
        golden_volume(vol)
        archive = os.path.join(GOLDEN, f"{name}.vpk")
        r = volpack.backup(
            vol,
            archive,
            frame_size=65536,
            compress="zstd:3",
            force=True,
            detect="zeros",
            allow_mounted=True,
        )
        with open(vol, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    facts = {
        "uuid": r.archive_uuid,
        "volume_size": r.volume_size,
        "block_size": r.block_size,
        "used_blocks": r.used_blocks,
        "frame_count": r.frame_count,
        "digest": r.digest,
        "archive_size": r.archive_size,
        "volume_sha256": digest,
    }
    with open(os.path.join(GOLDEN, f"{name}.json"), "w") as f:
        json.dump(facts, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
