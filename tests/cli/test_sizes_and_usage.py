"""Every size option of every verb and every size parameter of a tape URL answers a bad size with
one ``volpack: error:`` line naming the option and value, the remedy and exit 2; argparse's own
errors are one line too (plus a pointer to the verb's --help), and --help still works.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from volpack.cli import VERBS, build_parser, main

BAD_SIZES = ["-4096", "abc", "4096.5", "1e3", "0x1000", "", "4Q", "99999999999999999999E", "16Ei"]
REMEDY = "use a size like 4096, 4K or 4Ki"

# Placeholder positionals per verb: a size is parsed before anything is opened.
POSITIONALS = {
    "backup": ["v.img", "v.vpk"],
    "restore": ["v.vpk", "out.img"],
    "verify": ["v.vpk"],
    "merge": ["v.vpk", "out.vpk"],
    "rewrap": ["v.vpk", "out.vpk"],
    "info": ["v.vpk"],
    "map": ["v.img"],
    "serve": ["v.vpk"],
    "mount": ["v.vpk", "/mnt"],
    "list": [],
    "show": ["abc"],
    "prune": [],
}


def size_options() -> list[tuple[str, str]]:
    """(verb, option) for every option whose type is the size parser, found in the parsers."""
    found = []
    for verb in VERBS:
        parser = build_parser([verb])
        sub = next(a for a in parser._actions if a.choices and verb in a.choices)
        for action in sub.choices[verb]._actions:
            if getattr(action.type, "size_option", None):
                found.append((verb, action.option_strings[-1]))
    return found


SIZE_OPTIONS = size_options()


def test_the_size_options_found_include_every_known_one():
    known = {
        ("backup", "--block-size"),
        ("backup", "--frame-size"),
        ("map", "--block-size"),
        ("serve", "--cache-size"),
        ("mount", "--cache-size"),
        *(
            (v, o)
            for v in ("backup", "restore", "verify", "info")
            for o in ("--tape-record-size", "--volume-size")
        ),
    }
    assert known <= set(SIZE_OPTIONS)
    assert all(verb in POSITIONALS for verb, _ in SIZE_OPTIONS)


def one_usage_line(code: int, err: str, *words: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and "usage:" not in err, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("volpack: error: "), err
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("volpack: see '")), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.mark.parametrize("value", BAD_SIZES)
@pytest.mark.parametrize("verb,option", SIZE_OPTIONS)
def test_bad_size_for_every_size_option_is_one_usage_line(capsys, verb, option, value):
    code = main([verb, *POSITIONALS[verb], f"{option}={value}"])
    err = capsys.readouterr().err
    line = one_usage_line(code, err, option, REMEDY)
    assert len(err.splitlines()) == 1
    assert line.startswith(f"volpack: error: {option} {value or repr(value)}: "), line


@pytest.mark.parametrize("value", BAD_SIZES)
@pytest.mark.parametrize("param", ["record-size", "volume-size"])
@pytest.mark.parametrize("verb", ["backup", "restore", "verify", "info"])
def test_bad_size_in_a_tape_url_is_one_usage_line(tmp_path, capsys, verb, param, value):
    vol = tmp_path / "v.img"
    vol.write_bytes(os.urandom(8192))
    url = f"tape+emu:{tmp_path / 'drive'}?{param}={value}"
    argv = [verb, str(vol), url, "--no-catalog"] if verb == "backup" else [verb, url]
    if verb == "restore":
        argv.append(str(tmp_path / "out.img"))
    code = main(argv)
    one_usage_line(code, capsys.readouterr().err, f"tape option {param}", REMEDY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.img"]  # nothing written


def vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "volpack", *args], capture_output=True, text=True)


def test_negative_size_as_separate_argument_from_the_console_is_one_line(tmp_path):
    r = vp("backup", str(tmp_path / "v.img"), str(tmp_path / "v.vpk"), "--block-size", "-4096")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"volpack: error: --block-size -4096: negative; {REMEDY}\n"


@pytest.mark.parametrize(
    "argv,words,hint",
    [
        (
            ["backup", "a.img", "a.vpk", "--no-such-option"],
            ["backup", "--no-such-option"],
            "backup",
        ),
        (["backup", "a.img"], ["backup", "required", "archive"], "backup"),
        (["backup", "a.img", "a.vpk", "--detect", "magic"], ["--detect", "magic"], "backup"),
        (["restore", "a.vpk", "b", "--layout", "sideways"], ["--layout", "sideways"], "restore"),
        (["backup", "a.img", "a.vpk", "--threads", "many"], ["--threads", "many"], "backup"),
        (["backup", "a.img", "a.vpk", "--block-size"], ["--block-size", "expected"], "backup"),
        (["bakup", "a.img", "a.vpk"], ["bakup", "invalid choice"], ""),
        ([], ["required"], ""),
    ],
)
def test_argparse_errors_are_one_line_with_a_help_pointer(argv, words, hint):
    r = vp(*argv)
    assert r.stdout == ""
    one_usage_line(r.returncode, r.stderr, *words)
    want = f"volpack {hint} --help" if hint else "volpack --help"
    assert r.stderr.splitlines()[1] == f"volpack: see '{want}'"


@pytest.mark.parametrize("argv", [["--help"], ["backup", "--help"], ["restore", "-h"]])
def test_help_still_prints_usage_and_exits_0(argv):
    r = vp(*argv)
    assert r.returncode == 0 and r.stdout.startswith("usage: volpack"), r.stderr
    assert r.stderr == ""
