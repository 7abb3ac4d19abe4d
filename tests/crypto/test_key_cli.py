"""``volpack key generate`` / ``key recipient`` as a user runs them, and the key options of
cli/keys.py: files mode 0600, no overwrite without --force, one error line and exit 2 for bad
input, secrets never on stdout, stderr or in --json; VOLPACK_PASSPHRASE read once and removed;
a passphrase prompt only on a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import subprocess
import sys

import pytest

from cli_helpers import one_error_line
from volpack.cli import Parser
from volpack.cli.keys import (
    PASSPHRASE_ENV,
    add_open_options,
    add_seal_options,
    open_keys,
    seal_keys,
)
from volpack.crypto import Cipher, generate_identity
from volpack.crypto.files import read_identities
from volpack.errors import EXIT_USAGE, UsageError


def vp(
    *args: str, env: dict | None = None, umask: int | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["python3", "-m", "volpack", *args],
        capture_output=True,
        text=True,
        env=env,
        umask=-1 if umask is None else umask,
    )


def _secret_line(path) -> str:
    return [x for x in path.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-1")][0]


def test_key_generate_writes_a_0600_identity_and_prints_only_its_recipient(tmp_path):
    key = tmp_path / "backup.key"
    r = vp("key", "generate", "-o", str(key), "-v", umask=0)  # even with an empty umask
    assert r.returncode == 0, r.stderr
    assert os.stat(key).st_mode & 0o777 == 0o600
    (identity,) = read_identities(str(key))
    assert r.stdout == f"{identity.recipient}\n"
    secret = _secret_line(key)
    assert secret not in r.stdout + r.stderr and secret.lower() not in r.stdout + r.stderr
    text = key.read_text()
    assert text.startswith("# created: ") and f"# public key: {identity.recipient}\n" in text


def test_key_generate_json_names_file_and_recipient_and_never_the_secret(tmp_path):
    key = tmp_path / "k"
    r = vp("key", "generate", "-o", str(key), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result) == {"identity_file", "recipient"}
    assert result["identity_file"] == str(key) and result["recipient"].startswith("age1")
    assert _secret_line(key) not in r.stdout


def test_key_generate_refuses_to_overwrite_without_force_and_leaves_the_file_alone(tmp_path):
    key = tmp_path / "k"
    key.write_text("precious\n")
    os.chmod(key, 0o644)
    r = vp("key", "generate", "-o", str(key))
    one_error_line(r, EXIT_USAGE, str(key), "exists", "--force")
    assert key.read_text() == "precious\n" and r.stdout == ""
    r = vp("key", "generate", "-o", str(key), "--force")
    assert r.returncode == 0, r.stderr
    assert os.stat(key).st_mode & 0o777 == 0o600  # the old file's looser mode is not kept
    assert str(read_identities(str(key))[0].recipient) == r.stdout.strip()


def test_key_generate_into_a_missing_folder_is_one_line_and_leaves_nothing(tmp_path):
    r = vp("key", "generate", "-o", str(tmp_path / "no" / "k"))
    one_error_line(r, EXIT_USAGE, "cannot be created")
    assert not (tmp_path / "no").exists()


def test_key_recipient_matches_age_keygen_for_every_identity_in_a_file(tmp_path, age_cli):
    _, keygen = age_cli
    lines = []
    for name in ("a", "b"):
        subprocess.run([keygen, "-o", str(tmp_path / name)], check=True, capture_output=True)
        lines += (tmp_path / name).read_text().splitlines() + [""]
    both = tmp_path / "both"
    both.write_text("\n".join(lines))
    expected = subprocess.run(
        [keygen, "-y", str(both)], capture_output=True, text=True, check=True
    ).stdout
    r = vp("key", "recipient", str(both))
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected and len(r.stdout.splitlines()) == 2
    with open(both) as f:
        r = subprocess.run(
            ["python3", "-m", "volpack", "key", "recipient", "-", "--json"],
            stdin=f,
            capture_output=True,
            text=True,
        )
    assert json.loads(r.stdout) == {"recipients": expected.split()}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", ["holds no identity"]),
        ("# only a comment\n\n", ["holds no identity"]),
        ("age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj\n", ["line 1", "not an"]),
        ("AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZ\n", ["line 1", "bech32"]),
        ("AGE-PLUGIN-YUBIKEY-1ABCDEF\n", ["line 1", "not an age X25519 identity"]),
    ],
)
def test_key_recipient_of_a_bad_identity_file_is_one_line_exit_2(tmp_path, content, words):
    bad = tmp_path / "bad.key"
    bad.write_text(content)
    one_error_line(vp("key", "recipient", str(bad)), EXIT_USAGE, str(bad), *words)


def test_key_recipient_of_a_missing_file_or_a_folder_is_one_line_exit_2(tmp_path):
    one_error_line(vp("key", "recipient", str(tmp_path / "nope")), EXIT_USAGE, "cannot be opened")
    one_error_line(vp("key", "recipient", str(tmp_path)), EXIT_USAGE, "not a regular file")


def _seal_parser() -> Parser:
    p = Parser(prog="volpack backup")
    add_seal_options(p)
    return p


def _open_parser() -> Parser:
    p = Parser(prog="volpack restore")
    add_open_options(p)
    return p


def test_seal_options_make_one_key_per_option_and_none_without_options(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    a, b = generate_identity(), generate_identity()
    (tmp_path / "pw").write_text("s3cret phrase\n")
    (tmp_path / "k32").write_bytes(os.urandom(32))
    to = ["--recipient", str(a.recipient), "--recipient", str(b.recipient)]
    files = ["--passphrase-file", str(tmp_path / "pw"), "--key-file", str(tmp_path / "k32")]
    args = _seal_parser().parse_args([*to, *files, "--cipher", "chacha20-poly1305"])
    keys = seal_keys(args)
    assert keys is not None and keys.recipients == (a.recipient, b.recipient)
    assert [p.secret for p in keys.passphrases] == [b"s3cret phrase"]
    assert len(keys.key_files) == 1 and keys.cipher is Cipher.CHACHA20_POLY1305
    assert seal_keys(_seal_parser().parse_args([])) is None
    with pytest.raises(UsageError, match="nothing to seal to"):
        seal_keys(_seal_parser().parse_args(["--cipher", "aes-256-gcm"]))


def test_a_bad_recipient_or_cipher_is_refused_while_parsing(monkeypatch):
    with pytest.raises(UsageError, match="not an age X25519 recipient"):
        _seal_parser().parse_args(["--recipient", "ssh-ed25519 AAAA"])
    with pytest.raises(UsageError, match="choose one of aes-256-gcm, chacha20-poly1305"):
        _seal_parser().parse_args(["--cipher", "aes-128-cbc"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (b"\n", "is empty"), (b"one\ntwo\n", "2 lines"), (b"one\n\n", "2 lines")],
)
def test_a_passphrase_file_must_hold_one_non_empty_line(tmp_path, content, problem):
    (tmp_path / "pw").write_bytes(content)
    args = _open_parser().parse_args(["--passphrase-file", str(tmp_path / "pw")])
    with pytest.raises(UsageError, match=problem):
        open_keys(args)


def test_volpack_passphrase_is_read_once_and_removed_so_no_child_inherits_it(monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, "from the environment")
    keys = open_keys(_open_parser().parse_args([]))  # no option: the variable is the fallback
    assert [p.secret for p in keys.passphrases] == [b"from the environment"]
    assert PASSPHRASE_ENV not in os.environ
    child = subprocess.run(["env"], capture_output=True, text=True).stdout
    assert "from the environment" not in child


def test_without_a_key_off_a_terminal_opening_is_a_usage_error_not_a_prompt(monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        with pytest.raises(UsageError, match="no key was given"):
            open_keys(_open_parser().parse_args([]))
        with pytest.raises(UsageError, match="not a terminal"):
            seal_keys(_seal_parser().parse_args(["--passphrase"]))


PROMPT_CHILD = """
import hashlib, sys
from volpack.cli.keys import passphrase_from_env_or_terminal
from volpack.errors import UsageError
try:
    p = passphrase_from_env_or_terminal(confirm=True)
    print("SHA", hashlib.sha256(p.secret).hexdigest(), flush=True)
