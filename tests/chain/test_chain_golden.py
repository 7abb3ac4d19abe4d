"""The golden three-link chain of format 1.2 (tests/format/golden/chain-1.2, made by
tests/format/make_golden_chain.py) verifies as a chain and restores to the recorded volumes,
forever: the base links, zero records, a trimmed hash block and growth as first written."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from chainkit import ok

import volpack

CHAIN = Path(__file__).resolve().parents[1] / "format" / "golden" / "chain-1.2"
FACTS = json.loads((CHAIN / "chain.json").read_text())


def test_the_golden_chain_verifies_every_link_and_state():
    out = ok("verify", str(CHAIN / "g2.vpk"), "--chain").stdout
    assert "3 archives" in out, out
    for fact in FACTS:
        with volpack.open_archive(str(CHAIN / fact["archive"])) as a:
            assert (a.uuid, a.digest.split(":")[-1]) == (fact["uuid"], fact["digest"])
            assert a.header.chain_seq == fact["chain_seq"]
            assert (a.header.base.uuid if a.header.base else None) == fact["base_uuid"]
            assert a.trailer.state_digest.hex() == fact["state_digest"]


@pytest.mark.parametrize("k", [2, 1])
def test_the_golden_chain_restores_each_generation_to_its_recorded_sha256(k, tmp_path):
    out = tmp_path / "out.img"
    volpack.restore(str(CHAIN / f"g{k}.vpk"), str(out))
    assert out.stat().st_size == FACTS[k]["volume_size"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == FACTS[k]["volume_sha256"]


def test_the_golden_chain_generator_still_makes_the_recorded_volumes(tmp_path):
    sys.path.insert(0, str(CHAIN.parents[1]))
    import make_golden_chain  # noqa: PLC0415 (test-local helper)

    vol = str(tmp_path / "v.img")
    for k, fact in enumerate(FACTS):
        make_golden_chain.generation(vol, k)
        with open(vol, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == fact["volume_sha256"], k
    assert os.path.getsize(vol) == FACTS[-1]["volume_size"]
