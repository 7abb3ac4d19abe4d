"""Unfinished S3 multipart uploads under a prefix: listed and aborted for ``volpack cleanup``.

A writer killed before it could abort leaves its upload open: invisible, but holding space. S3
cannot say whether the writer still lives, so only uploads older than an age are aborted. Any
listing failure raises; an empty list means that there are none.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from volpack.errors import MediumError
from volpack.media.s3.client import call, client, error_code, parse_url, settings

_MAX_PAGES = 100_000  # bound on the listing loop (1,000 uploads a page)


@dataclass(frozen=True, slots=True)
class Upload:
    """One open multipart upload: the key it would create, its id, when it was started (epoch)."""

    bucket: str
    key: str
    upload_id: str
    initiated: float

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def list_uploads(url_prefix: str) -> list[Upload]:
    """Every open multipart upload whose key starts with the prefix of ``s3://bucket/prefix``,
    oldest first. Raises MediumError (MediumNotFound for a missing bucket) on any failure."""
    s = settings()
    bucket, prefix = parse_url(url_prefix, need_key=False)
    c = client(s)
    found: list[Upload] = []
    markers: dict[str, str] = {}
    for _ in range(_MAX_PAGES):
        page = call(
            s,
            url_prefix,
            "list multipart uploads",
            partial(c.list_multipart_uploads, Bucket=bucket, Prefix=prefix, **markers),
        )
        for item in page.get("Uploads", []):
            found.append(
                Upload(bucket, item["Key"], item["UploadId"], item["Initiated"].timestamp())
            )
        if not page.get("IsTruncated"):
            return sorted(found, key=lambda u: (u.initiated, u.key))
        key_marker = page.get("NextKeyMarker")
        if not key_marker:
            raise MediumError(
                f"{url_prefix}: S3 listing of multipart uploads was truncated without a next "
                "marker; nothing was aborted"
            )
        markers = {"KeyMarker": key_marker}
        if page.get("NextUploadIdMarker"):
            markers["UploadIdMarker"] = page["NextUploadIdMarker"]
    raise MediumError(
        f"{url_prefix}: more than {_MAX_PAGES} pages of multipart uploads; use a longer prefix"
    )


def abort_upload(upload: Upload) -> bool:
    """Abort ``upload``; False when it was already gone (completed or aborted meanwhile)."""
    s = settings()
    c = client(s)
    try:
        call(
            s,
            upload.url,
            f"abort multipart upload {upload.upload_id}",
            partial(
                c.abort_multipart_upload,
                Bucket=upload.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
            ),
        )
    except MediumError as exc:
        cause = exc.__cause__
        if cause is not None and error_code(cause)[0] == "NoSuchUpload":
            return False
        raise
    return True
