"""Simulated processes (~ the system-call halves of uvm_mmap.c: sys_mmap, sys_munmap,
sys_mprotect, sys_mlock, sys_munlock; kern_exit.c's uvmspace_free; the CPU's loads and
stores through the process's pmap).

A ``Proc`` is an address space (``VmMap`` with its own pmap) and a pid.  Its loads and
stores go through its pmap as the CPU's would: a missing or too weak translation is a
``PageFault``, resolved by ``uvm_fault`` and the access retried; a fault that cannot be
resolved is the process's SIGSEGV (EFAULT, EACCES) or SIGBUS (EINVAL: past the end of the
mapped file), returned as an errno.

Arguments come from outside (the control channel), so every call validates them and
answers EINVAL for an unaligned address, a zero, unaligned or overflowing length, or a
range outside the user address space, and never panics on them.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ubcfs.vm.fault import (
    uvm_fault,
    uvm_map_pageable,
    uvm_vslock,
    uvm_vsunlock,
)
from ubcfs.vm.map import (
    VM_MAX_ADDRESS,
    VM_MIN_ADDRESS,
    Inherit,
    ObjRef,
    VmMap,
    range_is_mapped,
    uvm_map,
    uvm_map_extract,
    uvm_map_protect,
    uvm_unmap,
    uvmspace_alloc,
    uvmspace_fork,
    uvmspace_free,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import PageFault, load, store

if TYPE_CHECKING:
    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.uvm import Uvm

_P_READ = Prot.READ.value
_P_WRITE = Prot.WRITE.value

# The largest mapping (an amap keeps per-slot counts once clipped: 8 bytes a page).
MAX_MAP_SIZE = 1 << 32

# A fault that keeps being resolved and keeps faulting again (the pagedaemon taking the page
# between the fault and the retried access, every time) gives up after this many rounds.
MAX_REFAULTS = 1000


class Proc:
    """A simulated process (kernel: struct proc with its vmspace).

    Attributes:
        pid: its process id.
        vm: its address space.
        alive: False once it has exited.
    """

    __slots__ = ("alive", "pid", "vm")

    def __init__(self, pid: int, vm: VmMap) -> None:
        self.pid = pid
        self.vm = vm
        self.alive = True

    def __repr__(self) -> str:
        return f"<Proc {self.pid}{'' if self.alive else ' exited'} {self.vm!r}>"


class ProcTable:
    """The processes of one machine, by pid."""

    def __init__(self, uvm: Uvm) -> None:
        self.uvm = uvm
        self.procs: dict[int, Proc] = {}
        self._next = 1
        # The kernel's map for uvm_io's temporary mappings (its own pmap here, apart from
        # the UBC windows' kernel pmap).
        self.kernel_map = uvmspace_alloc(uvm, "kernel_map")

    def proc_new(self) -> Proc:
        """A new process with an empty address space."""
        pid = self._next
        self._next += 1
        proc = Proc(pid, uvmspace_alloc(self.uvm, f"proc{pid}"))
        self.procs[pid] = proc
        return proc

    async def fork(self, parent: Proc) -> tuple[int, Proc | None]:
        """A child with a copy of ``parent``'s address space by inheritance (kernel:
        fork1 -> uvmspace_fork).  Returns (0, child) or (errno, None); a failed fork
        leaves no child behind.  => may sleep."""
        child = self.proc_new()
        err = await uvmspace_fork(parent.vm, child.vm)
        if err:
            await self.exit(child)
            return err, None
        return 0, child

    async def ptrace_write(self, proc: Proc, va: int, data: bytes) -> int:
        """A debugger writes ``data`` into ``proc`` at ``va`` (kernel: process_domem ->
        uvm_io): the range is extracted into a kernel map (private entries' amaps shared
        with it), the kernel stores through that mapping -- which may be read-only in the
        process: the kernel's mapping has the maximum protection -- and the extraction is
        removed.  Returns 0 or an errno.  => may sleep."""
        uvm = self.uvm
        if not data or va < 0 or va + len(data) > VM_MAX_ADDRESS:
            return errno.EINVAL
        start = va & ~uvm.page_mask
        end = _round(uvm, va + len(data))
        kmap = self.kernel_map
        err, kva = await uvm_map_extract(proc.vm, start, end, kmap)
        if err:
            return err
        try:
            for _ in range(MAX_REFAULTS):
                try:
                    store(kmap.pmap, kva + (va - start), data)
                    return 0
                except PageFault as pf:
                    err = await uvm_fault(kmap, pf.va, pf.access)
                    if err:
                        return err
            return errno.EAGAIN
        finally:
            await uvm_unmap(kmap, kva, kva + (end - start))

    def get(self, pid: int) -> Proc | None:
        """The live process ``pid``, or None."""
        return self.procs.get(pid)

    async def exit(self, proc: Proc) -> None:
        """The process exits: its whole address space goes (wired entries are unwired,
        skipping what truncation took), then its pid.  => may sleep."""
        if not proc.alive:
            return
        proc.alive = False
        await uvmspace_free(proc.vm)
        self.procs.pop(proc.pid, None)

    async def exit_all(self) -> None:
        """Every process exits (the mount goes), and the kernel map is torn down."""
        for proc in list(self.procs.values()):
            await self.exit(proc)
        await uvmspace_free(self.kernel_map)


def check_range(uvm: Uvm, va: int, length: int) -> int:
    """0 for a valid user range [va, va + length), else EINVAL."""
    if va & uvm.page_mask or length <= 0 or va < VM_MIN_ADDRESS:
        return errno.EINVAL
    if va + length > VM_MAX_ADDRESS:
        return errno.EINVAL
    return 0


def _round(uvm: Uvm, length: int) -> int:
    return (length + uvm.page_mask) & ~uvm.page_mask


def sys_mmap(
    proc: Proc,
    length: int,
    obj: UvmObject | None,
    offset: int,
    prot: int,
    private: bool,
    objref: ObjRef | None = None,
) -> tuple[int, int]:
    """Map ``length`` bytes of ``obj`` from ``offset`` (anonymous memory when None).

    Returns (0, address) or (errno, 0): EINVAL for a bad length, offset or protection,
    ENOMEM when the address space is full or ``length`` exceeds ``MAX_MAP_SIZE``.  A
    shared mapping may be written only if ``prot`` says so; a private one always may be
    made writable (its maximum protection includes write: its writes go to anons).
    => never sleeps.
    """
    uvm = proc.vm.uvm
    if length <= 0 or offset < 0 or offset & uvm.page_mask or offset > VM_MAX_ADDRESS:
        return errno.EINVAL, 0
    if length > MAX_MAP_SIZE:
        return errno.ENOMEM, 0
    if prot & ~Prot.ALL.value or not prot & _P_READ:
        return errno.EINVAL, 0
    size = _round(uvm, length)
    maxprot = Prot.ALL.value if private or obj is None else prot | Prot.EXECUTE.value
    inherit = Inherit.COPY if private else Inherit.SHARE
    va = uvm_map(proc.vm, size, obj, offset, prot, maxprot, inherit, private, objref)
    if va < 0:
        return errno.ENOMEM, 0
    return 0, va


async def sys_munmap(proc: Proc, va: int, length: int) -> int:
    """Remove the mappings of [va, va + length); holes are fine.  => may sleep."""
    err, end = _user_range(proc, va, length)
    if not err:
        await uvm_unmap(proc.vm, va, end)
    return err


def sys_mprotect(proc: Proc, va: int, length: int, prot: int) -> int:
    """Change the protection of [va, va + length).  => never sleeps."""
    err, end = _user_range(proc, va, length)
    if err or prot & ~Prot.ALL.value:
        return err or errno.EINVAL
    return uvm_map_protect(proc.vm, va, end, prot)


def _user_range(proc: Proc, va: int, length: int) -> tuple[int, int]:
    """(0, the page-rounded end) for a valid user range, or (EINVAL, 0)."""
    uvm = proc.vm.uvm
    err = check_range(uvm, va, length)
    return (err, 0) if err else (0, va + _round(uvm, length))


def _mapped_range(proc: Proc, va: int, length: int) -> tuple[int, int]:
    """``_user_range``, and ENOMEM unless all of it is mapped."""
    err, end = _user_range(proc, va, length)
    if not err:
        with proc.vm.lock:
            if not range_is_mapped(proc.vm, va, end):
                err = errno.ENOMEM
    return err, end


async def sys_mlock(proc: Proc, va: int, length: int) -> int:
    """Wire [va, va + length) (ENOMEM: not all mapped).  => may sleep."""
    err, end = _user_range(proc, va, length)
    return err or await uvm_map_pageable(proc.vm, va, end, True)


async def sys_munlock(proc: Proc, va: int, length: int) -> int:
    """Unwire [va, va + length).  => may sleep (never does today)."""
    err, end = _user_range(proc, va, length)
    return err or await uvm_map_pageable(proc.vm, va, end, False)


async def vslock(proc: Proc, va: int, length: int) -> int:
    """Wire a buffer for raw I/O (physio's uvm_vslock).  => may sleep."""
    err, end = _mapped_range(proc, va, length)
    return err or await uvm_vslock(proc.vm, va, end, _P_READ | _P_WRITE)


def vsunlock(proc: Proc, va: int, length: int) -> int:
    """Undo ``vslock`` of the same range (ENOMEM: not all mapped; EINVAL: some page of
    it is not vslocked).  => never sleeps."""
    err, end = _mapped_range(proc, va, length)
    return err or uvm_vsunlock(proc.vm, va, end)


async def proc_load(proc: Proc, va: int, length: int) -> tuple[int, bytes]:
    """A load of ``length`` bytes at ``va`` by the process: (0, data) or (errno, b"")."""
    if length <= 0 or va < 0 or va + length > VM_MAX_ADDRESS:
        return errno.EINVAL, b""
    for _ in range(MAX_REFAULTS):
        try:
            return 0, load(proc.vm.pmap, va, length)
        except PageFault as pf:
            err = await uvm_fault(proc.vm, pf.va, pf.access)
            if err:
                return err, b""
    return errno.EAGAIN, b""


async def proc_store(proc: Proc, va: int, data: bytes) -> int:
    """A store of ``data`` at ``va`` by the process; 0 or an errno (then the pages before
    the faulting one may have been written, as a real store loop leaves them)."""
    if not data or va < 0 or va + len(data) > VM_MAX_ADDRESS:
        return errno.EINVAL
    for _ in range(MAX_REFAULTS):
        try:
            store(proc.vm.pmap, va, data)
            return 0
        except PageFault as pf:
            err = await uvm_fault(proc.vm, pf.va, pf.access)
            if err:
                return err
    return errno.EAGAIN
