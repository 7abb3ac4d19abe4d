"""The golden three-link chains of formats 1.2 and 1.4 (tests/format/golden/chain-*, made by
tests/format/make_golden_chain.py) verify as chains and restore to the recorded volumes, forever:
the base links, zero records, a trimmed hash block and growth as first written."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from chainkit import ok

import volpack

GOLDEN = Path(__file__).resolve().parents[1] / "format" / "golden"
CHAINS = sorted(p.name for p in GOLDEN.glob("chain-*"))


def facts(chain: str) -> list[dict]:
    return json.loads((GOLDEN / chain / "chain.json").read_text())


def test_there_is_a_golden_chain_for_the_current_version():
    from volpack.format import records as R

    assert f"chain-{R.MAJOR}.{R.MINOR}" in CHAINS


@pytest.mark.parametrize("chain", CHAINS)
def test_the_golden_chain_verifies_every_link_and_state(chain):
    where = GOLDEN / chain
    out = ok("verify", str(where / "g2.vpk"), "--chain").stdout
    assert "3 archives" in out, out
    for fact in facts(chain):
        with volpack.open_archive(str(where / fact["archive"])) as a:
            assert (a.uuid, a.digest.split(":")[-1]) == (fact["uuid"], fact["digest"])
            assert a.header.chain_seq == fact["chain_seq"]
            assert (a.header.base.uuid if a.header.base else None) == fact["base_uuid"]
            assert a.trailer.state_digest.hex() == fact["state_digest"]


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("k", [2, 1])
def test_the_golden_chain_restores_each_generation_to_its_recorded_sha256(chain, k, tmp_path):
    out = tmp_path / "out.img"
    volpack.restore(str(GOLDEN / chain / f"g{k}.vpk"), str(out))
    assert out.stat().st_size == facts(chain)[k]["volume_size"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == facts(chain)[k]["volume_sha256"]


@pytest.mark.parametrize("chain", CHAINS)
def test_the_golden_chain_generator_still_makes_the_recorded_volumes(chain, tmp_path):
    sys.path.insert(0, str(GOLDEN.parent))
    import make_golden_chain  # noqa: PLC0415 (test-local helper)

    vol = str(tmp_path / "v.img")
    recorded = facts(chain)
    for k, fact in enumerate(recorded):
        make_golden_chain.generation(vol, k)
        with open(vol, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == fact["volume_sha256"], k
    assert os.path.getsize(vol) == recorded[-1]["volume_size"]


FINE = sorted(p.name for p in GOLDEN.glob("fine-*"))


@pytest.mark.parametrize("name", FINE)
def test_the_golden_fine_incremental_covers_granules_and_hashes_the_state_it_leaves(name, tmp_path):
    # Made by tests/format/make_golden_fine.py: four changes, each inside one 64 KiB granule of
    # a qcow2 dirty bitmap, in four different 1 MiB hash blocks.
    import blake3

    where = GOLDEN / name
    recorded = json.loads((where / "fine.json").read_text())
    for fact in recorded:
        with volpack.open_archive(str(where / fact["archive"])) as a:
            assert (a.uuid, a.digest.split(":")[-1]) == (fact["uuid"], fact["digest"])
            assert a.trailer.state_digest.hex() == fact["state_digest"]
            assert a.header.fine == fact["fine"]
    inc = str(where / "inc.vpk")
    with volpack.open_archive(inc) as a:
        assert a.header.fine and a.header.base.uuid == recorded[0]["uuid"]
        covered = a.table.used().union(a.zeros)
        assert covered.total() * a.block_size == 4 * 64 * 1024  # four granules, not 4 MiB
        assert a.covered.total() == 4 and a.whole is not None and a.whole.total() == 0
        table, hbs = a.hash_table, a.header.hash_block_size
    ok("verify", inc, "--chain")
    out = tmp_path / "state.img"
    volpack.restore(inc, str(out))
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == recorded[1]["volume_sha256"]
    # The table, recomputed from the restored bytes as section 5.1 defines it: BLAKE3's first
    # 16 bytes of each hash block, no entry for an all-zero one.
    expect = []
    for i in range(-(-len(data) // hbs)):
        block = data[i * hbs : (i + 1) * hbs]
        if block.count(0) != len(block):
            expect.append((i, blake3.blake3(block).digest()[:16]))
    got = [(int(e["index"]), bytes(e["hash"])) for e in table.entries]
    assert got == expect
