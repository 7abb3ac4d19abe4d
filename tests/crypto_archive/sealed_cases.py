"""What the sealed-archive tests share: the test volume, the test keys of every kind and the
library objects made from them."""

from __future__ import annotations

import pathlib
import random
from dataclasses import dataclass

FRAME = 64 << 10  # small frames: many records to tamper with
SECRET_TEXT = b"volpack sealed secret line %06d\n"


def make_volume(path: str, seed: int = 14, size: int = (3 << 20) + 123) -> None:
    """A hole at the start, text, incompressible data (frames of equal stored size), a zero run
    inside data and a short last block."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(64 << 10)
        f.write(b"".join(SECRET_TEXT % i for i in range(4000)))
        f.seek(1 << 20)
        f.write(rng.randbytes(600 << 10) + bytes(8 << 10) + rng.randbytes(300 << 10))
        f.seek(size - 50)
        f.write(b"E" * 50)


@dataclass(frozen=True)
class KeySet:
    key_file: str
    identity_file: str
    recipient: str
    passphrase_file: str
    other_identity_file: str
    other_key_file: str

    def encrypt(self, *, recipient=True, key_file=True, passphrase=False):
        from volpack.crypto import Argon2Params, EncryptKeys, Passphrase, Recipient
        from volpack.crypto.files import read_key_file

        return EncryptKeys(
            recipients=(Recipient.parse(self.recipient),) if recipient else (),
            passphrases=(Passphrase(pathlib.Path(self.passphrase_file).read_bytes().strip()),)
            if passphrase
            else (),
            key_files=(read_key_file(self.key_file),) if key_file else (),
            argon2=Argon2Params(memory_kib=64 * 1024, iterations=3, lanes=1),
        )

    def keyring(self, *, identity=False, key_file=False, passphrase=False, other=False):
        from volpack.crypto import DecryptKeys, Passphrase
        from volpack.crypto.files import read_identities, read_key_file
        from volpack.format.keyring import Keyring

        ident = self.other_identity_file if other else self.identity_file
        kf = self.other_key_file if other else self.key_file
        return Keyring.of(
            DecryptKeys(
                identities=read_identities(ident) if identity else (),
                passphrases=(Passphrase(pathlib.Path(self.passphrase_file).read_bytes().strip()),)
                if passphrase
                else (),
                key_files=(read_key_file(kf),) if key_file else (),
            )
        )
