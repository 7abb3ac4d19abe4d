"""Subkeys of an archive: HKDF-SHA256 from the data key, salted with the archive UUID, one fixed
label per use, so a key for frames can never serve as a key for tables or the header MAC.

Pure derivation; knows nothing of where the bytes go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from volpack.crypto.keys import DataKey

SUBKEY_SIZE = 32
UUID_SIZE = 16
# The HKDF "info" of each subkey (docs/encryption.md, "Subkeys"). Never change one: every
# archive sealed with it would stop opening.
LABEL_FRAMES = b"volpack/v1/frames"
LABEL_TABLES = b"volpack/v1/tables"
LABEL_HEADER_MAC = b"volpack/v1/header-mac"
LABEL_HASH_TABLE = b"volpack/v1/hash-table"


def derive(data_key: DataKey, archive_uuid: bytes, label: bytes) -> bytes:
    """HKDF-SHA256(ikm = data key, salt = archive UUID, info = label), 32 bytes."""
    if len(archive_uuid) != UUID_SIZE:
        raise ValueError(f"an archive UUID is {UUID_SIZE} bytes, not {len(archive_uuid)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SUBKEY_SIZE, salt=archive_uuid, info=label)
    return hkdf.derive(data_key.secret)


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
