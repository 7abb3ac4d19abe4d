"""The links of a chain read into one set of frame buffers per frame size, and a chain whose
links differ in frame size still restores and merges to the volume's state."""

from __future__ import annotations

from tests.chain.chainkit import MiB, make_volume, pwrite, sha

import volpack
from volpack.format.random_access import open_archive
from volpack.pipeline.chain import Places, resolve_chain


def test_links_share_buffers_by_frame_size_and_the_chain_restores(tmp_path):
    vol = tmp_path / "v.img"
    make_volume(vol, 24 * MiB, seed=7)
    a = [str(tmp_path / f"a{k}.vpk") for k in range(3)]
    kw = dict(catalog=None, compress="zstd:1")
    volpack.backup(str(vol), a[0], frame_size=1 * MiB, **kw)
    for k, frame in ((1, 2 * MiB), (2, 1 * MiB)):
        pwrite(vol, k * 5 * MiB + 4096, bytes([k]) * 3 * MiB)
        volpack.backup(str(vol), a[k], frame_size=frame, base=a[k - 1], **kw)

    chain = resolve_chain(open_archive(a[2]), Places())
    try:
        top, middle, full = chain
        assert top._buffers is full._buffers  # both 1 MiB frames
        assert middle._buffers is not full._buffers  # 2 MiB frames: buffers of its own
    finally:
        for arch in chain:
            arch.close()

    volpack.restore(a[2], str(tmp_path / "out.img"))
    assert sha(tmp_path / "out.img") == sha(vol)
    volpack.merge(a[2], str(tmp_path / "m.vpk"), compress="none")
    volpack.restore(str(tmp_path / "m.vpk"), str(tmp_path / "m.img"))
    assert sha(tmp_path / "m.img") == sha(vol)
