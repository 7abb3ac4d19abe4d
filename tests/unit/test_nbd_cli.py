"""`volpack serve` option parsing: listen addresses and default export names."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from volpack.cli.serve import export_name, parse_listen
from volpack.errors import UsageError
from volpack.extents import Extents
from volpack.serve.export import Export
from volpack.serve.nbd_server import NbdServer


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:10810", ("127.0.0.1", 10810)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":10811", ("127.0.0.1", 10811)),
        ("localhost", ("localhost", 10809)),
        ("[::1]:10812", ("::1", 10812)),
        ("[::1]", ("::1", 10809)),
    ],
)
def test_listen_addresses_parse_to_host_and_port(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["host:port", "1.2.3.4:70000", "[::1", "[::1]x", "h:-1"])
def test_bad_listen_addresses_are_usage_errors(text):
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/srv/backups/root-2024.vpk", "root-2024"),
        ("disk.img.vpk", "disk.img"),
        ("file:/a/b/home.vpk", "home"),
        ("s3://bucket/hosts/web1.vpk", "web1"),
        ("s3://bucket/plain", "plain"),
    ],
)
def test_default_export_names_are_the_archive_stems(url, name):
    assert export_name(url) == name


class _Empty:
    size = 0

    def read(self, offset: int, length: int) -> bytes:
        return b""

    def used_bytes(self) -> Extents:
        return Extents.empty()


def test_two_exports_with_the_same_name_are_refused():
    with pytest.raises(UsageError, match="used twice"):
        NbdServer([Export.of("a", _Empty()), Export.of("a", _Empty())], port=0)


def test_a_port_in_use_is_a_usage_error_naming_the_address():
    with NbdServer([Export.of("a", _Empty())], port=0) as first:
        port = first.address[1]  # type: ignore[index]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port}"):
            NbdServer([Export.of("a", _Empty())], port=port)


def test_a_unix_socket_path_that_is_a_regular_file_is_refused(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("x")
    with pytest.raises(UsageError, match="not a socket"):
        NbdServer([Export.of("a", _Empty())], socket_path=str(path))
    assert path.read_text() == "x"


def test_a_stale_unix_socket_file_is_reused(tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # left behind by a server that died: the file stays, nobody listens
    with NbdServer([Export.of("a", _Empty())], socket_path=path) as srv:
        assert srv.urls() == [f"nbd+unix:///a?socket={path}"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--client-timeout", "0"], ["--client-timeout", "positive"]),
        (["--client-timeout", "-5"], ["--client-timeout", "positive"]),
        (["--client-timeout", "nan"], ["--client-timeout", "positive"]),
        (["--reply-budget", "512K"], ["--reply-budget", "524288 bytes", "1M"]),
        (["--reply-budget", "lots"], ["--reply-budget", "not a number"]),
    ],
)
def test_a_bad_client_timeout_or_reply_budget_is_one_usage_error_line(tmp_path, args, words):
    res = subprocess.run(
        [sys.executable, "-m", "volpack", "serve", str(tmp_path / "a.vpk"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("volpack: error:")]
    assert len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
