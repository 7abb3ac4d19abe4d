"""Reading an archive back from S3: one streaming GET for sequential reads (resumed at the same
offset after a dropped connection), ranged GETs for random access, size from HEAD.

Numbered continuation objects are joined into one byte range; objects under a prefix are listed
here too. It never parses archive bytes.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from volpack.errors import MediumError, MediumNotFound
from volpack.media.base import MediumReader
from volpack.media.s3.client import (
    S3Settings,
    call,
    client,
    error_code,
    is_transient,
    parse_url,
    translate,
)
from volpack.media.s3.layout import META_OBJECT_SIZE, META_SPLIT_ID, continuation_key

log = logging.getLogger("volpack")

_MAX_OBJECTS = 100_000  # bound on the probe loop; 100,000 × 5 TiB is far beyond any volume


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    start: int  # offset of its first byte in the archive
    size: int
    etag: str


def head_object(c: Any, s: S3Settings, bucket: str, key: str, subject: str, what: str):
    """HEAD ``key``: the response, or None when it does not exist. A missing bucket raises
    MediumNotFound naming it (S3 answers both with a bare 404 on HEAD)."""
    import botocore.exceptions as bexc

    try:
        return call(s, subject, what, lambda: c.head_object(Bucket=bucket, Key=key))
    except MediumNotFound:
        pass
    except MediumError as exc:
        cause = exc.__cause__
        if not isinstance(cause, bexc.ClientError) or error_code(cause)[1] != 404:
            raise
    try:
        call(s, subject, "check the bucket", lambda: c.head_bucket(Bucket=bucket))
    except MediumNotFound as exc:
        raise MediumNotFound(
            f"{subject}: bucket '{bucket}' does not exist; create it or check the URL"
        ) from exc
    return None


def split_objects(c: Any, s: S3Settings, bucket: str, key: str, subject: str) -> list[StoredObject]:
    """The objects holding the archive at ``key``, in order. A continuation is only looked for
    when the previous object is exactly full, and only accepted with the same split id."""
    first = head_object(c, s, bucket, key, subject, "read the archive size")
    if first is None:
        raise MediumNotFound(f"{subject}: no such archive; check the URL")
    objects = [StoredObject(key, 0, int(first["ContentLength"]), str(first.get("ETag", "")))]
    meta = {k.lower(): v for k, v in (first.get("Metadata") or {}).items()}
    split_id = meta.get(META_SPLIT_ID)
    try:
        object_size = int(meta.get(META_OBJECT_SIZE, "0"))
    except ValueError:
        object_size = 0
    while split_id and object_size > 0 and objects[-1].size == object_size:
        if len(objects) >= _MAX_OBJECTS:
            raise MediumError(f"{subject}: more than {_MAX_OBJECTS} continuation objects; refused")
        name = continuation_key(key, len(objects) + 1)
        head = head_object(c, s, bucket, name, subject, f"look for {name}")
        if head is None:
            break
        their = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if their.get(META_SPLIT_ID) != split_id:
            log.warning("%s: ignoring %s, left over from another archive", subject, name)
            break
        start = objects[-1].start + objects[-1].size
        objects.append(StoredObject(name, start, int(head["ContentLength"]), str(head["ETag"])))
    return objects


def list_objects(
    s: S3Settings, bucket: str, prefix: str, subject: str
) -> list[tuple[str, int, float]]:
    """Every object under ``prefix`` as (key, size, mtime); raises on any failure."""
    c = client(s)
    found: list[tuple[str, int, float]] = []
    token: str | None = None
    while True:
        args: dict[str, object] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            args["ContinuationToken"] = token
        page = call(s, subject, "list objects", partial(c.list_objects_v2, **args))
        for item in page.get("Contents", []):
            found.append((item["Key"], int(item["Size"]), item["LastModified"].timestamp()))
        if not page.get("IsTruncated"):
            return found
        token = page.get("NextContinuationToken")
        if not token:
            raise MediumError(f"{subject}: S3 listing was truncated without a continuation token")


class S3Reader(MediumReader):
    """An archive on S3, read sequentially (``readinto``) or at random (``read_at``, thread-safe)."""

    def __init__(self, url: str, s: S3Settings) -> None:
        self.url = url
        self._s = s
        self._bucket, self._key = parse_url(url)
        self._client = client(s)
        self._objects = split_objects(self._client, s, self._bucket, self._key, url)
        self._size = sum(o.size for o in self._objects)
        self._pos = 0
        self._body: Any = None
        self._body_end = 0  # archive offset where the open body's range ends
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def objects(self) -> list[StoredObject]:
        return list(self._objects)

    def _object_at(self, offset: int) -> StoredObject:
        for obj in self._objects:
            if obj.start <= offset < obj.start + obj.size:
                return obj
        raise MediumError(f"{self.url}: offset {offset} is beyond the archive end {self._size}")

    def _get(self, obj: StoredObject, first: int, last: int, what: str):
        """GET bytes [first, last] (inclusive, object-relative), pinned to the ETag seen at open
        so that a replaced object is noticed instead of spliced."""
        rng = f"bytes={first}-{last}"
        extra = {"IfMatch": obj.etag} if obj.etag else {}
        try:
            return call(
                self._s,
                self.url,
                what,
                lambda: self._client.get_object(
                    Bucket=self._bucket, Key=obj.key, Range=rng, **extra
                ),
            )
        except MediumError as exc:
            cause = exc.__cause__
            if cause is not None and error_code(cause)[0] == "PreconditionFailed":
                raise MediumError(
                    f"{self.url}: {obj.key} was replaced while being read; read it again"
                ) from exc
            raise

    # --- sequential ------------------------------------------------------------------------------

    def readinto(self, buf: memoryview) -> int:
        if self._closed:
            raise MediumError(f"{self.url}: read after close")
        want = len(buf)
        if want == 0 or self._pos >= self._size:
            return 0
        for attempt in range(1, self._s.attempts + 1):
            if self._body is None:
                self._open_stream()
            try:
                chunk = self._body.read(min(want, self._body_end - self._pos))
            except Exception as exc:
                self._drop_stream()
                if not is_transient(exc):
                    raise translate(exc, self.url, f"read at offset {self._pos}") from exc
                if attempt == self._s.attempts:
                    raise translate(exc, self.url, f"read at offset {self._pos}", attempt) from exc
                log.info("%s: stream broke at offset %d, resuming: %s", self.url, self._pos, exc)
                continue
            if not chunk:
                # The server closed the stream early: resume from where we are.
                self._drop_stream()
                continue
            n = len(chunk)
            buf[:n] = chunk
            self._pos += n
            if self._pos >= self._body_end:
                self._drop_stream()
            return n
        raise MediumError(
            f"{self.url}: the stream kept ending early at offset {self._pos} of {self._size}; "
            "check the S3 server"
        )

    def _open_stream(self) -> None:
        obj = self._object_at(self._pos)
        first = self._pos - obj.start
        response = self._get(obj, first, obj.size - 1, f"stream {obj.key} from offset {first}")
        self._body = response["Body"]
        self._body_end = obj.start + obj.size

    def _drop_stream(self) -> None:
        if self._body is not None:
            # Closing a broken stream may fail again; there is nothing left to save.
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    # --- random access ---------------------------------------------------------------------------

    def read_at(self, offset: int, length: int) -> bytes:
        if self._closed:
            raise MediumError(f"{self.url}: read after close")
        if offset < 0 or length < 0:
            raise MediumError(f"{self.url}: read of {length} bytes at offset {offset} is invalid")
        if offset + length > self._size:
            raise MediumError(
                f"{self.url}: read of {length} bytes at offset {offset} goes beyond the archive "
                f"end {self._size}; the archive may be truncated"
            )
        if length == 0:
            return b""
        pieces: list[bytes] = []
        pos, end = offset, offset + length
        while pos < end:
            obj = self._object_at(pos)
            first = pos - obj.start
            last = min(end, obj.start + obj.size) - obj.start - 1
            pieces.append(self._read_range(obj, first, last))
            pos = obj.start + last + 1
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_range(self, obj: StoredObject, first: int, last: int) -> bytes:
        expected = last - first + 1
        what = f"read {expected} bytes at offset {obj.start + first}"
        for attempt in range(1, self._s.attempts + 1):
            response = self._get(obj, first, last, what)
            try:
                data = response["Body"].read()
            except Exception as exc:
                if not is_transient(exc) or attempt == self._s.attempts:
                    raise translate(exc, self.url, what, attempt) from exc
                continue
            if len(data) == expected:
                return data
            log.info(
                "%s: short ranged read (%d of %d bytes), retrying", self.url, len(data), expected
            )
        raise MediumError(f"{self.url}: {what} kept returning short data; check the S3 server")

    def close(self) -> None:
        self._drop_stream()
        self._closed = True

    def __enter__(self) -> S3Reader:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
