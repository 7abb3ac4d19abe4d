"""Fixtures for sealed archives end to end: a volume with data, holes and text, test keys of every
kind (a key file, an age X25519 identity, a passphrase with the least accepted Argon2id work) and
archives sealed to them, made by the real backup pipeline."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("cryptography", reason="sealed archives need pip install 'volpack[crypto]'")
pytest.importorskip("bech32", reason="sealed archives need pip install 'volpack[crypto]'")

from sealed_cases import FRAME, KeySet, make_volume  # noqa: E402


@pytest.fixture(scope="session")
def test_keys(tmp_path_factory) -> KeySet:
    from volpack.crypto import generate_identity
    from volpack.crypto.files import write_identity

    d = tmp_path_factory.mktemp("keys")
    ident, other = generate_identity(), generate_identity()
    write_identity(str(d / "id.key"), ident)
    write_identity(str(d / "other.key"), other)
    (d / "k.bin").write_bytes(os.urandom(32))
    (d / "other.bin").write_bytes(os.urandom(32))
    (d / "pass.txt").write_bytes(b"correct horse battery staple\n")
    return KeySet(
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
    import volpack

    path = str(tmp_path_factory.mktemp("sealed") / "a.vpk")
    volpack.backup(volume, path, frame_size=FRAME, encrypt=test_keys.encrypt())
    return path
