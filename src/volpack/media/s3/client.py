"""S3 plumbing for the s3 medium: settings, URL parsing, boto3 clients, retries and error mapping.

Everything that talks to botocore's exception types lives here so that the writer and reader
deal only in volpack errors. It moves no archive bytes itself and never parses them.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from volpack.errors import MediumError, MediumNotFound, MediumTransient, UsageError

T = TypeVar("T")

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

# Limits of the S3 protocol (AWS documentation, "Amazon S3 multipart upload limits").
S3_MAX_PARTS = 10_000
S3_MAX_PART_SIZE = 5 * GiB
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_OBJECT_SIZE = 5 * TiB

ADDRESSING = ("auto", "path", "virtual")


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How the s3 medium reaches its server and shapes its uploads.

    ``part_size`` is the first part's size; it doubles every ``parts_per_step`` parts so that an
    object of ``object_size`` bytes always fits in 10,000 parts. ``memory`` bounds the bytes of
    parts in flight (at least one part is always in flight).

    ``sign_payload`` makes botocore hash every uploaded byte with SHA-256 for the request
    signature (and the server hash it again to check). Off by default: on a 2-core machine that
    cost a quarter of the upload rate, and the archive carries its own end-to-end checks (frame
    checksums and the whole-archive digest, checked on every read). Over HTTPS, TLS protects the
    bytes in transit either way.
    """

    endpoint: str | None = None
    profile: str | None = None
    addressing: str = "auto"
    region: str | None = None
    part_size: int = 8 * MiB
    parts_per_step: int = 1000
    object_size: int = 0  # 0: the most that 10,000 parts hold, at most 5 TiB
    concurrency: int = 4
    memory: int = 128 * MiB
    attempts: int = 6
    backoff: float = 0.25
    backoff_max: float = 20.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    sign_payload: bool = False


_lock = threading.Lock()
_overrides: dict[str, Any] = {}
_clients: dict[tuple, Any] = {}

_ENV = {
    "endpoint": "VOLPACK_S3_ENDPOINT",
    "profile": "VOLPACK_S3_PROFILE",
    "addressing": "VOLPACK_S3_ADDRESSING",
    "part_size": "VOLPACK_S3_PART_SIZE",
    "object_size": "VOLPACK_S3_OBJECT_SIZE",
    "attempts": "VOLPACK_S3_ATTEMPTS",
    "sign_payload": "VOLPACK_S3_SIGN_PAYLOAD",
}
_INT_FIELDS = {"part_size", "object_size", "attempts", "parts_per_step", "concurrency", "memory"}


def configure(
    endpoint: str | None = None,
    profile: str | None = None,
    addressing: str | None = None,
    *,
    part_size: int | None = None,
    object_size: int | None = None,
    concurrency: int | None = None,
    memory: int | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
    sign_payload: bool | None = None,
) -> None:
    """Process-wide overrides (the CLI's ``--s3-endpoint``/``--s3-profile``); ``None`` keeps the
    current value. They win over the ``VOLPACK_S3_*`` environment, which wins over AWS config."""
    given: dict[str, Any] = {
        "endpoint": endpoint,
        "profile": profile,
        "addressing": addressing,
        "part_size": part_size,
        "object_size": object_size,
        "concurrency": concurrency,
        "memory": memory,
        "attempts": attempts,
        "backoff": backoff,
        "sign_payload": sign_payload,
    }
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    _validate(_resolved(replace(S3Settings(), **changes)), "configure()")
    with _lock:
        _overrides.update(changes)


def reset_configuration() -> None:
    """Forget every ``configure()`` override (tests use it between servers)."""
    with _lock:
        _overrides.clear()


def settings() -> S3Settings:
    """The settings in force now: defaults, then environment, then ``configure()``."""
    from volpack.units import parse_size

    values: dict[str, Any] = {}
    for field, var in _ENV.items():
        text = os.environ.get(var, "").strip()
        if not text:
            continue
        if field in ("part_size", "object_size"):
            values[field] = parse_size(text, var)
        elif field in _INT_FIELDS:
            if not text.isdigit():
                raise UsageError(f"{var}='{text}': not a whole number; unset it or fix it")
            values[field] = int(text)
        elif field == "sign_payload":
            if text.lower() not in ("0", "1", "true", "false", "yes", "no"):
                raise UsageError(f"{var}='{text}': use 1 or 0; unset it or fix it")
            values[field] = text.lower() in ("1", "true", "yes")
        else:
            values[field] = text
    with _lock:
        values.update(_overrides)
    result = _resolved(replace(S3Settings(), **values))
    _validate(result, "VOLPACK_S3_* environment")
    return result


