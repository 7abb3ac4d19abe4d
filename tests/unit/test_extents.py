import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from volpack.extents import Extents, unique

runs = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=30).map(
    lambda xs: Extents.from_pairs([(a, a + n) for a, n in xs])
)


def as_set(e: Extents) -> set[int]:
    return {i for s, t in e for i in range(s, t)}


def test_from_pairs_merges_overlapping_and_touching_runs_and_drops_empty_ones():
    e = Extents.from_pairs([(10, 20), (0, 5), (5, 7), (15, 25), (30, 30)])
    assert list(e) == [(0, 7), (10, 25)]


@given(runs, runs)
def test_union_intersect_subtract_match_set_algebra(a, b):
    assert as_set(a.union(b)) == as_set(a) | as_set(b)
    assert as_set(a.intersect(b)) == as_set(a) & as_set(b)
    assert as_set(a.subtract(b)) == as_set(a) - as_set(b)


@given(runs, st.integers(0, 200), st.integers(0, 200))
def test_clip_and_complement_stay_inside_the_window(a, lo, n):
    hi = lo + n
    window = set(range(lo, hi))
    assert as_set(a.clip(lo, hi)) == as_set(a) & window
    assert as_set(a.complement(lo, hi)) == window - as_set(a)


@given(runs, st.sampled_from([1, 2, 8, 512]))
def test_scale_out_never_drops_a_byte(a, unit):
    blocks = a.scale_out(unit)
    assert as_set(a) <= as_set(blocks.scale_in(unit))


def test_huge_sparse_extents_cost_runs_not_blocks():
    tib = 1 << 40
    e = Extents.from_pairs([(i * tib, i * tib + 4096) for i in range(16)])
    assert e.total() == 16 * 4096
    assert len(e.complement(0, 16 * tib)) == 16


@given(st.lists(st.integers(-(2**62), 2**62), max_size=60))
def test_unique_gives_what_numpy_unique_gives(values):
    arr = np.array(values, dtype=np.int64)
    got = unique(arr)
    assert got.dtype == arr.dtype
    assert np.array_equal(got, np.unique(arr))
    assert np.array_equal(unique(arr.reshape(-1, 1)), np.unique(arr))  # flattened, like numpy
