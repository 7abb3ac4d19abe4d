"""Issue 14 rows: sealed archives against plain ones on the same image, in the same run.

A `--compress zstd:1` backup to a file, plain and sealed to an age X25519 recipient (an identity
made with `volpack key generate`); the restore of each (the sealed one with `--identity`); the
`verify` of each without a key (a sealed archive is then checked as media: ciphertext checksums,
tables, digest), and of the sealed one with its key. Plain and sealed runs alternate, and which
goes first alternates too, so that a load change on the shared machine hits both alike.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import measure

VOLPACK = (sys.executable, "-m", "volpack")
IMAGES = ("ext4", "dense")
# Row names; bench/targets.py compares each sealed row with the plain row of its pair.
BACKUP = "volpack backup --compress zstd:1"
BACKUP_SEALED = "volpack backup --compress zstd:1 --recipient"
RESTORE = "volpack restore (zstd:1)"
RESTORE_SEALED = "volpack restore (zstd:1, sealed) --identity"
VERIFY = "volpack verify (zstd:1)"
VERIFY_SEALED = "volpack verify (zstd:1, sealed) without key"
VERIFY_KEYED = "volpack verify (zstd:1, sealed) --identity"
# (plain row, sealed row, kind): the pairs targets.py checks
PAIRS = (
    (BACKUP, BACKUP_SEALED, "seal-backup"),
    (RESTORE, RESTORE_SEALED, "seal-restore"),
    (VERIFY, VERIFY_SEALED, "seal-verify"),
)


def _vp(*args: str) -> list[str]:
    return [*VOLPACK, *args]


def rows(img, out: Path, repeat: int) -> list[measure.Row]:
    if img.name not in IMAGES:
        return []
    work = out / "crypto"
    measure.remove(work)
    work.mkdir(parents=True)
    try:
        return _rows(img, work, repeat)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        return [
            measure.Row(img.name, "sealed archives", "seal-backup", False, note=f"failed: {exc}")
        ]
    finally:
        measure.remove(work)


def _rows(img, work: Path, repeat: int) -> list[measure.Row]:
    key = work / "backup.key"
    res = subprocess.run(
        _vp("key", "generate", "-o", str(key), "-q"), capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(f"volpack key generate: {res.stderr.strip()[-300:]}")
    recipient = res.stdout.strip().splitlines()[-1]
    plain, sealed = work / "plain.vpk", work / "sealed.vpk"
    src = str(img.path)
    common = ("--compress", "zstd:1", "--no-catalog", "-q")
    result = measure.alternating(
        img,
        (BACKUP, BACKUP_SEALED),
        "seal-backup",
        [
            _vp("backup", src, str(plain), *common),
            _vp("backup", src, str(sealed), *common, "--recipient", recipient),
        ],
        [plain, sealed],
        [img.path, img.path],
        repeat,
    )
    if not (plain.exists() and sealed.exists()):
        return result
    target = work / "restored.img"
    result += measure.alternating(
        img,
        (RESTORE, RESTORE_SEALED),
        "seal-restore",
        [
            _vp("restore", str(plain), str(target), "-q", "--force"),
            _vp("restore", str(sealed), str(target), "-q", "--force", "--identity", str(key)),
        ],
        [target, target],
        [plain, sealed],
        repeat,
    )
    for r in result[-2:]:
        r.size = r.apparent = None  # the restored image, not an archive
    measure.remove(target)
    result += measure.alternating(
        img,
        (VERIFY, VERIFY_SEALED, VERIFY_KEYED),
        "seal-verify",
        [
            _vp("verify", str(plain), "-q"),
            _vp("verify", str(sealed), "-q"),
            _vp("verify", str(sealed), "-q", "--identity", str(key)),
        ],
        [None, None, None],
        [plain, sealed, sealed],
        repeat,
    )
    return result


def main() -> int:
    import run
    import targets

    return run.rows_only(
        "issue 14 rows only: plain against sealed archives", rows, targets._crypto_checks, IMAGES
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
