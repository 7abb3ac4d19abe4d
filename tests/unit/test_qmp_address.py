"""qmp:SOCKET#NODE[,scratch=DIR] addresses: parsed exactly, bad ones one UsageError line."""

from __future__ import annotations

import pytest

from volpack.errors import UsageError
from volpack.source.fleece import QmpAddress, parse_qmp


def test_a_qmp_address_names_the_socket_the_node_and_an_optional_scratch_directory():
    assert parse_qmp("qmp:/run/vm1.qmp#drive0") == QmpAddress("/run/vm1.qmp", "drive0")
    got = parse_qmp("qmp:/run/a#b.qmp#node-1,scratch=/var/tmp")
    assert got == QmpAddress("/run/a#b.qmp", "node-1", "/var/tmp")
    assert got.name == "qmp:/run/a#b.qmp#node-1"


@pytest.mark.parametrize(
    "bad",
    ["qmp:/run/vm1.qmp", "qmp:#drive0", "qmp:/run/x#", "qmp:/x#n,size=1", "qmp:/x#n,scratch="],
)
def test_a_malformed_qmp_address_is_one_usage_line(bad):
    with pytest.raises(UsageError) as exc:
        parse_qmp(bad)
    assert "\n" not in str(exc.value) and bad in str(exc.value)
