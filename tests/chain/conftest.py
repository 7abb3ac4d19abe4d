"""A three-link chain (full, incremental, incremental) of a small volume made once per module
(in this process), and its saved generations; tests copy what they change."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from chainkit import MiB, backup, generation_edits, make_volume


@dataclass(frozen=True, slots=True)
class Chain:
    home: Path  # g0.vpk, g1.vpk, g2.vpk
    copies: tuple[Path, ...]  # the volume as each generation backed it up
    volume: Path  # the live volume, in generation 2's state

    def archive(self, k: int) -> Path:
        return self.home / f"g{k}.vpk"

    def copy_to(self, directory: Path, *ks: int) -> list[Path]:
        """Archives ``ks`` copied into ``directory`` (a chain moved elsewhere, part of it)."""
        directory.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy(self.archive(k), directory / f"g{k}.vpk")) for k in ks]


def build_chain(root: Path) -> Chain:
    home = root / "archives"
    home.mkdir()
    volume = root / "volume.img"
    make_volume(volume, 8 * MiB + 12345, seed=7)
    copies = []
    for k in range(3):
        if k:
            generation_edits(volume, seed=100 + k)
            if k == 2:  # the last link also grows the volume
                with open(volume, "r+b") as f:
                    f.truncate(10 * MiB + 777)
        backup(volume, home / f"g{k}.vpk", str(home / f"g{k - 1}.vpk") if k else None)
        copies.append(root / f"copy{k}.img")
        shutil.copyfile(volume, copies[-1])
    return Chain(home, tuple(copies), volume)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    return build_chain(tmp_path_factory.mktemp("chain"))
