"""One NBD client connection: fixed newstyle handshake, then the transmission loop.

Reads are answered from the export's volume in pieces, each reserved from the server's reply
budget and sent before the next is read; every request is checked first and a bad one gets its
NBD error while the connection (and the server) carry on. Only a lost framing (bad magic, a
payload we cannot skip, a broken handshake) or a reply that cannot be completed ends the
connection. Never writes to a volume.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np

from volpack.errors import VolpackError
from volpack.serve import nbd_proto as p
from volpack.serve.budget import ReplyBudget
from volpack.serve.export import Export, read_views
from volpack.serve.nbd_io import Buffer, ClientSocket, Closed, Dropped

__all__ = ["Closed", "Connection", "Dropped", "read_plan"]

log = logging.getLogger("volpack")

# Holes shorter than this inside a read are sent as zeros within the data chunk: a separate hole
# chunk costs a header and the client a reassembly step, not worth it for small gaps.
HOLE_CHUNK_MIN = 64 * 1024
# A reply is read and sent in pieces of at most this many data bytes: the most a connection holds
# of a reply beyond the kernel's socket buffer, however large the read it asked for.
REPLY_PIECE = 256 * 1024
# Block status descriptors are 8 bytes: a reply stays within one piece too.
MAX_STATUS_DESCRIPTORS = REPLY_PIECE // 8
# Bytes of numpy temporaries per run while block status is worked out (a dozen int64 arrays).
_STATUS_WORK = 128
# Oversized option payloads up to this size are skipped and refused; beyond it we hang up.
_OPTION_DRAIN_LIMIT = 1 << 20


class _ShortRead(VolpackError):
    """The volume returned fewer bytes than asked for."""


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        exports: dict[str, Export],
        default: Export | None,
        handshake_timeout: float,
        stopping: Callable[[], bool],
        *,
        client_timeout: float,
        budget: ReplyBudget,
    ) -> None:
        self.sock = sock
        self.io = ClientSocket(sock, client_timeout)
        self.exports = exports
        self.default = default
        self.handshake_timeout = handshake_timeout
        self.stopping = stopping
        self.budget = budget
        self.in_transmission = False
        self.structured = False
        self.meta_for: Export | None = None  # export the base:allocation context was set for
        self.export: Export | None = None
        self.state: p.Negotiated | None = None
        self._hdr = bytearray(p.REQUEST.size)

    def sendv(self, bufs: list[Buffer]) -> None:
        self.io.sendv(bufs)

    # -- entry ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.io.deadline = time.monotonic() + self.handshake_timeout
        self.io.deadline_text = f"handshake not finished within {self.handshake_timeout:g} s"
        if not self.handshake():
            return
        self.io.deadline = None
        self.in_transmission = True
        self.transmission()

    # -- handshake -----------------------------------------------------------------------------
    def handshake(self) -> bool:
        """Option haggling; True when the client entered transmission with an export."""
        flags = p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
        self.sendv([p.U64.pack(p.NBDMAGIC) + p.U64.pack(p.IHAVEOPT) + p.U16.pack(flags)])
        client_flags = p.U32.unpack(self.io.recv_exact(4))[0]
        if client_flags & ~p.CLIENT_FLAGS_KNOWN:
            raise p.ClientViolation(f"unknown client flags 0x{client_flags:08x}")
        no_zeroes = bool(client_flags & p.CLIENT_FLAG_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION_HEADER.unpack(self.io.recv_exact(p.OPTION_HEADER.size))
            if magic != p.IHAVEOPT:
                raise p.ClientViolation(f"option magic 0x{magic:016x}, expected IHAVEOPT")
            if length > p.MAX_OPTION_DATA:
                if option == p.OPT_EXPORT_NAME or length > _OPTION_DRAIN_LIMIT:
                    raise p.ClientViolation(f"option {option} carries {length} bytes")
                self.io.drain(length)
                self.reply(option, p.REP_ERR_TOO_BIG, f"option data over {p.MAX_OPTION_DATA} bytes")
                continue
            data = bytes(self.io.recv_exact(length))
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
            req = p.parse_request(bytes(self.io.recv_exact(p.REQUEST.size, self._hdr)))
            if req.type == p.CMD_DISC:
                return
            if req.type == p.CMD_WRITE:
                # The payload follows the header; skip it to stay in step, then refuse.
                if req.length > p.MAX_PAYLOAD:
                    raise p.ClientViolation(f"write of {req.length} bytes is over the limit")
                self.io.drain(req.length)
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
        """Answer a valid read, piece by piece: each piece reserves its memory from the server's
        budget, is read as views of cached frames and sent before the next one is read."""
        if not self.structured:
            self.stream(export, req, [p.simple_reply(0, req.cookie)])
        elif req.flags & p.CMD_FLAG_DF:
            head = p.chunk(p.REPLY_FLAG_DONE, p.REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + req.length)
            self.stream(export, req, [head, p.U64.pack(req.offset)])
        else:
            self.read_chunks(export, req)

    def piece(self, export: Export, offset: int, length: int) -> list[Buffer]:
        """The bytes of one piece as views (VolpackError when the archive cannot give them)."""
        data: list[Buffer] = list(read_views(export.volume, offset, length))
        got = sum(len(b) for b in data)
        if got != length:
            raise _ShortRead(f"{got} bytes came back for a read of {length}")
        return data

    def read_failed(self, export: Export, offset: int, length: int, exc: VolpackError) -> None:
        log.warning("%s: read of %d bytes at %d failed: %s", export.name, length, offset, exc)

    def stream(self, export: Export, req: p.Request, head: list[Buffer]) -> None:
        """Send ``head`` and then every byte of the read as one payload.

        The head promises the whole payload, so the first piece is read before the head goes out
        (a damaged frame there is an EIO reply); a failure later can only end the connection,
        which is what the NBD spec asks for when a reply cannot be completed.
        """
        first = True
        for offset, length in pieces(req.offset, req.length):
            with self.budget.reserve(export.read_cost(length)) as hold:
                try:
                    bufs = self.piece(export, offset, length)
                except VolpackError as exc:
                    self.read_failed(export, offset, length, exc)
                    if not first:
                        raise Dropped(
                            f"read of {req.length} bytes at {req.offset} failed after its "
                            f"reply began, at {offset}: {exc}"
                        ) from None
                    if self.structured:
                        msg = f"damaged archive data: {exc}"[:512]
                        self.sendv([p.error_chunk(req.cookie, p.EIO, msg, offset)])
                    else:
                        self.sendv([p.simple_reply(p.EIO, req.cookie)])
                    return
                if first:
                    bufs[:0] = head
                    first = False
                self.io.sendv(bufs, hold)

    def read_chunks(self, export: Export, req: p.Request) -> None:
        """Structured read: a data chunk per piece, hole chunks for unused runs; a damaged frame
        ends the reply with an error chunk at its offset, after the good chunks before it."""
        out: list[Buffer] = []  # hole chunks ride along with the next data chunk
        items = self.plan(export, req.offset, req.length)
        item = next(items, None)
        while item is not None:
            offset, length, is_hole = item
            item = next(items, None)
            done = p.REPLY_FLAG_DONE if item is None else 0
            if is_hole:
                out.append(p.hole_chunk(done, req.cookie, offset, length))
                continue
            with self.budget.reserve(export.read_cost(length)) as hold:
                try:
                    data = self.piece(export, offset, length)
                except VolpackError as exc:
                    self.read_failed(export, offset, length, exc)
                    msg = f"damaged archive data: {exc}"[:512]
                    out.append(p.error_chunk(req.cookie, p.EIO, msg, offset))
                    break
                out.append(p.chunk(done, p.REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + length))
                out.append(p.U64.pack(offset))
                out += data
                del data  # the list passed on is then the only holder of the views
                self.io.sendv(out, hold)
        if out:
            self.sendv(out)

    @staticmethod
    def plan(export: Export, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, is_hole) of a structured read, planned one piece-sized window at a
        time so that a read over a finely fragmented map never holds a long plan. Data stays in
        pieces; holes that continue into the next window are joined into one."""
        last: tuple[int, int, bool] | None = None
        for start, size in pieces(offset, length):
            for item in read_plan(export, start, size, whole=False):
                if last is not None and last[2] and item[2]:
                    last = (last[0], last[1] + item[1], True)
                    continue
                if last is not None:
                    yield last
                last = item
        if last is not None:
            yield last

    def block_status(self, export: Export, req: p.Request) -> None:
        limit = 1 if req.flags & p.CMD_FLAG_REQ_ONE else MAX_STATUS_DESCRIPTORS
        # The run arrays are built under the reservation too: at most 2 * limit + 1 runs.
        with self.budget.reserve(_STATUS_WORK * (2 * limit + 1)) as hold:
            _, lengths, used = export.status_runs(req.offset, req.offset + req.length, limit)
            lengths, used = lengths[:limit], used[:limit]
            size = 4 + 8 * len(lengths)
            desc = np.empty((len(lengths), 2), dtype=">u4")
            desc[:, 0] = lengths
            desc[:, 1] = np.where(used, 0, p.STATE_HOLE | p.STATE_ZERO)
            head = p.chunk(p.REPLY_FLAG_DONE, p.REPLY_TYPE_BLOCK_STATUS, req.cookie, size)
            bufs: list[Buffer] = [head, p.U32.pack(p.BASE_ALLOCATION_ID) + desc.tobytes()]
            del desc, lengths, used
            hold.keep(p.CHUNK.size + size)
            self.io.sendv(bufs, hold)


def pieces(offset: int, length: int) -> Iterator[tuple[int, int]]:
    """``[offset, offset+length)`` cut into runs of at most REPLY_PIECE bytes."""
    end = offset + length
    while offset < end:
        n = min(REPLY_PIECE, end - offset)
        yield offset, n
        offset += n


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
