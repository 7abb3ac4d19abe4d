"""One NBD client connection: fixed newstyle handshake, then the transmission loop.

Reads are answered from the export's volume; every request is checked first and a bad one gets
its NBD error while the connection (and the server) carry on. Only a lost framing (bad magic, a
payload we cannot skip, a broken handshake) ends the connection. Never writes to a volume.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence

import numpy as np

from volpack.errors import VolpackError
from volpack.serve import nbd_proto as p
from volpack.serve.export import Export, read_views

log = logging.getLogger("volpack")

# Holes shorter than this inside a read are sent as zeros within the data chunk: a separate hole
# chunk costs a header and the client a reassembly step, not worth it for small gaps.
HOLE_CHUNK_MIN = 64 * 1024
MAX_STATUS_DESCRIPTORS = 1 << 16
# Oversized option payloads up to this size are skipped and refused; beyond it we hang up.
_OPTION_DRAIN_LIMIT = 1 << 20
_IOV_MAX = 1024


class Closed(ConnectionError):
    """The client went away (EOF) or the handshake deadline passed."""


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        exports: dict[str, Export],
        default: Export | None,
        handshake_timeout: float,
        stopping: Callable[[], bool],
    ) -> None:
        self.sock = sock
        self.exports = exports
        self.default = default
        self.handshake_timeout = handshake_timeout
        self.stopping = stopping
        self.deadline: float | None = None
        self.in_transmission = False
        self.structured = False
        self.meta_for: Export | None = None  # export the base:allocation context was set for
        self.export: Export | None = None
        self.state: p.Negotiated | None = None
        self._hdr = bytearray(p.REQUEST.size)

    # -- socket helpers ------------------------------------------------------------------------
    def recv_exact(self, n: int, into: bytearray | None = None) -> bytearray:
        buf = into if into is not None else bytearray(n)
        view = memoryview(buf)[:n]
        got = 0
        while got < n:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise Closed("handshake took too long")
                self.sock.settimeout(left)
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                raise Closed("handshake took too long") from None
            if k == 0:
                raise Closed("client closed the connection")
            got += k
        return buf

    def drain(self, n: int) -> None:
        scratch = bytearray(min(n, 1 << 20))
        while n:
            k = min(n, len(scratch))
            self.recv_exact(k, scratch)
            n -= k

    def sendv(self, bufs: Sequence[bytes | bytearray | memoryview]) -> None:
        views = [memoryview(b).cast("B") for b in bufs if len(b)]
        i = 0
        while i < len(views):
            sent = self.sock.sendmsg(views[i : i + _IOV_MAX])
            while sent:
                if sent >= len(views[i]):
                    sent -= len(views[i])
                    i += 1
                else:
                    views[i] = views[i][sent:]
                    sent = 0

    # -- entry ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.deadline = time.monotonic() + self.handshake_timeout
        if not self.handshake():
            return
        self.deadline = None
        self.sock.settimeout(None)
        self.in_transmission = True
        self.transmission()

    # -- handshake -----------------------------------------------------------------------------
    def handshake(self) -> bool:
        """Option haggling; True when the client entered transmission with an export."""
        flags = p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
        self.sendv([p.U64.pack(p.NBDMAGIC) + p.U64.pack(p.IHAVEOPT) + p.U16.pack(flags)])
        client_flags = p.U32.unpack(self.recv_exact(4))[0]
        if client_flags & ~p.CLIENT_FLAGS_KNOWN:
            raise p.ClientViolation(f"unknown client flags 0x{client_flags:08x}")
        no_zeroes = bool(client_flags & p.CLIENT_FLAG_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION_HEADER.unpack(self.recv_exact(p.OPTION_HEADER.size))
            if magic != p.IHAVEOPT:
                raise p.ClientViolation(f"option magic 0x{magic:016x}, expected IHAVEOPT")
            if length > p.MAX_OPTION_DATA:
                if option == p.OPT_EXPORT_NAME or length > _OPTION_DRAIN_LIMIT:
                    raise p.ClientViolation(f"option {option} carries {length} bytes")
                self.drain(length)
                self.reply(option, p.REP_ERR_TOO_BIG, f"option data over {p.MAX_OPTION_DATA} bytes")
                continue
            data = bytes(self.recv_exact(length))
            if self.stopping() and option != p.OPT_ABORT:
                self.reply(option, p.REP_ERR_SHUTDOWN, "server is shutting down")
                continue
            if option == p.OPT_EXPORT_NAME:
                return self.opt_export_name(data, no_zeroes)
            if option == p.OPT_ABORT:
                self.reply(option, p.REP_ACK)
                return False
            try:
                if self.option(option, data):
                    return True
            except p.BadOption as exc:
                self.reply(option, p.REP_ERR_INVALID, str(exc))

    def reply(self, option: int, rtype: int, payload: bytes | str = b"") -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self.sendv([p.option_reply(option, rtype, data)])

    def find(self, name: str) -> Export | None:
        return self.default if name == "" else self.exports.get(name)

    def tflags(self) -> int:
        flags = p.TFLAG_HAS_FLAGS | p.TFLAG_READ_ONLY | p.TFLAG_SEND_FLUSH | p.TFLAG_CAN_MULTI_CONN
        return flags | (p.TFLAG_SEND_DF if self.structured else 0)

    def opt_export_name(self, data: bytes, no_zeroes: bool) -> bool:
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            raise p.ClientViolation("export name is not UTF-8") from None
        export = self.find(name)
        if export is None:
            # NBD_OPT_EXPORT_NAME has no error reply: the protocol says hang up.
            raise p.ClientViolation(f"no export named {name!r}")
        tail = b"" if no_zeroes else bytes(124)
        self.sendv([p.U64.pack(export.size) + p.U16.pack(self.tflags()) + tail])
        self.enter(export)
        return True

    def option(self, option: int, data: bytes) -> bool:
        if option in (p.OPT_INFO, p.OPT_GO):
            return self.opt_info(option, data)
        if option == p.OPT_LIST:
            if data:
                raise p.BadOption("NBD_OPT_LIST takes no data")
            for export in self.exports.values():
                name = export.name.encode("utf-8")
                body = p.U32.pack(len(name)) + name + export.description.encode("utf-8")
                self.reply(option, p.REP_SERVER, body)
            self.reply(option, p.REP_ACK)
        elif option == p.OPT_STRUCTURED_REPLY:
            if data:
                raise p.BadOption("NBD_OPT_STRUCTURED_REPLY takes no data")
            self.structured = True
            self.reply(option, p.REP_ACK)
        elif option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            self.opt_meta(option, data)
        elif option == p.OPT_STARTTLS:
            self.reply(option, p.REP_ERR_POLICY, "this server does not offer TLS")
        else:
            self.reply(option, p.REP_ERR_UNSUP, f"option {option} is not supported")
        return False

    def opt_info(self, option: int, data: bytes) -> bool:
        name, infos = p.parse_info_request(data)
        export = self.find(name)
        if export is None:
            known = ", ".join(repr(n) for n in self.exports) or "none"
            self.reply(option, p.REP_ERR_UNKNOWN, f"no export named {name!r}; exports: {known}")
            return False
        self.reply(option, p.REP_INFO, p.info_export(export.size, self.tflags()))
        if p.INFO_NAME in infos:
            self.reply(option, p.REP_INFO, p.U16.pack(p.INFO_NAME) + export.name.encode("utf-8"))
        if p.INFO_DESCRIPTION in infos and export.description:
            text = export.description.encode("utf-8")[: p.MAX_STRING]
            self.reply(option, p.REP_INFO, p.U16.pack(p.INFO_DESCRIPTION) + text)
        self.reply(option, p.REP_INFO, p.info_block_size())
        self.reply(option, p.REP_ACK)
        if option == p.OPT_INFO:
            return False
        self.enter(export)
        return True

    def opt_meta(self, option: int, data: bytes) -> None:
        if not self.structured:
            self.reply(option, p.REP_ERR_INVALID, "negotiate structured replies first")
            return
        listing = option == p.OPT_LIST_META_CONTEXT
        name, queries = p.parse_meta_request(data)
        export = self.find(name)
        if export is None:
            self.reply(option, p.REP_ERR_UNKNOWN, f"no export named {name!r}")
            return
        selected = p.match_contexts(queries, listing=listing)
        context_id = 0 if listing else p.BASE_ALLOCATION_ID
        for ctx in selected:
            self.reply(option, p.REP_META_CONTEXT, p.U32.pack(context_id) + ctx.encode("utf-8"))
        if not listing:
            self.meta_for = export if selected else None
        self.reply(option, p.REP_ACK)

    def enter(self, export: Export) -> None:
        self.export = export
        # A context chosen for another export does not carry over (NBD spec, SET_META_CONTEXT).
        meta = self.meta_for is export and self.structured
        self.state = p.Negotiated(export.size, self.structured, meta)

    # -- transmission --------------------------------------------------------------------------
    def transmission(self) -> None:
        export, state = self.export, self.state
        if export is None or state is None:
            return
        while True:
            req = p.parse_request(bytes(self.recv_exact(p.REQUEST.size, self._hdr)))
            if req.type == p.CMD_DISC:
                return
            if req.type == p.CMD_WRITE:
                # The payload follows the header; skip it to stay in step, then refuse.
                if req.length > p.MAX_PAYLOAD:
                    raise p.ClientViolation(f"write of {req.length} bytes is over the limit")
                self.drain(req.length)
            error = p.ESHUTDOWN if self.stopping() else p.check_request(req, state)
            if error:
                self.send_error(req, error)
            elif req.type == p.CMD_READ:
                self.read(export, req)
            elif req.type == p.CMD_BLOCK_STATUS:
                self.block_status(export, req)
            else:  # FLUSH: nothing is ever dirty on a read-only export
                self.sendv([p.simple_reply(0, req.cookie)])

    def send_error(self, req: p.Request, error: int) -> None:
        if self.structured:
            msg = _MESSAGES.get(error, "request refused")
            self.sendv([p.error_chunk(req.cookie, error, msg)])
        else:
            self.sendv([p.simple_reply(error, req.cookie)])

    def read(self, export: Export, req: p.Request) -> None:
        if not self.structured:
            try:
                data = read_views(export.volume, req.offset, req.length)
            except VolpackError as exc:
                log.warning(
                    "%s: read of %d bytes at %d failed: %s",
                    export.name,
                    req.length,
                    req.offset,
                    exc,
                )
                self.sendv([p.simple_reply(p.EIO, req.cookie)])
                return
            self.sendv([p.simple_reply(0, req.cookie), *data])
            return
        pieces = read_plan(export, req.offset, req.length, whole=bool(req.flags & p.CMD_FLAG_DF))
        bufs: list[bytes | memoryview] = []
        for i, (offset, length, is_hole) in enumerate(pieces):
            done = p.REPLY_FLAG_DONE if i == len(pieces) - 1 else 0
            if is_hole:
                bufs.append(p.hole_chunk(done, req.cookie, offset, length))
                continue
            try:
                data = read_views(export.volume, offset, length)
            except VolpackError as exc:
                log.warning(
                    "%s: read of %d bytes at %d failed: %s", export.name, length, offset, exc
                )
                bufs.append(
                    p.error_chunk(req.cookie, p.EIO, f"damaged archive data: {exc}"[:512], offset)
                )
                break
            if sum(len(b) for b in data) != length:
                bufs.append(p.error_chunk(req.cookie, p.EIO, "short read from the archive", offset))
                break
            bufs.append(p.chunk(done, p.REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + length))
            bufs.append(p.U64.pack(offset))
            bufs.extend(data)
        self.sendv(bufs)

    def block_status(self, export: Export, req: p.Request) -> None:
        starts, lengths, used = export.status_runs(req.offset, req.offset + req.length)
        limit = 1 if req.flags & p.CMD_FLAG_REQ_ONE else MAX_STATUS_DESCRIPTORS
        lengths, used = lengths[:limit], used[:limit]
        desc = np.empty((len(lengths), 2), dtype=">u4")
        desc[:, 0] = lengths
        desc[:, 1] = np.where(used, 0, p.STATE_HOLE | p.STATE_ZERO)
        body = p.U32.pack(p.BASE_ALLOCATION_ID) + desc.tobytes()
        head = p.chunk(p.REPLY_FLAG_DONE, p.REPLY_TYPE_BLOCK_STATUS, req.cookie, len(body))
        self.sendv([head, body])


def read_plan(
    export: Export, offset: int, length: int, *, whole: bool
) -> list[tuple[int, int, bool]]:
    """Split a read into (offset, length, is_hole) pieces; small holes ride along as data."""
    if whole:
        return [(offset, length, False)]
    starts, lengths, used = export.status_runs(offset, offset + length)
    pieces: list[tuple[int, int, bool]] = []
    for s, n, u in zip(starts.tolist(), lengths.tolist(), used.tolist(), strict=True):
        is_hole = (not u) and n >= HOLE_CHUNK_MIN
        if pieces and not is_hole and not pieces[-1][2]:
            prev = pieces[-1]
            pieces[-1] = (prev[0], prev[1] + n, False)
        else:
            pieces.append((s, n, is_hole))
    return pieces


_MESSAGES = {
    p.EPERM: "the export is read-only",
    p.EINVAL: "invalid request: bad command, flags, offset or length",
    p.EOVERFLOW: f"request is longer than the {p.MAX_PAYLOAD}-byte limit",
    p.ESHUTDOWN: "server is shutting down",
}
