# ruff: noqa: F405
"""NBD protocol for the read-only export: server limits, option and request parsing, replies.

Pure functions over bytes (no sockets, no archives) so the parser can be fuzzed alone. Values come
from the NBD protocol document (fixed newstyle handshake, structured replies, base:allocation).
Nothing here trusts a length field: every one is bounded before it is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from volpack.errors import VolpackError

# The wire format lives in volpack.nbdwire (shared with the live-volume client); serve/ reads it
# as ``nbd_proto.NAME``.
from volpack.nbdwire import *  # noqa: F403

BASE_ALLOCATION_ID = 1  # any non-zero id; one context is all we offer

# Limits. Reads are capped at 32 MiB (what qemu-nbd and nbdkit advertise); option payloads carry
# at most a few strings of ≤ 4096 bytes each, so 64 KiB is generous.
MAX_PAYLOAD = 32 * 1024 * 1024
MAX_OPTION_DATA = 64 * 1024
PREFERRED_BLOCK = 4096


class ClientViolation(VolpackError):
    """The client broke the protocol in a way that ends its connection (never leaves the server)."""


class BadOption(VolpackError):
    """An option payload is malformed; answered with NBD_REP_ERR_INVALID, the session goes on."""


@dataclass(frozen=True, slots=True)
class Request:
    flags: int
    type: int
    cookie: int
    offset: int
    length: int


def parse_request(header: bytes) -> Request:
    """Decode one 28-byte request header; a wrong magic means we lost sync with the client."""
    if len(header) != REQUEST.size:
        raise ClientViolation(f"request header is {len(header)} bytes, expected {REQUEST.size}")
    magic, flags, cmd, cookie, offset, length = REQUEST.unpack(header)
    if magic != REQUEST_MAGIC:
        raise ClientViolation(f"request magic 0x{magic:08x}, expected 0x{REQUEST_MAGIC:08x}")
    return Request(flags, cmd, cookie, offset, length)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the handshake settled that changes how requests are judged and answered."""

    size: int
    structured: bool
    meta_context: bool


_WRITES = (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES)


def check_request(req: Request, state: Negotiated) -> int:
    """The NBD error for ``req`` on a read-only export of ``state.size`` bytes, or 0 if it is valid.

    Order matters: a write is EPERM whatever else is wrong with it (the export is read-only),
    unknown commands and flags are EINVAL, then bounds.
    """
    if req.type in _WRITES:
        return EPERM
    if req.type == CMD_READ:
        allowed = CMD_FLAG_DF if state.structured else 0
    elif req.type == CMD_BLOCK_STATUS:
        if not state.meta_context:
            return EINVAL
        allowed = CMD_FLAG_REQ_ONE
    elif req.type in (CMD_FLUSH, CMD_DISC):
        if req.flags or req.offset or req.length:
            return EINVAL
        return 0
    else:
        return EINVAL
    if req.flags & ~allowed:
        return EINVAL
    if req.length == 0:
        return EINVAL
    if req.offset > state.size or req.length > state.size - req.offset:
        return EINVAL
    if req.type == CMD_READ and req.length > MAX_PAYLOAD:
        return EOVERFLOW
    return 0


# -- option payloads ---------------------------------------------------------------------------
class _Cursor:
    """Reads fields off an option payload, raising BadOption instead of running past its end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BadOption(
                f"option payload of {len(self.data)} bytes ends before byte {self.pos + n}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int(U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(U32.unpack(self.take(4))[0])

    def string(self, n: int) -> str:
        if n > MAX_STRING:
            raise BadOption(f"string of {n} bytes is over the {MAX_STRING}-byte limit")
        raw = self.take(n)
        if b"\0" in raw:
            raise BadOption("string contains a NUL byte")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadOption(f"string is not UTF-8 ({exc.reason})") from None

    def done(self) -> None:
        if self.pos != len(self.data):
            raise BadOption(
                f"{len(self.data) - self.pos} unexpected bytes at the end of the option"
            )


def parse_info_request(data: bytes) -> tuple[str, tuple[int, ...]]:
    """NBD_OPT_INFO / NBD_OPT_GO payload → (export name, requested info types)."""
    cur = _Cursor(data)
    name = cur.string(cur.u32())
    count = cur.u16()
    infos = struct.unpack(f">{count}H", cur.take(count * 2))
    cur.done()
    return name, infos


def parse_meta_request(data: bytes) -> tuple[str, tuple[str, ...]]:
    """NBD_OPT_LIST/SET_META_CONTEXT payload → (export name, queries)."""
    cur = _Cursor(data)
    name = cur.string(cur.u32())
    count = cur.u32()
    # Each query costs at least its 4-byte length, which bounds the loop by the payload size.
    if count * 4 > len(data):
        raise BadOption(f"{count} queries do not fit in {len(data)} bytes")
    queries = tuple(cur.string(cur.u32()) for _ in range(count))
    cur.done()
    return name, queries


def match_contexts(queries: tuple[str, ...], *, listing: bool) -> list[str]:
    """The contexts a query list selects. We only know ``base:allocation``.

    An empty list means "all" when listing and "none" when setting; ``base:`` alone is the
    namespace query that lists every context in it.
    """
    if not queries:
        return [BASE_ALLOCATION] if listing else []
    for q in queries:
        if q == BASE_ALLOCATION or (listing and q == "base:"):
            return [BASE_ALLOCATION]
    return []


# -- replies -----------------------------------------------------------------------------------
def option_reply(option: int, reply: int, payload: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, reply, len(payload)) + payload


def info_export(size: int, tflags: int) -> bytes:
    return U16.pack(INFO_EXPORT) + U64.pack(size) + U16.pack(tflags)


def info_block_size() -> bytes:
    return U16.pack(INFO_BLOCK_SIZE) + struct.pack(">III", 1, PREFERRED_BLOCK, MAX_PAYLOAD)


def simple_reply(error: int, cookie: int) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk(flags: int, rtype: int, cookie: int, length: int) -> bytes:
    """A structured reply chunk header; ``length`` is the payload that follows it."""
    return CHUNK.pack(STRUCTURED_REPLY_MAGIC, flags, rtype, cookie, length)


def error_chunk(cookie: int, error: int, message: str, offset: int | None = None) -> bytes:
    text = message.encode("utf-8")[:MAX_STRING]
    if offset is None:
        body = U32.pack(error) + U16.pack(len(text)) + text
        return chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, len(body)) + body
    body = U32.pack(error) + U16.pack(len(text)) + text + U64.pack(offset)
    return chunk(REPLY_FLAG_DONE, REPLY_TYPE_ERROR_OFFSET, cookie, len(body)) + body


def hole_chunk(flags: int, cookie: int, offset: int, length: int) -> bytes:
    return chunk(flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12) + struct.pack(">QI", offset, length)
