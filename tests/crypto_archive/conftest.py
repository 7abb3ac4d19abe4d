"""Fixtures for sealed archives end to end: a volume with data, holes and text, test keys of every
kind (a key file, an age X25519 identity, a passphrase with the least accepted Argon2id work) and
archives sealed to them, made by the real backup pipeline."""

from __future__ import annotations

import os
import pathlib
import random
from dataclasses import dataclass

import pytest

pytest.importorskip("cryptography", reason="sealed archives need pip install 'volpack[crypto]'")
pytest.importorskip("bech32", reason="sealed archives need pip install 'volpack[crypto]'")

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
class TestKeys:
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


@pytest.fixture(scope="session")
def test_keys(tmp_path_factory) -> TestKeys:
    from volpack.crypto import generate_identity
    from volpack.crypto.files import write_identity

    d = tmp_path_factory.mktemp("keys")
    ident, other = generate_identity(), generate_identity()
    write_identity(str(d / "id.key"), ident)
    write_identity(str(d / "other.key"), other)
    (d / "k.bin").write_bytes(os.urandom(32))
    (d / "other.bin").write_bytes(os.urandom(32))
    (d / "pass.txt").write_bytes(b"correct horse battery staple\n")
    return TestKeys(
        str(d / "k.bin"),
        str(d / "id.key"),
        str(ident.recipient),
        str(d / "pass.txt"),
        str(d / "other.key"),
        str(d / "other.bin"),
    )


@pytest.fixture(scope="session")
def volume(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("vol") / "vol.img")
    make_volume(path)
    return path


@pytest.fixture(scope="session")
def sealed(tmp_path_factory, volume, test_keys) -> str:
    """One archive of ``volume`` sealed to the recipient and the key file (read-only: copy it)."""
    from volpack import pipeline

    path = str(tmp_path_factory.mktemp("sealed") / "a.vpk")
    pipeline.backup(volume, path, frame_size=FRAME, encrypt=test_keys.encrypt())
    return path