def _resolved(s: S3Settings) -> S3Settings:
    if s.object_size:
        return s
    capacity = part_capacity(s.part_size, s.parts_per_step)
    return replace(s, object_size=min(S3_MAX_OBJECT_SIZE, capacity))


def _validate(s: S3Settings, where: str) -> None:
    if s.addressing not in ADDRESSING:
        raise UsageError(
            f"{where}: S3 addressing '{s.addressing}' unknown; use one of {', '.join(ADDRESSING)}"
        )
    if not S3_MIN_PART_SIZE <= s.part_size <= S3_MAX_PART_SIZE:
        raise UsageError(
            f"{where}: S3 part size {s.part_size} outside the S3 limits 5 MiB..5 GiB; "
            "choose a size between"
        )
    if not s.part_size <= s.object_size <= S3_MAX_OBJECT_SIZE:
        raise UsageError(
            f"{where}: S3 object size {s.object_size} outside part size..5 TiB; use a value between"
        )
    if part_capacity(s.part_size, s.parts_per_step) < s.object_size:
        raise UsageError(
            f"{where}: S3 part size {s.part_size} too small for objects of {s.object_size} bytes "
            f"in {S3_MAX_PARTS} parts; raise the part size or lower the object size"
        )
    if s.concurrency < 1 or s.attempts < 1 or s.memory < 0 or s.backoff < 0:
        raise UsageError(f"{where}: S3 concurrency and attempts must be >= 1; memory, backoff >= 0")
    if s.endpoint is not None and not re.match(r"^https?://[^/\s]+/?$", s.endpoint):
        raise UsageError(f"{where}: S3 endpoint '{s.endpoint}' is not a URL like http://host:port")


def part_size_for(number: int, first: int, per_step: int) -> int:
    """Size of part ``number`` (1-based): ``first`` doubled every ``per_step`` parts, capped at
    the 5 GiB S3 maximum. Deterministic, so a resumed or re-read upload agrees on it."""
    step = (number - 1) // per_step
    return min(first << min(step, 40), S3_MAX_PART_SIZE)


def part_capacity(first: int, per_step: int) -> int:
    """Bytes that 10,000 parts of the growing schedule hold."""
    total = 0
    number = 1
    while number <= S3_MAX_PARTS:
        run = min(per_step, S3_MAX_PARTS - number + 1)
        total += run * part_size_for(number, first, per_step)
        number += run
    return total


# --- URLs ----------------------------------------------------------------------------------------

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


