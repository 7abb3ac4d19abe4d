"""Make the golden three-link chain of the current format version (run once per version that
changes what a chain's bytes hold; the result is checked in under golden/chain-MAJOR.MINOR):

    python3 tests/format/make_golden_chain.py [--replace]

A full and two incrementals of a deterministic small volume (``generation``): writes at
unaligned offsets, a zero-write, a punched hole, and growth to a size that is not a block
multiple. tests/chain/test_chain_golden.py checks that the chain decodes and restores forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KiB, MiB = 1 << 10, 1 << 20
BLOCK = 4 * KiB


def _pwrite(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def generation(path: str, k: int) -> None:
    """Bring the volume at ``path`` to generation ``k`` (0 creates it; 1 and 2 change it)."""
    rng = random.Random(20261201 + k)
    if k == 0:
        with open(path, "wb") as f:
            f.truncate(3 * MiB + 123)
        _pwrite(path, 5000, b"".join(b"volpack chain line %05d\n" % i for i in range(2000)))
        _pwrite(path, MiB + 777, rng.randbytes(300 * KiB))
        _pwrite(path, 3 * MiB + 123 - 60, b"E" * 60)
    elif k == 1:
        _pwrite(path, MiB + 4097, rng.randbytes(10_001))  # changed data
        _pwrite(path, 5000, bytes(8192))  # zeroed inside data
        subprocess.run(  # trimmed: a whole 1 MiB hash block becomes zero
            ["fallocate", "--punch-hole", "--offset", str(MiB), "--length", str(MiB), path],
            check=True,
        )
    else:
        os.truncate(path, 4 * MiB + 5000)  # grown, not a block multiple
        _pwrite(path, 4 * MiB + 1000, rng.randbytes(4000))
        _pwrite(path, 2 * MiB + 100, b"generation two")


def main() -> int:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))
    sys.path.insert(0, HERE)
    from golden_guard import guard

    import volpack
    from volpack.format.records import MAJOR, MINOR

    chain = os.path.join(HERE, "golden", f"chain-{MAJOR}.{MINOR}")
    guard(__doc__, chain)
    os.makedirs(chain, exist_ok=True)
    facts = []
    with tempfile.TemporaryDirectory() as tmp:
        vol = os.path.join(tmp, "golden.img")
        for k in range(3):
            generation(vol, k)
            r = volpack.backup(
                vol,
                os.path.join(chain, f"g{k}.vpk"),
                block_size=BLOCK if k == 0 else None,
                frame_size=65536,
                compress="zstd:3",
                force=True,
                allow_mounted=True,
                base=os.path.join(chain, f"g{k - 1}.vpk") if k else None,
            )
            with open(vol, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            facts.append(
                {
                    "archive": f"g{k}.vpk",
                    "uuid": r.archive_uuid,
                    "digest": r.digest,
                    "state_digest": r.state_digest,
                    "chain_seq": r.chain_seq,
                    "base_uuid": r.base_uuid,
                    "volume_size": r.volume_size,
                    "volume_sha256": digest,
                }
            )
    with open(os.path.join(chain, "chain.json"), "w") as f:
        json.dump(facts, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
