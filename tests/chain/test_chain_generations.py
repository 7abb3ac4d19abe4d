"""Generations of a changing volume, an incremental after each: a hypothesis state machine.

Each step edits the volume (unaligned writes, zero-writes, discards by punching holes, growth
and shrink to sizes that are not block multiples), backs it up as an incremental on the
previous generation (hash compare) and keeps a copy. After each step: that generation's chain
restores equal to the copy, ``verify --chain`` passes, the merged chain (a full, and onto the
first link) restores equal, and applying the incremental in place to the previous generation's
restore gives it. At the end every generation still restores equal to its copy. The qcow2
variant finds each generation's changes by the image's persistent dirty bitmap instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
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
        result = volpack.backup(
            self.vol,
            archive,
            block_size=BLOCK,
            compress="none",
            base=base,
            bitmap=self.bitmap if base else None,
            allow_mounted=True,
            threads=1,
        )
        if base:
            assert result.changes["method"] == self.method, result.changes
        self.archives.append(archive)
        self.copies.append(self.path(f"copy{k}.img"))
        self.save_copy(self.copies[-1])

    # The volume: a raw file edited with system calls; the qcow2 variant below overrides these.
    bitmap: str | None = None
    method = "hash-compare"

    def create(self, size: int, seed: int) -> None:
        make_volume(self.vol, size, seed)

    def edit(self, changes: list[tuple[str, int, int, int]]) -> None:
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

    def save_copy(self, path: str) -> None:
        shutil.copyfile(self.vol, path)

    @initialize(size=st.integers(MIN_SIZE, MAX_SIZE), seed=st.integers(0, 2**32))
    def full(self, size: int, seed: int) -> None:
        os.makedirs(self.path("chain"))
        os.makedirs(self.path("merged"))
        self.create(size, seed)
        self.keep(None)

    @rule(changes=edits)
    def incremental(self, changes: list[tuple[str, int, int, int]]) -> None:
        self.edit(changes)
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


class Qcow2Generations(Generations):
    """The same generations on a qcow2 image changed through ``qemu-io`` (sector-aligned writes,
    ``write -z``, ``discard``) and ``qemu-img resize``, each incremental found by the image's
    persistent dirty bitmap (cleared after every backup); the copies are ``qemu-img convert``'s
    raw reading of the image."""

    bitmap = "daily"
    method = "bitmap:daily"

    def create(self, size: int, seed: int) -> None:
        raw = self.path("initial.img")
        make_volume(raw, size // 512 * 512, seed)
        self.vol = self.path("volume.qcow2")
        _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, self.vol)
        os.remove(raw)
        _run("qemu-img", "bitmap", "--add", "--enable", self.vol, self.bitmap)

    def edit(self, changes: list[tuple[str, int, int, int]]) -> None:
        for kind, a, b, seed in changes:
            size = _virtual_size(self.vol)
            if kind == "resize":
                new = a // 512 * 512
                _run("qemu-img", "resize", "-f", "qcow2", "--shrink", self.vol, str(new))
                continue
            offset = a % size // 512 * 512
            length = max(512, min(b, size - offset) // 512 * 512)
            if kind == "write":
                cmd = f"write -P {seed % 255 + 1} {offset} {length}"
            elif kind == "zero":
                cmd = f"write -z {offset} {length}"
            else:
                cmd = f"discard {offset} {length}"
            _run("qemu-io", "-f", "qcow2", "-c", cmd, self.vol)

    def keep(self, base: str | None) -> None:
        super().keep(base)
        _run("qemu-img", "bitmap", "--clear", self.vol, self.bitmap)

    def save_copy(self, path: str) -> None:
        _run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", self.vol, path)


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, (argv, r.stderr)


def _virtual_size(path: str) -> int:
    r = subprocess.run(
        ["qemu-img", "info", "--output=json", path], capture_output=True, text=True, check=True
    )
    return int(json.loads(r.stdout)["virtual-size"])


def _need_qemu() -> None:
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        pytest.skip("qemu-img / qemu-io are not installed (scripts/test.sh installs them)")


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


def test_every_qcow2_generation_found_by_its_dirty_bitmap_restores_merges_and_applies():
    _need_qemu()
    run_state_machine_as_test(
        Qcow2Generations,
        settings=settings(
            max_examples=2,
            stateful_step_count=3,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.slow
def test_many_qcow2_generations_found_by_dirty_bitmaps_restore_merge_and_apply():
    _need_qemu()
    run_state_machine_as_test(
        Qcow2Generations,
        settings=settings(
            max_examples=int(os.environ.get("VOLPACK_CHAIN_EXAMPLES", "60")),
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
