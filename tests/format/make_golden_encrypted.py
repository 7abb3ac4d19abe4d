"""Make the golden sealed archive of the current format version (run once per version; the
result is checked in under golden/encrypted/vMAJOR.MINOR.*):

    python3 tests/format/make_golden_encrypted.py [--replace]

The volume is make_golden's; the archive is sealed to three test keys checked in beside it (an
age identity, a 32-byte key file, a passphrase with the least Argon2id work volpack accepts).
They are test keys, published on purpose: the archive must open with each of them forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEALED = os.path.join(HERE, "golden", "encrypted")


def main() -> int:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))
    sys.path.insert(0, HERE)
    from golden_guard import guard
    from make_golden import golden_volume

    import volpack
    from volpack.crypto import Argon2Params, EncryptKeys, KeyFile, Passphrase, generate_identity
    from volpack.crypto.files import write_identity
    from volpack.format.records import MAJOR, MINOR

    name = f"v{MAJOR}.{MINOR}"
    guard(
        __doc__, *(os.path.join(SEALED, f"{name}.{ext}") for ext in ("identity", "keyfile", "vpk"))
    )

    os.makedirs(SEALED, exist_ok=True)
    identity = generate_identity()
    write_identity(os.path.join(SEALED, f"{name}.identity"), identity, force=True)
    key = os.urandom(32)
    with open(os.path.join(SEALED, f"{name}.keyfile"), "wb") as f:
        f.write(key)
    passphrase = f"volpack golden {MAJOR}.{MINOR} passphrase".encode()
    with open(os.path.join(SEALED, f"{name}.passphrase"), "wb") as f:
        f.write(passphrase + b"\n")
    keys = EncryptKeys(
        recipients=(identity.recipient,),
        passphrases=(Passphrase(passphrase),),
        key_files=(KeyFile(key),),
        argon2=Argon2Params(memory_kib=64 * 1024, iterations=3, lanes=1),
    )
    with tempfile.TemporaryDirectory() as tmp:
        vol = os.path.join(tmp, "golden.img")
        golden_volume(vol)
        r = volpack.backup(
            vol,
            os.path.join(SEALED, f"{name}.vpk"),
            frame_size=65536,
            compress="zstd:3",
            force=True,
            detect="zeros",
            allow_mounted=True,
            encrypt=keys,
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
        "state_digest": r.state_digest,
        "archive_size": r.archive_size,
        "volume_sha256": digest,
        "recipient": str(identity.recipient),
    }
    with open(os.path.join(SEALED, f"{name}.json"), "w") as f:
        json.dump(facts, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
