"""A file replaced by a user who may not keep its owner: the group is kept where the user is in it,
otherwise its permission bits are dropped rather than handed to the user's own group. Runs the
real publish path with the effective ids of ``nobody`` (needs root to switch; skipped otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile

import pytest

from volpack.atomic import create_temp, publish

NOBODY = 65534


@contextlib.contextmanager
def as_nobody():
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@pytest.fixture
def shared_dir():
    if os.geteuid() != 0:
        pytest.skip("switching to another user's ids needs root")
    d = tempfile.mkdtemp(prefix="volpack-owner-", dir="/tmp")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d)


def _replace_as_nobody(path: str) -> os.stat_result:
    with as_nobody():
        tmp, fd = create_temp(path)
        os.write(fd, b"new")
        publish(fd, tmp, path)
    return os.stat(path)


def test_a_replaced_files_group_is_kept_when_the_user_is_in_it(shared_dir):
    path = os.path.join(shared_dir, "a.img")
    with open(path, "wb") as f:
        f.write(b"old")
    os.chown(path, 0, NOBODY)
    os.chmod(path, 0o640)
    st = _replace_as_nobody(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o640)


def test_group_bits_are_dropped_when_the_group_cannot_be_kept(shared_dir, caplog):
    path = os.path.join(shared_dir, "b.img")
    with open(path, "wb") as f:
        f.write(b"old")
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="volpack"):
        st = _replace_as_nobody(path)
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert "group 0 could not be kept" in caplog.text
    with open(path, "rb") as f:
        assert f.read() == b"new"