def parse_url(url: str, *, need_key: bool = True) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key). The key may be empty only when ``need_key`` is false."""
    if not url.lower().startswith("s3://"):
        raise UsageError(f"{url}: not an S3 URL; write s3://bucket/key")
    bucket, _, key = url[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise UsageError(
            f"{url}: bucket name '{bucket}' is not valid (3-63 lowercase letters, digits, '.', '-')"
        )
    if need_key and (not key or key.endswith("/")):
        raise UsageError(f"{url}: no object key; write s3://{bucket}/name.vpk")
    return bucket, key


# --- clients -------------------------------------------------------------------------------------


def _boto():
    try:
        import boto3
        import botocore.config
    except ImportError as exc:
        raise UsageError(
            "s3:// media need boto3, which is not installed; run: pip install 'volpack[s3]'"
        ) from exc
    return boto3, botocore.config


_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def client(s: S3Settings):
    """A cached, thread-safe boto3 S3 client for these settings. botocore's own retries are off:
    ``call`` retries, so that only transient errors are retried and the backoff is ours."""
    # Credentials are resolved when the client is made, so the AWS environment is part of the key.
    aws_env = tuple(os.environ.get(name) for name in _AWS_ENV)
    key = (s.endpoint, s.profile, s.addressing, s.region, s.concurrency, s.sign_payload, aws_env)
    with _lock:
        found = _clients.get(key)
    if found is not None:
        return found
    boto3, bconfig = _boto()
    import botocore.exceptions as bexc

    # botocore announces where it found credentials at INFO; volpack's log is for volpack.
    quiet = logging.getLogger("botocore.credentials")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)

    try:
        session = boto3.session.Session(profile_name=s.profile)
    except bexc.ProfileNotFound as exc:
        raise UsageError(
            f"S3 profile '{s.profile}' not found in the AWS config files; {exc}"
        ) from exc
    config = bconfig.Config(
        s3={"addressing_style": s.addressing, "payload_signing_enabled": s.sign_payload},
        retries={"total_max_attempts": 1},
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        max_pool_connections=max(10, s.concurrency * 2),
        # Third-party servers do not all speak the newer flexible checksums.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    region = s.region or session.region_name or "us-east-1"
    made = session.client("s3", endpoint_url=s.endpoint, region_name=region, config=config)
    with _lock:
        _clients.setdefault(key, made)
        return _clients[key]


# --- errors and retries --------------------------------------------------------------------------

_THROTTLE = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "PriorRequestNotComplete",
}
_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "403",
}
_CREDENTIALS_REMEDY = (
    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or --s3-profile"
)


def error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx and connection-level failures; never a 4xx answer."""
    import botocore.exceptions as bexc

    if isinstance(exc, bexc.ClientError):
        code, status = error_code(exc)
        return status >= 500 or status == 429 or code in _THROTTLE
    transient_types: tuple[type[BaseException], ...] = (
        bexc.EndpointConnectionError,
        bexc.ConnectionClosedError,
        bexc.ReadTimeoutError,
        bexc.ConnectTimeoutError,
        bexc.ResponseStreamingError,
        bexc.IncompleteReadError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient_types):
        return True
    try:
        import urllib3.exceptions as u3

        return isinstance(exc, u3.HTTPError)
    except ImportError:  # pragma: no cover - urllib3 comes with botocore
        return False


def translate(exc: BaseException, subject: str, what: str, attempts: int = 1) -> Exception:
    """A volpack error for a botocore failure of ``what`` (e.g. 'upload part 3') on ``subject``."""
    import botocore.exceptions as bexc

    if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return MediumError(f"{subject}: no usable S3 credentials for {what}; {_CREDENTIALS_REMEDY}")
    if isinstance(exc, bexc.ClientError):
        code, status = error_code(exc)
        if code == "NoSuchBucket":
            return MediumNotFound(f"{subject}: bucket does not exist ({what}); create it first")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return MediumNotFound(f"{subject}: no such object ({what}); check the URL")
        if code in _CREDENTIALS or status == 403:
            return MediumError(
                f"{subject}: S3 refused the credentials for {what} ({code or status}); "
                f"{_CREDENTIALS_REMEDY}"
            )
        if code == "NoSuchUpload":
            return MediumError(f"{subject}: the multipart upload vanished during {what}; retry")
        if is_transient(exc):
            return MediumTransient(
                f"{subject}: {what} failed after {attempts} attempts ({code or status}); "
                "retry later or check the S3 server"
            )
        return MediumError(f"{subject}: {what} refused by the server ({code or status}: {exc})")
    if is_transient(exc):
        return MediumTransient(
            f"{subject}: {what} failed after {attempts} attempts ({type(exc).__name__}: {exc}); "
            "check the network and the S3 endpoint, then retry"
        )
    return MediumError(f"{subject}: {what} failed ({type(exc).__name__}: {exc})")


def call(s: S3Settings, subject: str, what: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` with exponential backoff (full jitter) on transient failures only; anything
    else, or the last transient failure, becomes a volpack error."""
    import botocore.exceptions as bexc

    for attempt in range(1, s.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            known = isinstance(exc, bexc.BotoCoreError | bexc.ClientError | OSError)
            if not (known or is_transient(exc)):
                raise
            if attempt >= s.attempts or not is_transient(exc):
                raise translate(exc, subject, what, attempt) from exc
            delay = min(s.backoff_max, s.backoff * (2 ** (attempt - 1)))
            time.sleep(random.uniform(delay / 2, delay))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
