import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from volpack.compact.table import AddressTable
from volpack.extents import Extents

used_maps = st.lists(st.tuples(st.integers(0, 500), st.integers(1, 30)), max_size=20).map(
    lambda xs: Extents.from_pairs([(a, a + n) for a, n in xs])
)


def test_address_table_maps_used_runs_to_sequential_dense_blocks():
    t = AddressTable.from_used(Extents.from_pairs([(10, 12), (100, 103)]), 512)
    assert t.dense_block.tolist() == [0, 2]
    assert t.used_blocks == 5 and t.dense_size == 5 * 512
    vs, lens, ds = t.dense_to_volume(0, 5 * 512)
    assert vs.tolist() == [10 * 512, 100 * 512]
    assert lens.tolist() == [1024, 1536]
    assert ds.tolist() == [0, 1024]


@given(used_maps, st.integers(0, 600 * 8), st.integers(0, 600 * 8))
def test_dense_and_volume_lookups_are_inverse(used, a, b):
    bs = 8
    t = AddressTable.from_used(used, bs)
    lo, hi = sorted((a, b))
    vs, lens, ds = t.volume_to_dense(lo, hi)
    expect = used.scale_in(bs).clip(lo, hi)
    assert list(zip(vs.tolist(), (vs + lens).tolist(), strict=True)) == list(expect)
    for v, n, d in zip(vs.tolist(), lens.tolist(), ds.tolist(), strict=True):
        v2, n2, d2 = t.dense_to_volume(d, d + n)
        assert v2.tolist()[0] == v and int(n2.sum()) == n


def test_table_of_a_16_tib_sparse_volume_is_tiny():
    tib_blocks = (16 << 40) // 4096
    used = Extents.from_pairs(
        [(i * (tib_blocks // 1000), i * (tib_blocks // 1000) + 64) for i in range(1000)]
    )
    t = AddressTable.from_used(used, 4096)
    assert t.volume_block.nbytes + t.count.nbytes + t.dense_block.nbytes < 64 * 1024
    assert np.all(np.diff(t.dense_block) == 64)
