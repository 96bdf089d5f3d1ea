"""The simulated machine: one ``Uvm`` object holds what the kernel keeps in the globals
``uvm`` and ``uvmexp`` (~ uvm.h, uvm_init.c, uvm_page.c:uvm_page_init).

There is no module-level state (only a test hook, ``machine_created``): tests build many
small machines side by side.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ubcfs.vm.hist import UvmHist
from ubcfs.vm.page import PageHold, VmPage
from ubcfs.vm.param import MIN_PAGES, check_page_size, is_int
from ubcfs.vm.pdpolicy import PdPolicy, make_policy
from ubcfs.vm.physmem import PhysMem
from ubcfs.vm.pmap import Pmap
from ubcfs.vm.stat import Uvmexp
from ubcfs.vm.wbfail import WbFailures

if TYPE_CHECKING:
    from ubcfs.vm.amap import VmAmap
    from ubcfs.vm.map import VmMap
    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.pager import Aio, SwapPager

DEFAULT_PAGE_SIZE = 4096

# Test hook: when set, ``Uvm.__init__`` ends by passing the new machine to it (the test
# suite's after-test audit collects every machine this way).  A module attribute read at each
# construction, so that assigning it works on the compiled build too, where ``Uvm`` is a
# native class whose methods cannot be replaced.
machine_created: Callable[[Uvm], None] | None = None


class Uvm:
    """A simulated machine's VM state (kernel: struct uvm + struct uvmexp).

    Args:
        memory: bytes of simulated physical memory, a multiple of ``page_size``, at least
            64 pages.
        page_size: a power of two from 512 to 65536.
        pv_entries: size of the pmap's pv-entry pool (default: twice the page count), the
            resource whose exhaustion makes ``pmap_enter(..., PMAP_CANFAIL)`` fail.
        populate: back every frame with host memory now (a mounted machine), rather than
            on first touch (tests, metadata measurements).

    Raises:
        ValueError: naming the bad value.

    Attributes:
        physmem: the frame arena.
        pages: one VmPage per frame, indexed by frame number (kernel: vm_physmem[].pgs).
        free_zero, free_unknown: the free lists of known-zero pages (a stack, low frames
            first) and of the others (a FIFO: frames freed in ascending order are handed
            out again in that order, so pages allocated together for a run of a file get
            physically contiguous frames, and a copy moves the run at once).
        pdpolicy: the page-replacement policy, which owns the paging queues
            (``ubcfs.vm.pdpolicy``: ``clock`` or ``clockpro``).
        uvmexp: counters.
        kernel_pmap: the kernel's address space (UBC windows, pager mappings).
        pmaps, objects: registries of live pmaps and objects, for the audit (an object
            leaves with ``obj_destroy``, a user pmap with ``pmap_destroy``).
        kentered: per frame number, how many kenter mappings it has (pmap-private).
        nstale: stale translations (entries of the pmaps' stale lists) in all pmaps.
        pv_free: pv entries left in the pool.
        page_waiters: wanted page -> the Event its waiters sleep on (this busy period).
        owner_tags: busy page -> who busied it and why, under DIAGNOSTIC (kernel: owner_tag).
        page_holds: wired page -> the ``uvm_vslock`` holds among its wirings.
        hist: the event history, or None when it is off.
        free_event: set (and replaced) when pages are freed; ``uvm_wait`` sleeps on it.
        free_sleepers: tasks in ``uvm_wait`` (so that freeing pages with nobody waiting
            costs one test, not a question to trio).
        free_wanted: the largest number of pages a ``uvm_wait`` sleeper needs at once.
        pdaemon_running: a pagedaemon task serves this machine.
        aio: the asynchronous I/O system, when the engine runs one.
        wbfail: write-back failures: backoff, pages waiting for a successful write, and the
            time an allocation may wait for memory meanwhile (``ubcfs.vm.wbfail``).
        wait_hook: for tests, None or a callable that ``uvm_wait`` calls as it returns, with
            its ``why`` and ``since`` arguments and the errno it returns.
    """

    def __init__(
        self,
        memory: object,
        page_size: object = DEFAULT_PAGE_SIZE,
        pv_entries: object = None,
        populate: bool = False,
        pdpolicy: str = "clock",
    ) -> None:
        # The sizes are typed ``object`` and checked here, so that a bool, float or str gets
        # the ValueError below in the compiled build too (not a TypeError at the call, nor
        # True taken for 1).
        shift = check_page_size(page_size)
        page_size = 1 << shift  # the same value, as an int
        if not is_int(memory) or memory <= 0:
            raise ValueError(f"memory {memory!r} is not a positive number of bytes")
        if memory % page_size:
            raise ValueError(f"memory {memory} is not a multiple of the page size {page_size}")
        npages = memory // page_size
        if npages < MIN_PAGES:
            raise ValueError(
                f"memory {memory} holds {npages} pages of {page_size} bytes;"
                f" at least {MIN_PAGES} are needed"
            )
        if pv_entries is None:
            pv_entries = 2 * npages
        if not is_int(pv_entries) or pv_entries < 0:
            raise ValueError(f"pv_entries {pv_entries!r} is not a count")
        self.page_size = page_size
        self.page_shift = shift
        self.page_mask = page_size - 1
        self.physmem = PhysMem(memory, page_size, populate)
        self.pages: list[VmPage] = [VmPage(i << shift) for i in range(npages)]
        # Pop from the end: reversed so that low frames are handed out first.
        self.free_zero: list[VmPage] = self.pages[::-1]
        self.free_unknown: deque[VmPage] = deque()
        self.uvmexp = Uvmexp(npages=npages, free=npages, zeropages=npages)
        self.pdpolicy: PdPolicy = make_policy(pdpolicy, self)
        self.pv_total = pv_entries
        self.pv_free = pv_entries
        self.kentered: list[int] = [0] * npages
        self.nstale = 0
        # Registered and unregistered explicitly (pmap_create/pmap_destroy, UvmObject()/
        # obj_destroy), not in WeakSets: Pmap and UvmObject are native classes in the
        # compiled build, which take no weak references.
        self.pmaps: set[Pmap] = set()
        self.objects: set[UvmObject] = set()
        self.amaps: set[VmAmap] = set()  # live amaps (amap_alloc / amap_wipeout), for audits
        self.maps: set[VmMap] = set()  # process address spaces (uvmspace_alloc / _free)
        self.kernel_pmap = Pmap(self, "kernel", is_kernel=True)
        self.pmaps.add(self.kernel_pmap)
        self.page_waiters: dict[VmPage, trio.Event] = {}
        self.owner_tags: dict[VmPage, str] = {}
        self.page_holds: dict[VmPage, list[PageHold]] = {}  # wired page -> its vslock holds
        self.hist: UvmHist | None = UvmHist()  # the event history (ubcfs.vm.hist)
        self.swap: SwapPager | None = None
        self._pdaemon_wakeup: Callable[[], None] | None = None
        self.pdaemon_running = False
        self.free_event = trio.Event()
        self.free_sleepers = 0
        self.free_wanted = 0
        self.aio: Aio | None = None
        self.wbfail = WbFailures()
        self.wait_hook: Callable[[str, float | None, int], None] | None = None
        self.tune()
        if machine_created is not None:
            machine_created(self)

    # --- pagedaemon targets and wake-ups ------------------------------------------------

    def tune(self) -> None:
        """Compute the paging targets from the memory size (kernel: uvmpd_tune).

        freemin = npages/20, clamped to 16 KiB..256 KiB worth of pages and above the kernel
        reserve; freetarg = freemin*4/3; wiredmax = npages/3.
        """
        exp = self.uvmexp
        ps = self.page_size
        freemin = exp.npages // 20
        freemin = max(freemin, (16 * 1024) // ps)
        freemin = min(freemin, (256 * 1024) // ps)
        freemin = max(freemin, exp.reserve_kernel + 1)
        exp.freemin = freemin
        exp.freetarg = max((freemin * 4) // 3, freemin + 1)
        exp.wiredmax = exp.npages // 3
        self.pdpolicy.tune()

    def set_pdaemon_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Register the pagedaemon's wake-up (``ubcfs.vm.pdaemon`` does this)."""
        self._pdaemon_wakeup = wakeup

    def kick_pdaemon(self) -> None:
        """Wake the pagedaemon if one runs (kernel: UVM_KICK_PDAEMON / wakeup(&uvm.pagedaemon))."""
        self.uvmexp.pdkicks += 1
        if self._pdaemon_wakeup is not None:
            self._pdaemon_wakeup()

    def free_target(self) -> int:
        """Free pages the pagedaemon aims for: ``freetarg``, or more when a sleeper in
        ``uvm_wait`` needs more at once."""
        exp = self.uvmexp
        return max(exp.freetarg, exp.reserve_kernel + self.free_wanted + 1)

    def free_short(self) -> bool:
        """Is memory short?  ``free + paging`` below the target -- or, while somebody sleeps
        in ``uvm_wait``, too few pages *actually free* for that sleeper: pages still under
        pageout will be free only when their writes complete."""
        exp = self.uvmexp
        if exp.free + exp.paging < self.free_target():
            return True
        return bool(self.free_wanted) and exp.free <= exp.reserve_kernel + self.free_wanted

    def free_plenty(self) -> bool:
        """May the inactive scan stop?  ``free + paging`` has reached four times the target
        (uvm_pdaemon.c 1.39: the scan frees a batch, so that the daemon is not woken by
        every allocation below the target), and no ``uvm_wait`` sleeper still lacks pages
        actually free."""
        exp = self.uvmexp
        if exp.free + exp.paging < 4 * self.free_target():
            return False
        return not (self.free_wanted and exp.free <= exp.reserve_kernel + self.free_wanted)

    def max_cluster_pages(self) -> int:
        """The most pages one request may hold busy at once, so that a few concurrent
        requests can never pin all of memory (the pagedaemon needs the rest)."""
        exp = self.uvmexp
        return max(1, (exp.npages - exp.freetarg) // 4)

    def pages_freed(self) -> None:
        """Wake everyone sleeping in ``uvm_wait`` (kernel: wakeup(&uvmexp.free))."""
        if self.uvmexp.free > self.uvmexp.reserve_kernel + self.free_wanted:
            self.free_wanted = 0
        if self.free_sleepers:
            ev = self.free_event
            self.free_event = trio.Event()
            ev.set()

    # --- swap summary for reports ---------------------------------------------------------

    def swap_total(self) -> int:
        return self.swap.nslots if self.swap is not None else 0

    def swap_used(self) -> int:
        return self.swap.inuse if self.swap is not None else 0

    def swap_bad(self) -> int:
        return self.swap.nbad if self.swap is not None else 0

    # --- helpers ------------------------------------------------------------------------

    def phys_to_page(self, pa: int) -> VmPage:
        """The page record of a frame (kernel: PHYS_TO_VM_PAGE)."""
        return self.pages[pa >> self.page_shift]

    def frame(self, pg: VmPage) -> memoryview:
        """The page's frame as a writable memoryview."""
        return self.physmem.frame(pg.phys_addr)

    def close(self) -> None:
        """Release the frame arena."""
        self.physmem.close()

    def __repr__(self) -> str:
        e = self.uvmexp
        return (
            f"<Uvm {e.npages}x{self.page_size}B free={e.free} active={e.active}"
            f" inactive={e.inactive} wired={e.wired}>"
        )
