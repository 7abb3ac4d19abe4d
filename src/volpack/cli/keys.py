"""Key options for the verbs that seal or open archives: ``--recipient``, ``--identity``,
``--passphrase``/``--passphrase-file`` (or VOLPACK_PASSPHRASE, or a prompt on a terminal) and
``--key-file``, turned into the typed key objects of ``volpack.crypto``.

Secrets are never taken from argv (other users can read it), never logged and never printed.
volpack.crypto is imported only when a key option is used.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TYPE_CHECKING

from volpack.errors import UsageError

if TYPE_CHECKING:
    from volpack.crypto import Cipher, DecryptKeys, EncryptKeys, Passphrase, Recipient
    from volpack.format.keyring import Keyring

PASSPHRASE_ENV = "VOLPACK_PASSPHRASE"


def _recipient(text: str) -> Recipient:
    from volpack.crypto import Recipient

    return Recipient.parse(text)


def _cipher(text: str) -> Cipher:
    from volpack.crypto import Cipher

    return Cipher.parse(text)


def add_seal_options(parser: argparse.ArgumentParser) -> None:
    """Options that choose whom a new archive is sealed to; several make several key slots."""
    group = parser.add_argument_group("encryption (any of these seals the archive)")
    group.add_argument(
        "--recipient",
        action="append",
        default=[],
        type=_recipient,
        metavar="AGE1…",
        help="an age X25519 recipient; this host then needs no secret key (repeatable)",
    )
    _passphrase_options(group, "seal with a passphrase")
    group.add_argument(
        "--key-file",
        action="append",
        default=[],
        metavar="FILE",
        help="seal with a key file of exactly 32 bytes (repeatable)",
    )
    group.add_argument(
        "--cipher",
        type=_cipher,
        default=None,
        metavar="NAME",
        help="aes-256-gcm (default) or chacha20-poly1305 (for hosts without AES instructions)",
    )


def add_open_options(parser: argparse.ArgumentParser) -> None:
    """Options that give keys to open an encrypted archive; any one slot that opens suffices."""
    group = parser.add_argument_group("keys for encrypted archives")
    group.add_argument(
        "-i",
        "--identity",
        action="append",
        default=[],
        metavar="FILE",
        help="an age identity file (volpack key generate, age-keygen); '-' for stdin (repeatable)",
    )
    _passphrase_options(group, "open with a passphrase")
    group.add_argument(
        "--key-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a key file of exactly 32 bytes (repeatable)",
    )


def _passphrase_options(group: argparse._ArgumentGroup, what: str) -> None:
    group.add_argument(
        "--passphrase",
        action="store_true",
        help=f"{what}: from {PASSPHRASE_ENV}, else asked on the terminal",
    )
    group.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"{what} read from the first line of FILE",
    )


def passphrase_from_env_or_terminal(*, confirm: bool) -> Passphrase | None:
    """VOLPACK_PASSPHRASE (then removed from the environment, so no child process inherits it),
    else a prompt when standard input is a terminal (twice with ``confirm``), else None."""
    from volpack.crypto import Passphrase

    value = os.environ.pop(PASSPHRASE_ENV, None)
    if value:
        return Passphrase(value.encode())
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass("volpack: passphrase: ")
    if not first:
        raise UsageError("the passphrase is empty; type a non-empty passphrase")
    if confirm and getpass.getpass("volpack: passphrase again: ") != first:
        raise UsageError("the two passphrases differ; run again and type the same one twice")
    return Passphrase(first.encode())


def _passphrases(args: argparse.Namespace, *, confirm: bool) -> tuple[Passphrase, ...]:
    from volpack.crypto.files import read_passphrase_file

    found = []
    if args.passphrase_file:
        found.append(read_passphrase_file(args.passphrase_file))
    if args.passphrase:
        got = passphrase_from_env_or_terminal(confirm=confirm)
        if got is None:
            raise UsageError(
                f"--passphrase: {PASSPHRASE_ENV} is not set and standard input is not a "
                "terminal to ask on; set it or use --passphrase-file"
            )
        found.append(got)
    return tuple(found)


def seal_keys(args: argparse.Namespace) -> EncryptKeys | None:
    """The keys to seal a new archive to, or None when no encryption option was given (then
    nothing of volpack.crypto is imported: a plain backup does not pay for OpenSSL's start)."""
    wanted = args.recipient or args.passphrase or args.passphrase_file or args.key_file
    if not wanted:
        if args.cipher is not None:
            raise UsageError(
                f"--cipher {args.cipher.label}: nothing to seal to; add --recipient, "
                "--passphrase, --passphrase-file or --key-file"
            )
        return None
    from volpack.crypto import Cipher, EncryptKeys
    from volpack.crypto.files import read_key_file

    return EncryptKeys(
        recipients=tuple(args.recipient),
        passphrases=_passphrases(args, confirm=True),
        key_files=tuple(read_key_file(p) for p in args.key_file),
        cipher=args.cipher or Cipher.AES_256_GCM,
    )


def open_keys(args: argparse.Namespace) -> DecryptKeys:
    """The keys given to open an archive. With none given, VOLPACK_PASSPHRASE or a prompt on a
    terminal is the fallback; UsageError when there is nothing at all."""
    from volpack.crypto import DecryptKeys
    from volpack.crypto.files import read_identities, read_key_file

    if args.identity.count("-") > 1:
        raise UsageError("--identity -: standard input can be given once")
    identities = tuple(i for path in args.identity for i in read_identities(path))
    keys = DecryptKeys(
        identities=identities,
        passphrases=_passphrases(args, confirm=False),
        key_files=tuple(read_key_file(p) for p in args.key_file),
    )
    if keys.count:
        return keys
    fallback = passphrase_from_env_or_terminal(confirm=False)
    if fallback is None:
        raise UsageError(
            "the archive is encrypted and no key was given; add --identity FILE, "
            f"--passphrase-file FILE, --key-file FILE or set {PASSPHRASE_ENV}"
        )
    return DecryptKeys(passphrases=(fallback,))


def keyring_from(args: argparse.Namespace) -> Keyring:
    """The keys of ``add_open_options``, read (or asked for) only when an archive is encrypted."""
    from volpack.format.keyring import Keyring

    given = args.identity or args.passphrase or args.passphrase_file or args.key_file
    return Keyring(lambda: open_keys(args), expect_sealed=bool(given))


def optional_keyring(args: argparse.Namespace) -> Keyring | None:
    """Like ``keyring_from`` when a key was given (an option or VOLPACK_PASSPHRASE), else None:
    the verb then reads an encrypted archive's public parts only (verify, info)."""
    given = args.identity or args.passphrase or args.passphrase_file or args.key_file
    if not given and not os.environ.get(PASSPHRASE_ENV):
        return None
    return keyring_from(args)


def base_keyring(args: argparse.Namespace, seal: EncryptKeys | None) -> Keyring | None:
    """What opens an encrypted ``--base``: the --identity files and the passphrases and key files
    the new archive is sealed with (an incremental's base opens with the same key)."""
    if seal is None:
        return None
    from volpack.crypto import DecryptKeys
    from volpack.crypto.files import read_identities
    from volpack.format.keyring import Keyring

    def provide() -> DecryptKeys:
        identities = tuple(i for path in args.identity for i in read_identities(path))
        return DecryptKeys(identities, seal.passphrases, seal.key_files)

    return Keyring(provide)


def merge_seal_keys(args: argparse.Namespace) -> EncryptKeys | None:
    """A merge's output keys: ``--recipient`` and the passphrases and key files that open the
    chain; None when none of them is given."""
    if not (args.recipient or args.passphrase or args.passphrase_file or args.key_file):
        return None
    from volpack.crypto import EncryptKeys
    from volpack.crypto.files import read_key_file

    return EncryptKeys(
        recipients=tuple(_recipient(r) for r in args.recipient),
        passphrases=_passphrases(args, confirm=False),
        key_files=tuple(read_key_file(p) for p in args.key_file),
    )
