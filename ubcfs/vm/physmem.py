"""Simulated physical memory: one anonymous ``mmap`` cut into page frames (~ uvm_physseg,
uvm_pglist.c).

A frame is named by its physical address: its byte offset in the arena.  Page data is only
ever moved with memoryview slice copies (memcpy), and backing I/O reads and writes straight
into ``frame()`` views; there are no Python byte loops.  A fresh anonymous mapping reads as
zeroes, so every frame starts on the known-zero free list.
"""

from __future__ import annotations

import mmap

from ubcfs.vm.page import POISON_BYTE


class PhysMem:
    """The page-frame arena.

    Attributes:
        size: bytes of simulated memory.
        page_size: bytes per frame.
        view: a memoryview of the whole arena; ``view[pa:pa + page_size]`` is a frame.
    """

    __slots__ = ("_map", "_poison", "_zeroes", "page_size", "size", "view")

    def __init__(self, size: int, page_size: int, populate: bool = False) -> None:
        self.size = size
        self.page_size = page_size
        # populate: fault every frame in now, as real RAM would be there; otherwise the host
        # kernel zero-fills each frame on first touch (~4 µs a page, measured), which would
        # be charged to whichever write touches it first.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (mmap.MAP_POPULATE if populate else 0)
        self._map = mmap.mmap(-1, size, flags=flags)
        self.view = memoryview(self._map)
        self._zeroes = bytes(page_size)
        self._poison = bytes([POISON_BYTE]) * page_size

    def frame(self, pa: int) -> memoryview:
        """The frame at ``pa`` as a writable memoryview."""
        return self.view[pa : pa + self.page_size]

    def iovecs(self, pas: list[int], nbytes: int) -> list[memoryview]:
        """The first ``nbytes`` of the frames ``pas`` (in that order) as an I/O vector:
        physically adjacent frames share one view, as a scatter/gather list would."""
        ps = self.page_size
        view = self.view
        out = []
        start = prev = pas[0]
        for pa in pas[1:]:
            if pa != prev + ps:
                out.append(view[start : prev + ps])
                start = pa
            prev = pa
        out.append(view[start : prev + ps])
        extra = len(pas) * ps - nbytes
        if extra > 0:
            last = out[-1]
            out[-1] = last[: len(last) - extra]
        return out

    def zero(self, pa: int) -> None:
        """Fill a frame with zeroes."""
        self.view[pa : pa + self.page_size] = self._zeroes

    def zero_range(self, pa: int, start: int, end: int) -> None:
        """Fill bytes [start, end) of the frame at ``pa`` with zeroes."""
        self.view[pa + start : pa + end] = self._zeroes[: end - start]

    def poison(self, pa: int) -> None:
        """Stamp a freed frame so that use after free shows (kernel: DEBUG 0xdeadbeef)."""
        self.view[pa : pa + self.page_size] = self._poison

    def is_zero(self, pa: int) -> bool:
        """Does the frame hold only zeroes?"""
        return self.view[pa : pa + self.page_size] == self._zeroes

    def copy(self, src: int, dst: int) -> None:
        """Copy one frame onto another."""
        ps = self.page_size
        self.view[dst : dst + ps] = self.view[src : src + ps]

    def close(self) -> None:
        """Release the arena.  Views handed out must be released first."""
        self.view.release()
        self._map.close()
