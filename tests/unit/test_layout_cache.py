"""Layouts keep their segments on themselves: building a layout per micro-batch of every step
(what the engine does) holds no memory once the layouts are dropped."""

import gc
import weakref

from hetero_sp.parallel.sharding import make_layout


def test_segments_are_cached_per_layout_and_go_with_it():
    refs = []
    for i in range(2000):  # 2,000 layouts of 4 ranks x 40 documents held 59 MiB
        layout = make_layout([17 + (i + d) % 23 for d in range(40)], 4, "zigzag")
        for rank in range(4):
            assert layout.segments(rank) is layout.segments(rank)  # computed once per layout
        refs.append(weakref.ref(layout))
    del layout
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert alive == 0, f"{alive} of 2000 dropped layouts are still held (by a cache)"


def test_equal_layouts_are_still_equal_and_hash_alike():
    a, b = make_layout([5, 9, 3], 2, "zigzag"), make_layout([5, 9, 3], 2, "zigzag")
    a.segments(0)  # a cached entry must not make a differ from b
    assert a == b and hash(a) == hash(b)
    assert a.segments(1) == b.segments(1)
