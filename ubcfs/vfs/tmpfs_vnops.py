"""tmpfs file data: a regular node's aobj and its vnode (~ sys/fs/tmpfs: the data half of
tmpfs_alloc_node/tmpfs_free_node in tmpfs_subr.c, and tmpfs_vnops.c's use of the node's
aobj for read, write and truncate).

Each regular ``TmpfsNode`` gets, at its first open (or truncate), a vnode whose object is a
fresh aobj (``Engine.new_anon_vnode``): reads and writes go through the same UBC windows
and ``vnops`` paths as a backing file's, the aobj's pager fills the pages (zeroes, or a
swap-in), and the pagedaemon pages them out to swap.  The vnode is kept in ``node.data``
for the node's whole life -- kernel tmpfs recycles vnodes and keeps the data in the node's
aobj; here the aobj lives in its vnode, so the vnode is the node's data -- and is never in
the vnode cache: nothing is written back, so there is nothing for a reclaim to do, and an
evicted FUSE inode finds its data again in the node.

Capacity (kernel: tmpfs's tm_mem_limit).  File data may fill memory + swap less a headroom
(``headroom``): the pagedaemon's free target, the kernel reserve, the last 1% of swap (which
the pagedaemon leaves alone) and ``ROOM_PAGES``.  A
write that would go past it fails with ENOSPC before it starts (``reserve``), and so does a
write fault that would fill holes -- a process's store through a mapping, a window's write
fault -- through the aobj's allocation hook (``Aobj.alloc``, kernel GOP_ALLOC): the store
gets ENOSPC (its SIGBUS) at the fault, and the page is not taken.  Without the
headroom a full tmpfs could not even be read: every frame would hold a dirty page that has
no slot to go to, and every slot a page that needs a frame to come back.  With it, some
slot is always free for a pageout, so a swap-in always gets its frame.  Concurrent writes
check one after the other; the write faults of each check again, so together they pass
the limit by at most a cluster of pages each; the aobj's own ENOSPC (no slot and nothing in
flight) is the hard stop behind it.

A node is destroyed (``TmpfsNamespace.on_destroy``) when its last name and last use are
gone: no handle, lookup or request holds it, so nobody reads or writes its vnode any more.
Its pages and slots are freed there and then unless some page is busy (a swap-out in
flight); then the reaper task frees them once the I/O is done (kernel: uao_detach sleeping
on busy pages).  At unmount every node is destroyed and every slot freed: nothing of a
tmpfs outlives it.

=> ``vget``, ``vrele`` and ``destroyed`` never sleep (namespace operations must not).
"""

from __future__ import annotations

import errno
import functools
import logging
from typing import TYPE_CHECKING, Final

import trio

from ubcfs.vfs import vnops
from ubcfs.vfs.vcache import VS

if TYPE_CHECKING:
    from ubcfs.vfs.engine import Engine
    from ubcfs.vfs.tmpfs import TmpfsNode
    from ubcfs.vfs.vnode import Vnode

log = logging.getLogger(__name__)

ROOM_PAGES: Final = 16  # headroom beyond the free target and the kernel reserve


