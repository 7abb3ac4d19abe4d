"""NBD request and option parsing: validation rules, and hypothesis fuzzing for crashes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volpack.extents import Extents
from volpack.serve import nbd_proto as p
from volpack.serve.export import Export
from volpack.serve.nbd_conn import HOLE_CHUNK_MIN, read_plan

SIZE = 1 << 30
PLAIN = p.Negotiated(SIZE, structured=False, meta_context=False)
FULL = p.Negotiated(SIZE, structured=True, meta_context=True)


def req(cmd: int, offset: int = 0, length: int = 4096, flags: int = 0) -> p.Request:
    return p.Request(flags, cmd, 7, offset, length)


def header(
    cmd: int, offset: int, length: int, flags: int = 0, magic: int = p.REQUEST_MAGIC
) -> bytes:
    return p.REQUEST.pack(magic, flags, cmd, 0xDEADBEEF, offset, length)


def test_parse_request_decodes_every_field():
    r = p.parse_request(header(p.CMD_READ, 1 << 40, 512, p.CMD_FLAG_DF))
    assert r == p.Request(p.CMD_FLAG_DF, p.CMD_READ, 0xDEADBEEF, 1 << 40, 512)


def test_parse_request_refuses_a_wrong_magic_as_lost_sync():
    with pytest.raises(p.ClientViolation, match="magic"):
        p.parse_request(header(p.CMD_READ, 0, 512, magic=0x12345678))


def test_valid_read_inside_the_export_is_accepted():
    assert p.check_request(req(p.CMD_READ, SIZE - 4096, 4096), PLAIN) == 0


@pytest.mark.parametrize("cmd", [p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES])
def test_writes_trims_and_zeroes_are_refused_with_eperm(cmd):
    assert p.check_request(req(cmd), FULL) == p.EPERM
    # even when they are also out of range: read-only is the answer that helps the user
    assert p.check_request(req(cmd, SIZE, 1 << 31), FULL) == p.EPERM


def test_read_past_the_end_is_einval():
    assert p.check_request(req(p.CMD_READ, SIZE - 512, 1024), PLAIN) == p.EINVAL
    assert p.check_request(req(p.CMD_READ, SIZE, 1), PLAIN) == p.EINVAL


def test_offset_plus_length_overflowing_64_bits_is_einval():
    assert p.check_request(req(p.CMD_READ, 2**64 - 1, 2**32 - 1), PLAIN) == p.EINVAL
    assert p.check_request(req(p.CMD_BLOCK_STATUS, 2**64 - 512, 4096), FULL) == p.EINVAL


def test_read_longer_than_32_mib_is_eoverflow():
    big = p.Negotiated(1 << 40, structured=True, meta_context=True)
    assert p.check_request(req(p.CMD_READ, 0, p.MAX_PAYLOAD), big) == 0
    assert p.check_request(req(p.CMD_READ, 0, p.MAX_PAYLOAD + 1), big) == p.EOVERFLOW


def test_block_status_may_cover_more_than_the_read_limit():
    big = p.Negotiated(1 << 40, structured=True, meta_context=True)
    assert p.check_request(req(p.CMD_BLOCK_STATUS, 0, 2**32 - 1), big) == 0


def test_zero_length_read_is_einval():
    assert p.check_request(req(p.CMD_READ, 0, 0), PLAIN) == p.EINVAL


@pytest.mark.parametrize("cmd", [5, 8, 9, 100, 0xFFFF])
def test_unknown_or_unoffered_commands_are_einval(cmd):
    assert p.check_request(req(cmd), FULL) == p.EINVAL


def test_unknown_and_inapplicable_flags_are_einval():
    assert p.check_request(req(p.CMD_READ, flags=1 << 9), FULL) == p.EINVAL
    assert p.check_request(req(p.CMD_READ, flags=p.CMD_FLAG_FUA), FULL) == p.EINVAL
    assert p.check_request(req(p.CMD_READ, flags=p.CMD_FLAG_REQ_ONE), FULL) == p.EINVAL
    assert p.check_request(req(p.CMD_BLOCK_STATUS, flags=p.CMD_FLAG_DF), FULL) == p.EINVAL


def test_df_needs_structured_replies():
    assert p.check_request(req(p.CMD_READ, flags=p.CMD_FLAG_DF), PLAIN) == p.EINVAL
    assert p.check_request(req(p.CMD_READ, flags=p.CMD_FLAG_DF), FULL) == 0


def test_block_status_needs_a_negotiated_meta_context():
    assert p.check_request(req(p.CMD_BLOCK_STATUS), PLAIN) == p.EINVAL
    assert p.check_request(req(p.CMD_BLOCK_STATUS, flags=p.CMD_FLAG_REQ_ONE), FULL) == 0


def test_flush_must_have_zero_offset_length_and_flags():
    assert p.check_request(req(p.CMD_FLUSH, 0, 0), PLAIN) == 0
    assert p.check_request(req(p.CMD_FLUSH, 0, 512), PLAIN) == p.EINVAL
    assert p.check_request(req(p.CMD_FLUSH, 0, 0, p.CMD_FLAG_FUA), PLAIN) == p.EINVAL


def test_info_request_parses_name_and_requested_infos():
    data = struct.pack(">I", 3) + b"vol" + struct.pack(">HHH", 2, p.INFO_NAME, p.INFO_BLOCK_SIZE)
    assert p.parse_info_request(data) == ("vol", (p.INFO_NAME, p.INFO_BLOCK_SIZE))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        struct.pack(">I", 10) + b"abc",  # name longer than the payload
        struct.pack(">I", 3) + b"abc" + struct.pack(">H", 5),  # 5 infos promised, none there
        struct.pack(">I", 0) + struct.pack(">H", 0) + b"x",  # trailing garbage
        struct.pack(">I", 2) + b"\xff\xfe" + struct.pack(">H", 0),  # not UTF-8
        struct.pack(">I", 2) + b"a\0" + struct.pack(">H", 0),  # NUL inside
        struct.pack(">I", 5000) + b"a" * 5000 + struct.pack(">H", 0),  # over 4096 bytes
    ],
)
def test_malformed_info_requests_are_bad_options(data):
    with pytest.raises(p.BadOption):
        p.parse_info_request(data)


def test_meta_request_parses_queries():
    data = struct.pack(">I", 0) + struct.pack(">I", 2)
    data += struct.pack(">I", 5) + b"base:" + struct.pack(">I", 6) + b"qemu:x"
    assert p.parse_meta_request(data) == ("", ("base:", "qemu:x"))


def test_meta_request_with_a_huge_query_count_is_refused_without_looping():
    data = struct.pack(">I", 0) + struct.pack(">I", 2**32 - 1)
    with pytest.raises(p.BadOption, match="do not fit"):
        p.parse_meta_request(data)


def test_context_matching_knows_only_base_allocation():
    assert p.match_contexts((), listing=True) == [p.BASE_ALLOCATION]
    assert p.match_contexts((), listing=False) == []
    assert p.match_contexts(("base:",), listing=True) == [p.BASE_ALLOCATION]
    assert p.match_contexts(("base:allocation",), listing=False) == [p.BASE_ALLOCATION]
    assert p.match_contexts(("qemu:dirty-bitmap:x",), listing=False) == []


# -- fuzzing ---------------------------------------------------------------------------------
_KNOWN_ERRORS = {0, p.EPERM, p.EINVAL, p.EOVERFLOW}


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=28, max_size=28))
def test_fuzz_any_28_bytes_parse_or_raise_client_violation(raw):
    try:
        r = p.parse_request(raw)
    except p.ClientViolation:
        return
    assert p.check_request(r, FULL) in _KNOWN_ERRORS
    assert p.check_request(r, PLAIN) in _KNOWN_ERRORS


@settings(max_examples=3000, deadline=None)
@given(
    flags=st.integers(0, 0xFFFF),
    cmd=st.integers(0, 0xFFFF),
    offset=st.integers(0, 2**64 - 1),
    length=st.integers(0, 2**32 - 1),
    size=st.integers(0, 2**63),
    structured=st.booleans(),
    meta=st.booleans(),
)
def test_fuzz_accepted_requests_always_lie_inside_the_export(
    flags, cmd, offset, length, size, structured, meta
):
    state = p.Negotiated(size, structured, meta and structured)
    r = p.Request(flags, cmd, 1, offset, length)
    error = p.check_request(r, state)
    assert error in _KNOWN_ERRORS
    if error == 0 and cmd in (p.CMD_READ, p.CMD_BLOCK_STATUS):
        assert length > 0 and offset + length <= size
        assert cmd != p.CMD_READ or length <= p.MAX_PAYLOAD
        assert cmd != p.CMD_BLOCK_STATUS or state.meta_context


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_option_payloads_raise_only_bad_option(raw):
    for parse in (p.parse_info_request, p.parse_meta_request):
        with contextlib.suppress(p.BadOption):
            parse(raw)


class _Zeros:
    def __init__(self, size: int, used: Extents) -> None:
        self.size = size
        self._used = used

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def used_bytes(self) -> Extents:
        return self._used


@settings(max_examples=500, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(0, 1 << 22), st.integers(1, 1 << 18)), max_size=12),
    offset=st.integers(0, (1 << 22) - 1),
    length=st.integers(1, 1 << 22),
)
def test_read_plan_covers_the_request_exactly_with_holes_only_where_unused(runs, offset, length):
    size = 1 << 22
    length = min(length, size - offset)
    used = Extents.from_pairs([(s, min(s + n, size)) for s, n in runs])
    export = Export.of("x", _Zeros(size, used))
    pieces = read_plan(export, offset, length, whole=False)
    pos = offset
    for start, n, is_hole in pieces:
        assert start == pos and n > 0
        if is_hole:
            assert n >= HOLE_CHUNK_MIN
            assert used.clip(start, start + n).total() == 0
        pos += n
    assert pos == offset + length
    assert read_plan(export, offset, length, whole=True) == [(offset, length, False)]
