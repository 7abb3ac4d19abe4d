"""Start-up stays lazy: `volpack --version` imports no heavy library and no pipeline stage.

Start-up is paid by every run, and on a small volume it is most of the run (bench/README.md,
start-up rows). The test reads what `python3 -X importtime -m volpack --version` really imports,
as a user's process would, rather than trusting the layout of the import statements.
"""

from __future__ import annotations

import subprocess
import sys

# Third-party libraries that cost tens of milliseconds each, and volpack's own stages that pull
# them in; none is needed to print the version.
HEAVY = (
    "numpy",
    "zstandard",
    "blake3",
    "xxhash",
    "boto3",
    "botocore",
    "tqdm",
    "sqlite3",
    "mfusepy",
    "volpack.detect",
    "volpack.source",
    "volpack.format",
    "volpack.pipeline",
    "volpack.media",
    "volpack.serve",
    "volpack.catalog",
)


def _imported(*args: str) -> list[str]:
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "volpack", *args],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    # Lines look like "import time:  self [us] | cumulative | <indent>module".
    return [
        line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if "import time:" in line
    ]


def test_version_imports_no_heavy_library_and_no_pipeline_stage():
    modules = _imported("--version")
    assert "volpack.cli" in modules, "importtime output not understood: " + ", ".join(modules[:5])
    heavy = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, "`volpack --version` imports " + ", ".join(heavy)


def test_verbs_load_only_their_own_stages(tmp_path):
    """A raw backup loads no qcow2 or QEMU reader (the format probe reads magic bytes only), and
    restore and info load no backup path: the pipeline package imports no verb."""
    vol = tmp_path / "v.img"
    with open(vol, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"data" * 1024)
    arc = tmp_path / "v.vpk"
    modules = _imported("backup", str(vol), str(arc), "--no-catalog", "-q")
    readers = [m for m in modules if m in ("volpack.source.qcow2", "volpack.source.qemu_image")]
    assert not readers, "a raw backup imports " + ", ".join(readers)
    for verb in (["info", str(arc)], ["restore", str(arc), str(tmp_path / "out.img"), "-q"]):
        modules = _imported(*verb)
        stray = [m for m in modules if m.startswith(("volpack.pipeline.backup", "volpack.detect"))]
        assert not stray, f"`volpack {verb[0]}` imports " + ", ".join(stray)


def test_unencrypted_verbs_load_no_crypto(tmp_path):
    """Key handling (cryptography, Argon2, age) is loaded only when an archive or an option
    asks for it: a plain backup, incremental, restore and merge leave it out."""
    vol = tmp_path / "v.img"
    with open(vol, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"data" * 1024)
    full, inc = str(tmp_path / "a.vpk"), str(tmp_path / "b.vpk")
    runs = [
        ["backup", str(vol), full, "--no-catalog", "-q"],
        ["backup", str(vol), inc, "--base", full, "--no-catalog", "-q"],
        ["restore", inc, str(tmp_path / "out.img"), "-q"],
        ["merge", inc, str(tmp_path / "m.vpk"), "--no-catalog", "-q"],
    ]
    for argv in runs:
        crypto = [m for m in _imported(*argv) if m.startswith(("volpack.crypto", "cryptography"))]
        assert not crypto, f"`volpack {' '.join(argv[:1])}` imports " + ", ".join(crypto)


def test_a_raw_backup_and_its_restore_start_no_program(tmp_path):
    """Nothing a raw image's backup or restore needs is another program: `ctypes.util.
    find_library` ran `ldconfig -p` in a child process at every start, for libc's symbols the
    process already holds."""
    vol = tmp_path / "v.img"
    with open(vol, "wb") as f:
        f.truncate(4 << 20)
        f.write(b"data" * 1024)
    # Recorded, not refused: a caller that catches errors would hide a refusal.
    script = (
        "import subprocess, sys\n"
        "started = []\n"
        "spawn = subprocess.Popen.__init__\n"
        "def record(self, *a, **k):\n"
        "    started.append(a[:1])\n"
        "    return spawn(self, *a, **k)\n"
        "subprocess.Popen.__init__ = record\n"
        "from volpack.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('started:', started, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    for argv in (
        ["backup", str(vol), str(tmp_path / "a.vpk"), "--no-catalog", "-q"],
        ["restore", str(tmp_path / "a.vpk"), str(tmp_path / "out.img"), "-q"],
    ):
        p = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "started: []" in p.stderr, p.stderr[-2000:]