except UsageError as exc:
    print("ERR", exc, flush=True)
"""


def _run_on_terminal(typed: list[bytes]) -> str:
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal and its stdin
        os.execvpe(sys.executable, [sys.executable, "-c", PROMPT_CHILD], env)
    out = b""
    try:
        for line in typed:
            while b"passphrase" not in out.split(b"\n")[-1]:
                out += os.read(fd, 1024)
            os.write(fd, line + b"\n")
            out += os.read(fd, 1024)
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    return out.decode(errors="replace")


def test_on_a_terminal_the_passphrase_is_asked_twice_and_never_echoed():
    out = _run_on_terminal([b"typed secret", b"typed secret"])
    assert "SHA " + hashlib.sha256(b"typed secret").hexdigest() in out
    assert "typed secret" not in out
    assert out.count("volpack: passphrase") == 2


def test_on_a_terminal_two_different_passphrases_are_refused():
    out = _run_on_terminal([b"first", b"second"])
    assert "ERR the two passphrases differ" in out


MISSING_EXTRA = """
import sys
sys.modules[sys.argv[1]] = None  # as if the package were not installed
from volpack.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("module", ["cryptography", "bech32"])
def test_without_the_crypto_extra_key_commands_are_one_line_with_the_install_hint(tmp_path, module):
    r = subprocess.run(
        [sys.executable, "-c", MISSING_EXTRA, module, "key", "generate", "-o", str(tmp_path / "k")],
        capture_output=True,
        text=True,
    )
    one_error_line(r, EXIT_USAGE, f"needs the {module} module", "pip install 'volpack[crypto]'")
    assert not (tmp_path / "k").exists()
