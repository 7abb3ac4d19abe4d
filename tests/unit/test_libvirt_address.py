"""``libvirt:`` addresses and the names of a whole domain's archives."""

from __future__ import annotations

import pytest

from volpack.errors import UsageError
from volpack.pipeline.libvirt_domain import archive_name, is_domain_source
from volpack.source.libvirt import LibvirtAddress, parse_libvirt


def test_a_disk_address_names_domain_disk_and_scratch() -> None:
    assert parse_libvirt("libvirt:vm1/vda") == LibvirtAddress("vm1", "vda")
    assert parse_libvirt("libvirt:vm1/sdb,scratch=/big") == LibvirtAddress("vm1", "sdb", "/big")


def test_a_disk_address_may_ask_for_the_guest_agent_freeze_with_or_without_scratch() -> None:
    assert parse_libvirt("libvirt:vm1/vda,fsfreeze") == LibvirtAddress("vm1", "vda", "", True)
    assert parse_libvirt("libvirt:vm1/vda,fsfreeze,scratch=/big") == LibvirtAddress(
        "vm1", "vda", "/big", True
    )
    assert parse_libvirt("libvirt:vm1/vda,scratch=/big,fsfreeze").fsfreeze


@pytest.mark.parametrize(
    "address",
    [
        "libvirt:",
        "libvirt:vm1",
        "libvirt:/vda",
        "libvirt:vm1/a/b",
        "libvirt:vm1/vda,x=1",
        "libvirt:vm1/vda,fsfreeze=1",
    ],
)
def test_a_malformed_disk_address_is_a_usage_error(address: str) -> None:
    with pytest.raises(UsageError):
        parse_libvirt(address)


def test_a_domain_without_a_disk_means_every_disk() -> None:
    assert is_domain_source("libvirt:vm1")
    assert is_domain_source("libvirt:vm1,scratch=/big/dir")
    assert not is_domain_source("libvirt:vm1/vda")
    assert not is_domain_source("qmp:/run/x.sock#vda")


def test_archives_of_a_domain_are_named_by_disk_and_checkpoint_time() -> None:
    cp = "volpack-20261201T155504777582Z"
    assert archive_name("out", "vda", cp) == "out/vda-20261201T155504777582Z.vpk"
    assert archive_name("s3://b/vm1/", "vdb", cp) == "s3://b/vm1/vdb-20261201T155504777582Z.vpk"
