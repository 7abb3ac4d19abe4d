"""Media under the contract suite. Each case knows how to name a fresh archive on its medium and
what its medium promises; the ``medium`` fixture runs every contract test once per case.

To add a medium: write a ``MediumCase`` subclass and add one line to ``CASES``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from tape_cases import spanning_tape_case, tape_case

from s3_server import use_s3_server
from volpack.media import open_reader, open_writer


class MediumCase:
    """Defaults fit an addressable medium driven in-process through volpack.media."""

    name = "?"
    random_access = True  # read_at works and size is known
    atomic = True  # abort leaves nothing; refuses to overwrite without force
    addressable = True  # a missing archive can be named and reported

    def url(self, name: str) -> str:
        raise NotImplementedError

    def write(self, url: str, chunks: list[bytes], *, force: bool = False) -> None:
        writer = open_writer(url, force=force)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def write_and_abort(self, url: str, chunks: list[bytes]) -> None:
        writer = open_writer(url)
        for chunk in chunks:
            writer.write(chunk)
        writer.abort()
        writer.abort()  # a second abort (as after a failure) is harmless

    def read_stream(self, url: str, bufsize: int = 100_003) -> bytes:
        reader = open_reader(url)
        try:
            out = bytearray()
            buf = bytearray(bufsize)
            view = memoryview(buf)
            while True:
                n = reader.readinto(view)
                if n == 0:
                    return bytes(out)
                out += view[:n]
        finally:
            reader.close()

    def stored(self, url: str) -> list[str]:
        """Everything the medium holds near ``url`` (to prove an abort left nothing)."""
        raise NotImplementedError


class FileCase(MediumCase):
    name = "file"

    def __init__(self, tmp_path) -> None:
        self.dir = tmp_path / "media-file"
        self.dir.mkdir()

    def url(self, name: str) -> str:
        return str(self.dir / name)

    def stored(self, url: str) -> list[str]:
        return sorted(os.listdir(self.dir))


class FileUrlCase(FileCase):
    name = "file-url"

    def url(self, name: str) -> str:
        return "file://" + str(self.dir / name)


_PIPE_WRITER = textwrap.dedent(
    """
    import sys
    from volpack.media import open_writer
    w = open_writer("-")
    data = sys.argv[1:]
    for size in map(int, data):
        w.write(sys.stdin.buffer.read(size))
    w.commit()
    """
)
_PIPE_READER = textwrap.dedent(
    """
    import sys
    from volpack.media import open_reader
    r = open_reader("-")
    assert r.size is None
    buf = memoryview(bytearray(int(sys.argv[1])))
    with open(sys.argv[2], "wb") as out:
        while n := r.readinto(buf):
            out.write(buf[:n])
    """
)


class PipeCase(MediumCase):
    """``-``: a writer process's stdout and a reader process's stdin, over real pipes."""

    name = "pipe"
    random_access = False
    atomic = False
    addressable = False

    def __init__(self, tmp_path) -> None:
        self.dir = tmp_path / "media-pipe"
        self.dir.mkdir()
        self.streams: dict[str, bytes] = {}

    def url(self, name: str) -> str:
        return "-"

    def write(self, url: str, chunks: list[bytes], *, force: bool = False) -> None:
        sizes = [str(len(c)) for c in chunks]
        done = subprocess.run(
            [sys.executable, "-c", _PIPE_WRITER, *sizes],
            input=b"".join(chunks),
            capture_output=True,
            check=True,
        )
        self.streams[url] = done.stdout

    def read_stream(self, url: str, bufsize: int = 100_003) -> bytes:
        out = self.dir / "read.out"
        subprocess.run(
            [sys.executable, "-c", _PIPE_READER, str(bufsize), str(out)],
            input=self.streams[url],
            check=True,
        )
        return out.read_bytes()


class S3Case(MediumCase):
    """``s3://`` on the session's ``weed mini``, with the smallest part size S3 allows (5 MiB),
    so that the larger contract archives are multipart uploads."""

    name = "s3"

    def __init__(self, server, monkeypatch) -> None:
        from volpack.media.s3 import client as s3_client

        use_s3_server(server, monkeypatch)
        s3_client.configure(part_size=5 << 20)
        self.server = server
        self.bucket = server.new_bucket()

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/archives/{name}"

    def stored(self, url: str) -> list[str]:
        c = self.server.client()
        keys = [o["Key"] for o in c.list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        uploads = [
            u["Key"] for u in c.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        ]
        return sorted(keys) + [f"(open upload) {k}" for k in uploads]


def _file(request, tmp_path):
    return FileCase(tmp_path)


def _file_url(request, tmp_path):
    return FileUrlCase(tmp_path)


def _pipe(request, tmp_path):
    return PipeCase(tmp_path)


def _s3(request, tmp_path):
    return S3Case(request.getfixturevalue("weed_mini"), request.getfixturevalue("monkeypatch"))


def _s3_cluster(request, tmp_path):
    return S3Case(request.getfixturevalue("weed_cluster"), request.getfixturevalue("monkeypatch"))


# One line per medium: name → (factory, marks).
CASES = {
    "file": (_file, ()),
    "file-url": (_file_url, ()),
    "pipe": (_pipe, ()),
    "s3": (_s3, (pytest.mark.s3,)),
    "s3-cluster": (_s3_cluster, (pytest.mark.s3, pytest.mark.slow)),
    "tape": (tape_case, ()),
    "tape-spanning": (spanning_tape_case, ()),
}


@pytest.fixture(params=[pytest.param(name, marks=marks) for name, (_, marks) in CASES.items()])
def medium(request, tmp_path) -> MediumCase:
    factory, _ = CASES[request.param]
    return factory(request, tmp_path)