class TmpfsFiles:
    """The vnodes of one tmpfs mount's regular files.

    Attributes:
        vnodes: node number -> the vnode of every regular node that has one.
        doomed: vnodes of destroyed nodes whose pages could not be freed at once.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.vnodes: dict[int, Vnode] = {}
        self.doomed: list[Vnode] = []
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.created = 0
        self.destroyed_inline = 0
        self.destroyed_later = 0
        self.refused = 0  # writes refused with ENOSPC: past the limit

    # --- vnodes -------------------------------------------------------------------------

    def cached(self, node: TmpfsNode) -> Vnode | None:
        """The vnode of ``node`` if it has one (no use taken).  => never sleeps."""
        return self.vnodes.get(node.ino)

    def vget(self, node: TmpfsNode) -> Vnode:
        """The vnode of a regular node with one more use, made on first use.
        => never sleeps."""
        vp = self.vnodes.get(node.ino)
        if vp is None:
            vp = self.engine.new_anon_vnode(node.label, node.key, node.mtime_ns, node.ctime_ns)
            vp.size = vp.writesize = node.size  # 0, unless a node is given data later on
            vnops.vnode_aobj(vp).alloc = functools.partial(self.reserve, vp)
            node.data = vp
            self.vnodes[node.ino] = vp
            self.created += 1
        vp.usecount += 1
        return vp

    def vrele(self, vp: Vnode) -> None:
        """Drop a use; the vnode stays with its node.  => never sleeps."""
        if vp.usecount <= 0:
            raise ValueError(f"release of unused vnode {vp.name}")
        vp.usecount -= 1

    # --- destruction --------------------------------------------------------------------

    def destroyed(self, node: TmpfsNode) -> None:
        """``TmpfsNamespace.on_destroy``: the node is gone; free its data.
        => never sleeps."""
        vp = self.vnodes.pop(node.ino, None)
        if vp is None:
            return
        if vp.usecount:
            log.error("%s: destroyed with %d uses; freed later", vp.name, vp.usecount)
        vp.set_state(VS.RECLAIMING)
        aobj = vnops.vnode_aobj(vp)
        vp.size = vp.writesize = 0
        vp.uobj.generation += 1
        self.engine.ubc.purge(vp.uobj)  # idle windows only: a window in use holds a use
        if not vp.usecount and aobj.discard_now():
            vp.set_state(VS.RECLAIMED)
            self.destroyed_inline += 1
            self.engine.uvm.pages_freed()
            return
        self.doomed.append(vp)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reaper task: free the data of destroyed nodes that had busy pages."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self._reap()

    async def _reap(self) -> None:
        while self.doomed:
            vp = self.doomed[0]
            await vnops.vop_discard(self.engine.ubc, vp)
            await vnops.vnode_aobj(vp).destroy()
            self.doomed.remove(vp)
            vp.set_state(VS.RECLAIMED)
            self.destroyed_later += 1
        self._idle.set()

    async def drain(self) -> None:
        """Wait until the data of every destroyed node is freed (unmount, tests).
        => may sleep; the reaper task must be running."""
        if self.doomed:
            self._wake.set()
            await self._idle.wait()

    # --- reporting ----------------------------------------------------------------------

    # --- capacity -----------------------------------------------------------------------

    def headroom(self) -> int:
        """Pages of memory + swap that file data may not take (module docstring); also the
        1% of swap that the pagedaemon never fills (swap counts as full at 99%,
        ``Swap.full``)."""
        uvm = self.engine.uvm
        exp = uvm.uvmexp
        return exp.freetarg + exp.reserve_kernel + ROOM_PAGES + uvm.swap_total() // 100 + 1

    def limit(self) -> int:
        """The most pages file data may take: memory + good swap slots - headroom."""
        uvm = self.engine.uvm
        return max(0, uvm.uvmexp.npages + uvm.swap_total() - uvm.swap_bad() - self.headroom())

    def used(self) -> int:
        """Pages file data takes: resident anonymous pages and those only in swap."""
        exp = self.engine.uvm.uvmexp
        return exp.anonpages + exp.swpgonly

    def capacity(self) -> tuple[int, int]:
        """(total, free) bytes for file data, for statfs."""
        ps = self.engine.uvm.page_size
        total = self.limit()
        return total * ps, max(0, total - self.used()) * ps

    def reserve(self, vp: Vnode, offset: int, length: int) -> int:
        """May a write of ``length`` bytes at ``offset`` go ahead?  0, or ENOSPC when the
        pages it would add (neither resident nor in swap) do not fit.  Costs a look-up per
        page of the write when room is short.  Asked by the mount's write before it starts
        and by the file's aobj (``Aobj.alloc``) for every write fault: a store through a
        mapping into a hole.  => never sleeps."""
        if length <= 0 or offset < 0:
            return 0
        uvm = self.engine.uvm
        shift = uvm.page_shift
        pages = vp.uobj.pages
        aobj = vnops.vnode_aobj(vp)
        first, last = offset >> shift, (offset + length - 1) >> shift
        room = self.limit() - self.used()
        if last - first + 1 <= room:
            return 0  # fits even if every page is new
        new = 0
        for idx in range(first, last + 1):
            if (idx << shift) not in pages and not aobj.find_swslot(idx):
                new += 1
                if new > room:
                    self.refused += 1
                    return errno.ENOSPC
        return 0

    def statistics(self) -> dict[str, int]:
        return {
            "files": len(self.vnodes),
            "doomed": len(self.doomed),
            "created": self.created,
            "destroyed_inline": self.destroyed_inline,
            "destroyed_later": self.destroyed_later,
            "refused": self.refused,
            "limit_pages": self.limit(),
            "used_pages": self.used(),
        }

    def audit(self, nodes: dict[int, TmpfsNode], uses: dict[int, int]) -> list[str]:
        """Violations of the data layer's rules: every vnode belongs to a live regular
        node that holds it, and has at least as many uses as handles (``uses``: node
        number -> handles open; a truncate without a handle holds one more)."""
        out: list[str] = []
        for ino, vp in self.vnodes.items():
            node = nodes.get(ino)
            where = f"tmpfs vnode {vp.name}"
            if node is None:
                out.append(f"{where}: its node {ino} does not exist")
                continue
            if node.data is not vp:
                out.append(f"{where}: its node does not hold it")
            if vp.vstate is not VS.LOADED:
                out.append(f"{where}: {vp.vstate.value}")
            if vp.usecount < uses.get(ino, 0):
                out.append(f"{where}: usecount {vp.usecount}, handles {uses.get(ino, 0)}")
            if vp.uobj not in self.engine.uvm.objects:
                out.append(f"{where}: its object is not registered with the machine")
            if vp.numoutput:
                out.append(f"{where}: {vp.numoutput} writes in flight (tmpfs writes none)")
        for ino, node in nodes.items():
            if node.data is not None and self.vnodes.get(ino) is not node.data:
                out.append(f"tmpfs node {node.label}: holds a vnode the data layer lost")
        return out
