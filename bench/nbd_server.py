"""A background NBD server on a Unix socket for the benchmark's NBD rows, stopped by its PID.

Starts untimed; tells its peak RSS (VmHWM), CPU seconds and bytes read (``rchar``: every read
syscall of the process, so the image data it served plus a few request headers) from /proc.
Knows no volpack and no rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class NbdServer:
    def __init__(self, argv: list[str], sock: Path, uri: str) -> None:
        sock.unlink(missing_ok=True)
        self.uri = uri
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"{argv[0]} exited {self.proc.returncode}: {err.strip()[-200:]}")
            if (
                sock.exists()
                and subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode == 0
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server on {sock} did not answer within 20 s")

    def hwm_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far (all its threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def read_bytes(self) -> int:
        """Bytes the server has read so far by read syscalls (``rchar`` of /proc/PID/io)."""
        with open(f"/proc/{self.proc.pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
