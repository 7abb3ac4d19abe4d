"""Subkeys of an archive: HKDF-SHA256 from the data key, salted with the archive UUID, one fixed
label per use, so a key for frames can never serve as a key for tables or the header MAC.

Pure derivation; knows nothing of where the bytes go.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from volpack.crypto.keys import DataKey

SUBKEY_SIZE = 32
UUID_SIZE = 16
# The HKDF "info" of each subkey (docs/encryption.md, "Subkeys"). Never change one: every
# archive sealed with it would stop opening.
LABEL_FRAMES = b"volpack/v1/frames"
LABEL_TABLES = b"volpack/v1/tables"
LABEL_HEADER_MAC = b"volpack/v1/header-mac"
LABEL_HASH_TABLE = b"volpack/v1/hash-table"


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand with ``info`` to ``length`` bytes.
    Built on the standard library's HMAC (OpenSSL's, in C); checked against RFC 5869's test
    vectors and against `cryptography`'s HKDF in the tests."""
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 gives 1 to {255 * 32} bytes, not {length}")
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    out, block = b"", b""
    for counter in range(1, (length + 31) // 32 + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
    return out[:length]


def derive(data_key: DataKey, archive_uuid: bytes, label: bytes) -> bytes:
    """HKDF-SHA256(ikm = data key, salt = archive UUID, info = label), 32 bytes."""
    if len(archive_uuid) != UUID_SIZE:
        raise ValueError(f"an archive UUID is {UUID_SIZE} bytes, not {len(archive_uuid)}")
    return hkdf_sha256(data_key.secret, archive_uuid, label, SUBKEY_SIZE)


@dataclass(frozen=True, slots=True)
class Subkeys:
    """The four keys one archive uses, each 32 bytes."""

    archive_uuid: bytes
    frames: bytes = field(repr=False)
    tables: bytes = field(repr=False)
    header_mac: bytes = field(repr=False)
    hash_table: bytes = field(repr=False)

    @classmethod
    def derive(cls, data_key: DataKey, archive_uuid: bytes) -> Subkeys:
        return cls(
            archive_uuid=archive_uuid,
            frames=derive(data_key, archive_uuid, LABEL_FRAMES),
            tables=derive(data_key, archive_uuid, LABEL_TABLES),
            header_mac=derive(data_key, archive_uuid, LABEL_HEADER_MAC),
            hash_table=derive(data_key, archive_uuid, LABEL_HASH_TABLE),
        )
