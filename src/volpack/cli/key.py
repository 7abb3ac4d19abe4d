"""``volpack key generate -o FILE`` and ``volpack key recipient FILE``: make an age X25519
identity and show the recipient (public key) of one. The work is in ``volpack.crypto``; the
secret key goes only into the file, never to stdout, logs or --json.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from volpack.cli.common import add_output_options, emit
from volpack.errors import EXIT_OK

log = logging.getLogger("volpack")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "key",
        help="make an identity for encrypted archives; show its recipient",
        description="Keys for encrypted archives, in age's X25519 format: an identity file "
        "(secret, AGE-SECRET-KEY-1…) and its recipient (public, age1…). age-keygen makes the "
        "same files, and age can use them.",
    )
    ksub = p.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    gen = ksub.add_parser(
        "generate",
        help="write a new identity file (mode 0600) and print its recipient",
        description="Write a new X25519 identity to FILE (mode 0600, age-keygen's format) and "
        "print its recipient on stdout. An existing FILE is replaced only with --force.",
    )
    gen.add_argument("-o", "--output", required=True, metavar="FILE", help="identity file to write")
    gen.add_argument("--force", action="store_true", help="replace an existing FILE")
    add_output_options(gen, progress=False)
    gen.set_defaults(func=run_generate)
    rec = ksub.add_parser(
        "recipient",
        help="print the recipient of each identity in a file",
        description="Print the recipient (age1…) of each identity in FILE ('-' for stdin), "
        "one per line, like age-keygen -y.",
    )
    rec.add_argument("file", metavar="FILE", help="an age identity file, or '-' for stdin")
    add_output_options(rec, progress=False)
    rec.set_defaults(func=run_recipient)


def run_generate(args: argparse.Namespace) -> int:
    from volpack.crypto import generate_identity
    from volpack.crypto.files import write_identity

    identity = generate_identity()
    write_identity(args.output, identity, force=args.force)
    recipient = str(identity.recipient)
    log.info("wrote identity %s (mode 0600); keep it secret, keep a copy", args.output)
    emit(args, {"identity_file": os.path.abspath(args.output), "recipient": recipient}, [recipient])
    return EXIT_OK


def run_recipient(args: argparse.Namespace) -> int:
    from volpack.crypto.files import read_identities

    recipients = [str(i.recipient) for i in read_identities(args.file)]
    emit(args, {"recipients": recipients}, recipients)
    return EXIT_OK
