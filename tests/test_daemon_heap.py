"""The daemon's heap settings (glibc): large blocks are their own mappings, freed back at once."""

from __future__ import annotations

import ctypes

import pytest

from etcdsync.daemon import daemon


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def test_tune_heap_maps_every_large_block_on_its_own() -> None:
    lib = daemon._glibc()
    if not lib or not hasattr(lib, "mallinfo2"):
        pytest.skip("glibc >= 2.33 only")
    lib.mallinfo2.restype = _MallInfo2
    # freeing a large mapped block is what makes glibc raise its threshold (and keep later ones in the heap)
    for size in (4 << 20, 8 << 20):
        bytearray(size)
    daemon.tune_heap()
    for size in (200_000, 1 << 20, 6 << 20):
        before = lib.mallinfo2().hblkhd
        block = bytearray(size)
        assert lib.mallinfo2().hblkhd >= before + size, size   # a mapping of its own ...
        del block
        assert lib.mallinfo2().hblkhd < before + size, size    # ... returned when freed
