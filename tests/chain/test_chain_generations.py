"""Generations of a changing volume, an incremental after each: a hypothesis state machine.

Each step edits the volume (unaligned writes, zero-writes, discards by punching holes, growth
and shrink to sizes that are not block multiples), backs it up as an incremental on the
previous generation (hash compare) and keeps a copy. After each step: that generation's chain
restores equal to the copy, ``verify --chain`` passes, the merged chain (a full, and onto the
first link) restores equal, and applying the incremental in place to the previous generation's
restore gives it. At the end every generation still restores equal to its copy.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest
from chainkit import KiB, MiB, make_volume, punch, pwrite
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import volpack
from volumes import same_bytes

MIN_SIZE, MAX_SIZE = 8 * MiB, 24 * MiB
BLOCK = 64 * KiB

offsets = st.integers(0, MAX_SIZE)
write = st.tuples(st.just("write"), offsets, st.integers(1, 400 * KiB), st.integers(0, 2**32))
zero = st.tuples(st.just("zero"), offsets, st.integers(1, 300 * KiB), st.just(0))
discard = st.tuples(st.just("discard"), offsets, st.integers(1, 2 * MiB), st.just(0))
resize = st.tuples(st.just("resize"), st.integers(MIN_SIZE, MAX_SIZE), st.just(0), st.just(0))
edits = st.lists(st.one_of(write, zero, discard, resize), max_size=4)


class Generations(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="vp-generations-")
        self.vol = self.path("volume.img")
        self.archives: list[str] = []  # generation k's archive
        self.copies: list[str] = []  # the volume as generation k backed it up
        self.restored: list[str] = []  # generation k restored through its chain
        self.checked = 0

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def keep(self, base: str | None) -> None:
        k = len(self.archives)
        archive = self.path(f"chain/g{k}.vpk")
        volpack.backup(
            self.vol,
            archive,
            block_size=BLOCK,
            compress="none",
            base=base,
            allow_mounted=True,
            threads=1,
        )
        self.archives.append(archive)
        self.copies.append(self.path(f"copy{k}.img"))
        shutil.copyfile(self.vol, self.copies[-1])

    @initialize(size=st.integers(MIN_SIZE, MAX_SIZE), seed=st.integers(0, 2**32))
    def full(self, size: int, seed: int) -> None:
        os.makedirs(self.path("chain"))
        os.makedirs(self.path("merged"))
        make_volume(self.vol, size, seed)
        self.keep(None)

    @rule(changes=edits)
    def incremental(self, changes: list[tuple[str, int, int, int]]) -> None:
        for kind, a, b, seed in changes:
            size = os.path.getsize(self.vol)
            if kind == "resize":
                os.truncate(self.vol, a)
                continue
            offset = a % size
            length = min(b, size - offset)
            if kind == "write":
                pwrite(self.vol, offset, random.Random(seed).randbytes(length))
            elif kind == "zero":
                pwrite(self.vol, offset, bytes(length))
            else:
                punch(self.vol, offset, length)
        self.keep(self.archives[-1])

    @invariant()
    def newest_generation_restores_merges_applies_and_verifies(self) -> None:
        k = len(self.archives) - 1
        if k < 0 or self.checked > k:
            return
        archive, copy = self.archives[k], self.copies[k]
        out = self.path(f"restored{k}.img")
        volpack.restore(archive, out)
        assert same_bytes(out, copy), f"generation {k} restored differs from its copy"
        self.restored.append(out)
        self.checked = k + 1
        if k == 0:
            return
        assert len(volpack.verify(archive, chain=True).chain) == k + 1
        merged = self.path(f"merged/m{k}.vpk")
        volpack.merge(archive, merged, compress="none", threads=1)
        volpack.restore(merged, self.path("m.img"), force=True)
        assert same_bytes(self.path("m.img"), copy), f"merge of generation {k} differs"
        if k >= 2:
            onto = self.path(f"merged/onto{k}.vpk")
            volpack.merge(archive, onto, onto=self.archives[1], compress="none", threads=1)
            volpack.restore(onto, self.path("o.img"), force=True)
            assert same_bytes(self.path("o.img"), copy), f"merge of 2..{k} onto 1 differs"
        target = self.path("applied.img")
        shutil.copyfile(self.restored[k - 1], target)
        volpack.apply(archive, target, force=True, verify_target="full")
        assert same_bytes(target, copy), f"generation {k} applied onto {k - 1} differs"

    def teardown(self) -> None:
        try:
            for k, (archive, copy) in enumerate(zip(self.archives, self.copies, strict=True)):
                volpack.restore(archive, self.path("again.img"), force=True)
                assert same_bytes(self.path("again.img"), copy), f"generation {k} differs later"
        finally:
            shutil.rmtree(self.dir)


def test_every_generation_of_a_changing_volume_restores_merges_and_applies_as_its_copy():
    run_state_machine_as_test(
        Generations,
        settings=settings(
            max_examples=4,
            stateful_step_count=4,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.slow
def test_many_generations_of_a_changing_volume_restore_merge_and_apply_as_their_copies():
    run_state_machine_as_test(
        Generations,
        settings=settings(
            max_examples=int(os.environ.get("VOLPACK_CHAIN_EXAMPLES", "60")),
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
