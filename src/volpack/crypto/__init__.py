"""The cryptographic layer of sealed archives: keys, key slots, subkeys, AEAD sealing, header MAC.

It works on bytes in memory and never reads or writes media; only ``files`` touches local key
files. Nothing outside this package imports it at module level, so volpack without the
``crypto`` extra still runs everything that is not encrypted. docs/encryption.md is the spec.
"""

from __future__ import annotations

from volpack.errors import UsageError

try:
    import bech32 as _bech32  # noqa: F401
    import cryptography as _cryptography  # noqa: F401
except ImportError as _exc:  # tests/crypto/test_key_cli.py hides the modules to test this
    raise UsageError(
        f"encryption needs the {_exc.name} module, which is not installed; "
        "run: pip install 'volpack[crypto]'"
    ) from _exc

from volpack.crypto.keys import (  # noqa: E402
    DataKey,
    Identity,
    KeyFile,
    Passphrase,
    Recipient,
    generate_identity,
    parse_identities,
)
from volpack.crypto.seal import (  # noqa: E402
    Cipher,
    RecordKind,
    RecordOpener,
    RecordPosition,
    Sealer,
    associated_data,
    check_header_mac,
    header_mac,
    keyed_hash,
    nonce,
)
from volpack.crypto.slots import (  # noqa: E402
    Argon2Params,
    DecryptKeys,
    EncryptKeys,
    KeyFileSlot,
    KeySlot,
    PassphraseSlot,
    UnknownSlot,
    X25519Slot,
    decode_slots,
    encode_slots,
    make_slots,
    open_slots,
)
from volpack.crypto.subkeys import Subkeys  # noqa: E402

__all__ = [
    "Argon2Params",
    "Cipher",
    "DataKey",
    "DecryptKeys",
    "EncryptKeys",
    "Identity",
    "KeyFile",
    "KeyFileSlot",
    "KeySlot",
    "Passphrase",
    "PassphraseSlot",
    "Recipient",
    "RecordKind",
    "RecordOpener",
    "RecordPosition",
    "Sealer",
    "Subkeys",
    "UnknownSlot",
    "X25519Slot",
    "associated_data",
    "check_header_mac",
    "decode_slots",
    "encode_slots",
    "generate_identity",
    "header_mac",
    "keyed_hash",
    "make_slots",
    "nonce",
    "open_slots",
    "parse_identities",
]
