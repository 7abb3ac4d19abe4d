"""The run algebra behind qcow2 chain resolution, checked byte by byte against a naive model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from volpack.extents import Extents
from volpack.source.qcow2_tables import KIND_COMPRESSED, KIND_DATA, KIND_ZERO, Runs

SPACE = 200


def build(items: list[tuple[int, int, int, int, int]]) -> Runs:
    """Disjoint runs from (start, length, kind, host, layer); overlaps are dropped."""
    taken = np.zeros(SPACE, bool)
    rows = []
    for start, length, kind, host, layer in sorted(items):
        end = min(start + length, SPACE)
        if end <= start or taken[start:end].any():
            continue
        taken[start:end] = True
        rows.append((start, end, kind, host, layer))
    if not rows:
        return Runs.empty()
    a = np.array(rows, np.int64)
    return Runs(
        a[:, 0], a[:, 1], a[:, 2].astype(np.int8), a[:, 3], np.zeros(len(rows), np.int64),
        a[:, 4].astype(np.int16),
    )  # fmt: skip


def model(runs: Runs) -> list[tuple[int, int, int] | None]:
    """Per byte: (kind, layer, where) — data bytes by host byte, others by run identity."""
    out: list[tuple[int, int, int] | None] = [None] * SPACE
    for s, e, k, h, layer in zip(
        runs.starts.tolist(), runs.ends.tolist(), runs.kinds.tolist(), runs.hosts.tolist(),
        runs.layers.tolist(), strict=True,
    ):  # fmt: skip
        for b in range(s, e):
            where = h + (b - s) if k == KIND_DATA else (h if k == KIND_COMPRESSED else -1)
            out[b] = (k, layer, where)
    return out


run_items = st.lists(
    st.tuples(
        st.integers(0, SPACE - 1),
        st.integers(1, 40),
        st.sampled_from([KIND_DATA, KIND_ZERO, KIND_COMPRESSED]),
        st.integers(0, 10_000),
        st.integers(0, 2),
    ),
    max_size=25,
)
hole_items = st.lists(st.tuples(st.integers(0, SPACE), st.integers(0, 60)), max_size=10)


@settings(max_examples=300, deadline=None)
@given(run_items, hole_items)
def test_within_keeps_exactly_the_bytes_inside_the_holes(items, holes):
    runs = build(items)
    ext = Extents.from_pairs([(s, min(s + n, SPACE)) for s, n in holes])
    inside = np.zeros(SPACE, bool)
    for s, e in ext:
        inside[s:e] = True
    want = [m if inside[i] else None for i, m in enumerate(model(runs))]
    assert model(runs.within(ext)) == want


@settings(max_examples=300, deadline=None)
@given(run_items)
def test_merged_changes_no_byte_and_never_joins_compressed_clusters(items):
    runs = build(items)
    merged = runs.merged()
    assert model(merged) == model(runs)
    assert (merged.kinds == KIND_COMPRESSED).sum() == (runs.kinds == KIND_COMPRESSED).sum()
    assert np.all(merged.starts[1:] >= merged.ends[:-1])


def test_merged_joins_host_contiguous_data_and_adjacent_zeros():
    runs = build([(0, 10, KIND_DATA, 100, 0), (10, 5, KIND_DATA, 110, 0),
                  (15, 5, KIND_DATA, 500, 0), (20, 5, KIND_ZERO, 7, 0),
                  (25, 5, KIND_ZERO, 900, 0)])  # fmt: skip
    merged = runs.merged()
    assert merged.starts.tolist() == [0, 15, 20]
    assert merged.ends.tolist() == [15, 20, 30]
