"""Docs kept true by tests: the README's exit-code table is the one in errors.py."""

from __future__ import annotations

import re
from pathlib import Path

from volpack import errors

ROOT = Path(__file__).resolve().parents[2]


def _readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| *(\d+) *\| *(.+?) *\|$", section, re.M)}


def test_readme_exit_code_table_lists_exactly_the_codes_of_errors_py():
    in_code = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert set(_readme_exit_codes()) == in_code


def test_every_error_family_exits_with_a_code_the_readme_explains():
    documented = _readme_exit_codes()
    families = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.VolpackError)
    ]
    assert len(families) > 10
    for family in families:
        assert family.exit_code in documented, family.__name__


def test_the_version_has_one_source():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    from importlib.metadata import version

    import volpack

    assert version("volpack") == volpack.__version__


def test_the_architecture_map_names_every_top_level_module_and_package():
    text = (ROOT / "docs" / "architecture.md").read_text()
    src = ROOT / "src" / "volpack"
    names = [p.name for p in src.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    names += [p.name for p in src.glob("*.py") if p.name not in ("__main__.py",)]
    missing = [n for n in names if n.removesuffix(".py") not in text]
    assert missing == []
