"""A model of files and of simulated processes' mappings of them: what every load should
return and which operations should fail.  Shared by ``ubcfs stress truncate`` (against a
mount) and the hypothesis state machine of the engine's processes (in process).  No I/O.

A mapping's page is, in the model: the process's own copy if it belongs to a MAP_PRIVATE
mapping and was written (a store, a debugger's write, or the copy that mlock makes of every
page of a private mapping, VM_FAULT_WIREMAX); otherwise the file's page, which exists only
below the file's page-rounded end (past it a load is SIGBUS).  Bytes past the file's end in
its last page are not specified, nor are such bytes of a private copy: a copy carries a
mask of the bytes the model knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

PAGE: Final = 4096

OWN: Final = "own"
FILE: Final = "file"
GONE: Final = "gone"


def round_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclass
class FileM:
    """A file as the model knows it: its name (for messages) and its bytes."""

    name: str
    data: bytearray

    def write(self, off: int, data: bytes) -> None:
        """``pwrite`` (a gap before ``off`` reads as zeros)."""
        if off > len(self.data):
            self.data.extend(bytes(off - len(self.data)))
        self.data[off : off + len(data)] = data

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))


@dataclass
class MapM:
    """A mapping of a model process."""

    addr: int
    npages: int
    file: FileM
    offset: int
    private: bool
    writable: bool
    locked: bool = False
    holds: int = 0  # vslocks of the whole mapping not yet vsunlocked
    # Private pages that are the process's own: page index -> (bytes, known-mask).
    own: dict[int, tuple[bytearray, bytearray]] = field(default_factory=dict)

    def forked(self) -> MapM:
        """The child's copy at fork: the same mapping, own pages copied, neither locked
        nor vslocked."""
        return MapM(
            self.addr,
            self.npages,
            self.file,
            self.offset,
            self.private,
            self.writable,
            False,
            0,
            {i: (bytearray(d), bytearray(k)) for i, (d, k) in self.own.items()},
        )

    def page(self, i: int) -> tuple[str, bytes, bytes]:
        """What page ``i`` is: (OWN | FILE | GONE, its bytes, the known-mask)."""
        if self.private and i in self.own:
            d, k = self.own[i]
            return OWN, bytes(d), bytes(k)
        off = self.offset + i * PAGE
        size = len(self.file.data)
        if off >= round_up(size):
            return GONE, b"", b""
        chunk = bytes(self.file.data[off : off + PAGE])
        known = b"\x01" * len(chunk) + b"\x00" * (PAGE - len(chunk))
        return FILE, chunk.ljust(PAGE, b"\0"), known

    def promote(self, i: int) -> bool:
        """Private page ``i`` becomes the process's own (a copy of the file's page);
        False when there is no file page to copy (past EOF)."""
        if i in self.own:
            return True
        state, data, known = self.page(i)
        if state == GONE:
            return False
        self.own[i] = (bytearray(data), bytearray(known))
        return True

    def mlock_outcome(self) -> tuple[bool, list[int]]:
        """(will mlock succeed, the private pages its wiring faults copy).  An mlocked
        mapping is not wired again."""
        return (True, []) if self.locked else self._wiring_faults()

    def vslock_outcome(self) -> tuple[bool, list[int]]:
        """(will a vslock of the whole mapping for read and write succeed, the private
        pages its wiring faults copy).  A read-only mapping refuses it before any page; the
        copies made before a failure stay, the wirings are undone."""
        return self._wiring_faults() if self.writable else (False, [])

    def _wiring_faults(self) -> tuple[bool, list[int]]:
        """The wiring faults of every page in order (mlock's with the maximum protection,
        vslock's for write: either way a private file page becomes the process's own):
        the first page past EOF fails them, after the ones before it."""
        copies: list[int] = []
        for i in range(self.npages):
            state = self.page(i)[0]
            if state == GONE:
                return False, copies
            if self.private and state == FILE:
                copies.append(i)
        return True, copies

    def store_outcome(self, i: int, start: int, data: bytes, debugger: bool) -> tuple[bool, bytes]:
        """(will a store -- a debugger's write with ``debugger`` -- of ``data`` at ``start``
        of page ``i`` succeed, the part of ``data`` to store).  An empty part: not
        modelled (a shared page's bytes past EOF), do not try it."""
        ok = self.page(i)[0] != GONE
        if not self.private and ok:
            room = len(self.file.data) - (self.offset + i * PAGE + start)
            data = data[: max(room, 0)]
        if not self.writable and (not debugger or not self.private):
            ok = False  # a debugger writes through a mapping of the maximum protection
        return ok, data

    def store(self, i: int, start: int, data: bytes) -> None:
        """A store that succeeded."""
        if self.private:
            self.promote(i)
            d, k = self.own[i]
            d[start : start + len(data)] = data
            k[start : start + len(data)] = b"\x01" * len(data)
        else:
            self.file.write(self.offset + i * PAGE + start, data)

    def check_load(self, i: int, start: int, got: bytes) -> str | None:
        """None if ``got`` (loaded at ``start`` of page ``i``) is what the model says, else
        what differs."""
        state, data, known = self.page(i)
        for j, b in enumerate(got):
            if known[start + j] and b != data[start + j]:
                where = "private copy" if state == OWN else "file page"
                return (
                    f"{where}: byte {start + j} is {b:#04x}, the model says {data[start + j]:#04x}"
                )
        return None


@dataclass
class ProcM:
    pid: int
    maps: list[MapM] = field(default_factory=list)
