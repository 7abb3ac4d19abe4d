"""Fixtures for the crypto tests: the real age CLI (Debian package ``age``) and cheap but
accepted Argon2id parameters, so passphrase tests take a fraction of a second."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("cryptography", reason="the crypto tests need pip install 'volpack[crypto]'")
pytest.importorskip("bech32", reason="the crypto tests need pip install 'volpack[crypto]'")


@pytest.fixture(scope="session")
def age_cli() -> tuple[str, str]:
    """Paths of ``age`` and ``age-keygen``; skips when the package is missing."""
    age, keygen = shutil.which("age"), shutil.which("age-keygen")
    if not age or not keygen:
        pytest.skip("age / age-keygen not installed: scripts/test.sh installs the Debian package")
    return age, keygen


@pytest.fixture(scope="session")
def min_argon2():
    """The least work volpack accepts on read (t=3, m=64 MiB, p=1)."""
    from volpack.crypto import Argon2Params

    return Argon2Params(memory_kib=64 * 1024, iterations=3, lanes=1)
