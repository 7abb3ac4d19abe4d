"""Properties (hypothesis): whatever order records are sealed in, no nonce is ever used twice
under one data key; two archives sealing the same data share no data key and no ciphertext."""

from __future__ import annotations

import threading
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volpack.crypto import (
    DataKey,
    RecordKind,
    RecordPosition,
    Sealer,
    Subkeys,
    nonce,
)

positions = st.lists(
    st.tuples(st.sampled_from(list(RecordKind)), st.integers(0, 2**64 - 1)), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(positions)
def test_nonces_never_repeat_within_an_archive_whatever_the_writer_asks(asked):
    sealer = Sealer(Subkeys.derive(DataKey.generate(), uuid.uuid4().bytes))
    used: dict[bytes, tuple[RecordKind, int]] = {}
    for kind, sequence in asked:
        pos = RecordPosition(kind, sequence)
        try:
            sealer.seal(pos, b"x")
        except ValueError:
            continue  # refused: a sequence that does not rise within its kind
        n = nonce(pos)
        assert n not in used, (used[n], (kind, sequence))
        used[n] = (kind, sequence)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n + 2)))))
def test_frames_sealed_in_any_order_are_each_sealed_once_and_never_beyond_the_count(case):
    frames, asked = case
    sealer = Sealer(Subkeys.derive(DataKey.generate(), uuid.uuid4().bytes), frames=frames)
    sealed: set[int] = set()
    for seq in asked:
        pos = RecordPosition(RecordKind.FRAME, seq, seq * 4096)
        if seq in sealed or seq >= frames:
            with pytest.raises(ValueError):
                sealer.seal(pos, b"x")
        else:
            sealer.seal(pos, b"x")
            sealed.add(seq)


def test_frames_sealed_from_several_threads_at_once_are_each_sealed_exactly_once():
    frames = 2000
    sealer = Sealer(Subkeys.derive(DataKey.generate(), uuid.uuid4().bytes), frames=frames)
    won: list[int] = []
    lock = threading.Lock()

    def seal_all() -> None:  # every thread tries every frame: exactly one may seal each
        out = bytearray(17)
        for seq in range(frames):
            try:
                sealer.seal_into(RecordPosition(RecordKind.FRAME, seq), b"x", memoryview(out))
            except ValueError:
                continue
            with lock:
                won.append(seq)

    threads = [threading.Thread(target=seal_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == list(range(frames))


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=16, max_size=4096), st.integers(0, 1000))
def test_two_archives_sealing_the_same_data_share_no_key_and_no_ciphertext(data, sequence):
    sealed, keys = [], []
    for _ in range(2):
        data_key = DataKey.generate()
        keys.append(data_key)
        sealer = Sealer(Subkeys.derive(data_key, uuid.uuid4().bytes))
        sealed.append(sealer.seal(RecordPosition(RecordKind.FRAME, sequence, 0), data))
    assert keys[0] != keys[1]
    a, b = sealed
    # no 16-byte block of one appears anywhere in the other (random chance: ~len²/2^128)
    blocks = {a[i : i + 16] for i in range(0, len(a) - 15, 16)}
    assert not any(b[i : i + 16] in blocks for i in range(len(b) - 15))
