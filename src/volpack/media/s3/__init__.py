"""The ``s3://bucket/key`` medium: archives as S3 objects (see docs/media.md, "S3").

The entry points the medium registry calls (``open_writer``, ``open_reader``, ``list_archives``,
``delete``); the writer streams by multipart upload (writer.py), the reader joins continuation
objects (reader.py), names and metadata live in layout.py, boto3 and its errors in client.py.
It moves opaque bytes only and never parses the archive.
"""

from __future__ import annotations

from functools import partial

from volpack.errors import MediumNotFound
from volpack.media.s3.client import call, configure, parse_url, reset_configuration, settings

# Bound under another name: ``client`` must stay the submodule ``volpack.media.s3.client``.
from volpack.media.s3.client import client as boto_client
from volpack.media.s3.layout import continuation_index, continued_base
from volpack.media.s3.reader import S3Reader, head_object, list_objects
from volpack.media.s3.writer import S3Writer

__all__ = [
    "S3Reader",
    "S3Writer",
    "canonical",
    "configure",
    "delete",
    "list_archives",
    "open_reader",
    "open_writer",
    "reset_configuration",
]


def canonical(url: str) -> str:
    """``s3://bucket/key`` with the scheme in lower case; keys are case-sensitive and taken
    literally (S3 has no percent-decoding of key names), so nothing else changes."""
    bucket, key = parse_url(url, need_key=False)
    return f"s3://{bucket}/{key}"


def open_writer(url: str, *, force: bool = False) -> S3Writer:
    return S3Writer(url, force=force, s=settings())


def open_reader(url: str) -> S3Reader:
    return S3Reader(url, settings())


def list_archives(url_prefix: str) -> list[tuple[str, int, float]]:
    """Archives under ``s3://bucket/prefix`` as (url, size, mtime), sorted by URL. Continuation
    objects are folded into their archive's size. Any failure raises: an empty list means empty."""
    s = settings()
    bucket, prefix = parse_url(url_prefix, need_key=False)
    entries = list_objects(s, bucket, prefix, url_prefix)
    if not entries:
        # A missing bucket must not look like an empty one.
        c = boto_client(s)
        call(s, url_prefix, "check the bucket", lambda: c.head_bucket(Bucket=bucket))
    names = {key for key, _, _ in entries}
    totals: dict[str, list] = {}
    for key, size, mtime in entries:
        if continued_base(key) in names:
            continue
        totals[key] = [size, mtime]
    for key, size, _ in entries:
        base = continued_base(key)
        if base is not None and base in totals:
            totals[base][0] += size
    return sorted((f"s3://{bucket}/{key}", v[0], v[1]) for key, v in totals.items())


def delete(url: str) -> None:
    """Remove an archive and its continuation objects; MediumNotFound when there is none."""
    s = settings()
    bucket, key = parse_url(url)
    c = boto_client(s)
    if head_object(c, s, bucket, key, url, "find the archive to delete") is None:
        raise MediumNotFound(f"{url}: no such archive to delete; check the URL")
    continuations = [
        k
        for k, _, _ in list_objects(s, bucket, key + ".part", url)
        if continuation_index(k, key) > 1
    ]
    # The named key first: without it the rest is unreachable, never a truncated archive.
    for name in [key, *continuations]:
        call(s, url, f"delete {name}", partial(c.delete_object, Bucket=bucket, Key=name))
