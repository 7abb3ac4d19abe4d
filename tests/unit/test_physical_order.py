from volpack.compact.staging import physical_order
from volpack.compact.table import AddressTable
from volpack.extents import Extents
from volpack.source.base import PM_UNKNOWN, PhysicalMap


def test_staging_reads_used_pieces_in_physical_order_split_at_physical_runs():
    # Volume blocks 0-3 live at physical 900.., blocks 4-7 at physical 100.. (reversed on disk).
    pmap = PhysicalMap.build(
        ("disk",), [(0, 4 * 512, 0, 900 * 512, 0), (4 * 512, 4 * 512, 0, 100 * 512, 0)]
    )
    table = AddressTable.from_used(Extents.from_pairs([(2, 6)]), 512)
    vs, lens, ds = physical_order(table, pmap, 8 * 512)
    assert vs.tolist() == [4 * 512, 2 * 512]
    assert lens.tolist() == [1024, 1024]
    assert ds.tolist() == [1024, 0]


def test_pieces_with_unknown_or_no_location_come_last_in_volume_order():
    pmap = PhysicalMap.build(("disk",), [(0, 1024, -1, -1, PM_UNKNOWN), (2048, 1024, 0, 0, 0)])
    table = AddressTable.from_used(Extents.from_pairs([(0, 8)]), 512)
    vs, lens, _ = physical_order(table, pmap, 8 * 512)
    assert vs.tolist() == [2048, 0, 1024, 3072]
    assert int(lens.sum()) == 4096


def test_an_empty_physical_map_keeps_volume_order():
    table = AddressTable.from_used(Extents.from_pairs([(0, 1), (5, 6)]), 512)
    vs, _, ds = physical_order(table, PhysicalMap.build((), []), 3000)
    assert vs.tolist() == [0, 2560] and ds.tolist() == [0, 512]
