"""The vnode cache (~ sys/kern/vfs_vnode.c: vcache_get, vrelel, vcache_reclaim, vdrain).

Theory of operation
-------------------
One ``Vnode`` per backing inode, keyed by the backing file's identity ``(st_dev, st_ino)``,
so hard links and repeated opens share one page cache.  A vnode outlives the kernel's FUSE
inode: a FUSE forget drops only the kernel's reference to the *name-level* inode
(``ubcfs.vfs.backing.Inode``); the vnode stays cached, with its pages, until the cache is
over ``maxvnodes`` (then the drain task reclaims the least recently used unreferenced
vnodes) or the file is gone for good (unlinked, and nobody can reach it any more).  Pages of
cached vnodes are ordinary pages: the pagedaemon reclaims them like any other.

References (kernel: v_usecount).  Open file handles and operations in flight hold a use;
a vnode with uses is never reclaimed.  The kernel's knowledge of an inode is *not* a use
(that would pin a descriptor and a vnode per cached inode): ``is_held(key)``, supplied by
the layer above, says whether a name-level inode still exists for the key, which matters
only to decide whether an unlinked file can still be reached.

States (kernel: enum vnode_state), and what each allows:

    LOADING     being built.  Here loading never sleeps (the backing descriptor is opened
                inline), so no other task can observe this state; the audit says so.
    LOADED      usable.  usecount > 0 (NetBSD's old VS_ACTIVE), or 0 and on the free list
                in LRU order, where ``vget`` takes it back.
    BLOCKED     a reclaim is writing the vnode's dirty pages back.  The vnode is off the free
                list; ``vget`` waits.  If the write-back fails the vnode returns to LOADED
                (its pages stay dirty; nothing is lost) and the drain backs off.
    RECLAIMING  everything was written; its pages are being freed and its windows purged.
    RECLAIMED   dead: out of the table, no pages, descriptor closed.  Nobody may use it;
                a ``vget`` that waited on it looks the key up again and loads a fresh vnode.

Transitions: LOADING -> LOADED (vget); LOADED -> BLOCKED (vrecycle, usecount 0) ->
RECLAIMING -> RECLAIMED, or BLOCKED/RECLAIMING -> LOADED when a write fails.

Every ``await`` here is a place where another request runs.  ``vget`` re-examines the
table after each wait; ``vrecycle`` holds the vnode in BLOCKED/RECLAIMING across its awaits,
so no new use can appear, and the pagedaemon and I/O completions only touch pages, which
PG_BUSY protects.  ``vrele`` and ``forgotten`` never sleep.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio
from cachetools import LRUCache

from ubcfs.vfs import vnops
from ubcfs.vm.object import obj_destroy

if TYPE_CHECKING:
    from ubcfs.vfs.vnode import Vnode
    from ubcfs.vm.ubc import Ubc
    from ubcfs.vm.uvm import Uvm

log = logging.getLogger(__name__)

Key = tuple[int, int]

DRAIN_TARGET: Final = 0.9  # the drain reclaims until the cache is at 90% of maxvnodes
DRAIN_PARALLEL: Final = 8  # reclaims the drain runs at once
RETRY_MIN: Final = 0.5  # seconds before a vnode whose reclaim failed is tried again
RETRY_MAX: Final = 30.0
MIN_MAXVNODES: Final = 16
CTIME_MEMORY: Final = 1 << 16  # reclaimed vnodes whose ctime is remembered


class VS(enum.Enum):
    """Vnode states (kernel: VS_*)."""

    LOADING = "loading"
    LOADED = "loaded"
    BLOCKED = "blocked"
    RECLAIMING = "reclaiming"
    RECLAIMED = "reclaimed"


def default_maxvnodes(memory: int, fd_budget: int) -> int:
    """A vnode cache size from memory (one vnode per 16 KiB of memory, as NetBSD scales
    desiredvnodes with memory), capped by the descriptors available (each cached vnode holds
    one data descriptor)."""
    return max(MIN_MAXVNODES, min(memory // 16384, fd_budget))


class Vcache:
    """The vnode table, the free list and the drain task of one engine.

    Args:
        uvm: the machine.
        ubc: the window pool (reclaim purges a vnode's windows).
        maxvnodes: the cache size the drain keeps to (kernel: desiredvnodes).

    Attributes:
        table: key -> vnode, every vnode not RECLAIMED.
        free: unreferenced LOADED vnodes, least recently used first (kernel: vnode_free_list).
        doomed: unreferenced vnodes of files nobody can reach again, to discard.
        is_held: ``is_held(key)`` -- does the layer above still know the file?
    """

    def __init__(self, uvm: Uvm, ubc: Ubc, maxvnodes: int) -> None:
        self.uvm = uvm
        self.ubc = ubc
        self.maxvnodes = max(MIN_MAXVNODES, maxvnodes)
        self.table: dict[Key, Vnode] = {}
        self.free: OrderedDict[Key, Vnode] = OrderedDict()
        self.doomed: OrderedDict[Key, Vnode] = OrderedDict()
        self.is_held: Callable[[Key], bool] = lambda key: False
        # key -> (the backing ctime a reclaim left, the ctime programs saw): write-back and
        # the mtime put back at reclaim move the backing ctime, programs' must not move.
        self.ctimes: LRUCache[Key, tuple[int, int]] = LRUCache(maxsize=CTIME_MEMORY)
        self._wake = trio.Event()
        self._room = trio.Event()  # set whenever a reclaim ends
        self.reclaiming = 0  # reclaims in progress
        self.running = False
        # Counters for ubcfs stat.
        self.loads = 0
        self.hits = 0
        self.reclaims = 0
        self.discards = 0
        self.reclaim_failures = 0

    # --- references ---------------------------------------------------------------------

    async def vget(self, key: Key, load: Callable[[], Vnode]) -> Vnode:
        """Return the vnode of ``key`` with one more use, loading it with ``load()`` when it
        is not cached (kernel: vcache_get + vget).

        => may sleep: a vnode being reclaimed is waited for, then looked up again.
        => ``load`` runs only when no vnode of ``key`` exists; it must not sleep, and it
           owns whatever it opens (a descriptor) until it returns the vnode.
        """
        while True:
            vp = self.table.get(key)
            if vp is None:
                if self._must_wait_for_room():
                    # Back-pressure (kernel: vdrain's callers): loads may outrun the drain,
                    # whose reclaims write back, and each vnode holds a descriptor.
                    self._kick()
                    await self._room.wait()
                    continue  # look the key up again: it may have been loaded meanwhile
                vp = load()
                assert vp.key == key, f"loaded {vp.key} for {key}"
                vp.vstate = VS.LOADED
                vp.usecount = 1
                self.table[key] = vp
                self.loads += 1
                self._check_size()
                return vp
            if vp.vstate is VS.LOADED:
                self.vref(vp)
                self.hits += 1
                return vp
            # BLOCKED or RECLAIMING: wait until it is LOADED again or gone.
            await vp.state_changed().wait()

    def vref(self, vp: Vnode) -> None:
        """One more use of a LOADED vnode (kernel: vref).  => never sleeps."""
        assert vp.vstate is VS.LOADED, f"vref of a {vp.vstate.value} vnode {vp.name}"
        if vp.usecount == 0:
            self.free.pop(vp.key, None)
            self.doomed.pop(vp.key, None)
        vp.usecount += 1

    def vrele(self, vp: Vnode) -> None:
        """Drop a use (kernel: vrele).  The last one puts the vnode on the free list, or
        dooms it when its file can no longer be reached.  => never sleeps."""
        if vp.usecount <= 0:
            raise ValueError(f"release of unused vnode {vp.name}")
        vp.usecount -= 1
        if vp.usecount == 0 and vp.vstate is VS.LOADED:
            self.free[vp.key] = vp
            self._inactive(vp)

    def forgotten(self, key: Key) -> None:
        """The layer above dropped its last reference to ``key`` (a FUSE forget).
        => never sleeps."""
        vp = self.table.get(key)
        if vp is not None and vp.usecount == 0 and vp.vstate is VS.LOADED:
            self._inactive(vp)

    def _inactive(self, vp: Vnode) -> None:
        """An unreferenced vnode (kernel: VOP_INACTIVE): unreachable files are doomed.
        => never sleeps."""
        if not self.is_held(vp.key) and _unlinked(vp) and not self._discard_now(vp):
            self.doomed[vp.key] = vp
            self._kick()
        self._check_size()

    def _discard_now(self, vp: Vnode) -> bool:
        """Discard a doomed vnode right here, as the kernel's vrelel reclaims in the thread
        that dropped the last reference, when that needs no sleep: no pages, no write in
        flight, nobody in or waiting for its lock.  Otherwise (False) the drain does it.
        Most unlinked files are in this case (removed after their pages were written and
        freed, or never written): each would cost the drain a wake-up and a task.
        => never sleeps."""
        lk = vp.lock
        if vp.uobj.pages or vp.numoutput or lk.readers or lk.writer or lk.lot:
            return False
        self.free.pop(vp.key, None)
        vp.size = vp.writesize = 0
        vp.uobj.generation += 1
        self.ubc.purge(vp.uobj)  # idle windows only; a window in use holds a vnode use
        self._destroy(vp, discard=True)
        self._made_room()
        return True

    def _destroy(self, vp: Vnode, discard: bool) -> None:
        """The end of every reclaim, its pages gone: out of the table, object destroyed,
        descriptor closed, RECLAIMED.  A written-back file's ctimes are remembered (see
        ``visible_ctime``); a discarded one is gone.  => never sleeps."""
        del self.table[vp.key]
        if not discard:
            try:
                self.ctimes[vp.key] = (os.fstat(vp.fd).st_ctime_ns, vp.ctime_ns)
            except OSError:
                self.ctimes.pop(vp.key, None)
        obj_destroy(vp.uobj)
        vp.io.forget(vp.fd)
        try:
            os.close(vp.fd)
        except OSError as e:
            log.warning("%s: closing the backing descriptor: %s", vp.name, e)
        vp.fd = -1
        if discard:
            self.discards += 1
        else:
            self.reclaims += 1
        vp.set_state(VS.RECLAIMED)

    def _made_room(self) -> None:
        """A reclaim ended (done or failed): wake the loads waiting for room."""
        self._room.set()
        self._room = trio.Event()

    def lookup(self, key: Key) -> Vnode | None:
        """The cached vnode of ``key`` in any state but RECLAIMED, without a use (for
        attributes: a file being reclaimed still has its size in the vnode).
        => never sleeps; the vnode may be reclaimed at the next ``await``."""
        return self.table.get(key)

    def visible_ctime(self, key: Key, backing_ctime_ns: int) -> int:
        """The ctime to report for a file without a cached vnode: the one programs saw
        before its vnode was reclaimed, as long as nothing changed the file since."""
        got = self.ctimes.get(key)
        if got is not None and got[0] == backing_ctime_ns:
            return got[1]
        return backing_ctime_ns

    # --- reclaiming ---------------------------------------------------------------------

    async def vrecycle(self, vp: Vnode, discard: bool = False) -> int:
        """Reclaim an unreferenced LOADED vnode: write its pages back (or, with
        ``discard``, throw them away), free them, close its descriptor (kernel:
        vrecycle/vcache_reclaim).  Returns the write-back error; the vnode is then LOADED
        again, still cached and unreferenced, with its dirty pages.

        => may sleep; new users wait meanwhile (``vget``).
        """
        self._take(vp)
        return await self._reclaim(vp, discard)

    def _take(self, vp: Vnode) -> None:
        """Start a reclaim: off the free list, BLOCKED (new users wait).  => never sleeps."""
        assert vp.usecount == 0, f"vrecycle of {vp.name} with {vp.usecount} uses"
        assert vp.vstate is VS.LOADED, f"vrecycle of a {vp.vstate.value} vnode"
        self.free.pop(vp.key, None)
        self.doomed.pop(vp.key, None)
        vp.set_state(VS.BLOCKED)
        self.reclaiming += 1

    async def _reclaim(self, vp: Vnode, discard: bool) -> int:
        """The rest of ``vrecycle``, after ``_take``."""
        try:
            return await self._reclaim_taken(vp, discard)
        finally:
            self.reclaiming -= 1
            self._made_room()

    async def _reclaim_taken(self, vp: Vnode, discard: bool) -> int:
        if discard:
            err = 0
        else:
            err = await vnops.vop_clean(vp)
        if not err:
            vp.set_state(VS.RECLAIMING)
            if discard:
                await vnops.vop_discard(self.ubc, vp)
            else:
                err = await vnops.vop_reclaim(self.ubc, vp)
        if err:
            # Nothing is lost: the pages stay dirty; the vnode is usable again.
            self.reclaim_failures += 1
            vp.set_state(VS.LOADED)
            if vp.usecount == 0:
                self.free[vp.key] = vp
            return err
        assert vp.usecount == 0, f"{vp.name}: got a use while being reclaimed"
        assert not vp.uobj.pages, f"{vp.name}: pages left after its reclaim"
        self._destroy(vp, discard)
        return 0

    async def reclaim_all(self) -> int:
        """Reclaim every unreferenced vnode (unmount); return the first error."""
        first = 0
        for vp in list(self.table.values()):
            if vp.vstate is VS.LOADED and vp.usecount == 0:
                err = await self.vrecycle(vp, discard=vp.key in self.doomed)
                if err and not first:
                    first = err
        while self.reclaiming:  # the drain's, started before or meanwhile
            await self._room.wait()
        return first

    # --- the drain task -----------------------------------------------------------------

    def _must_wait_for_room(self) -> bool:
        """Is the cache so far over its size that a load should wait for the drain?  Only
        while the drain can make room: with every vnode in use (or failing), loads go on."""
        if not self.running or len(self.table) < self.maxvnodes + self.maxvnodes // 8:
            return False
        if self.reclaiming:
            return True
        now = trio.current_time()
        return bool(self.doomed) or any(vp.retry_at <= now for vp in self.free.values())

    def _check_size(self) -> None:
        if len(self.table) > self.maxvnodes:
            self._kick()

    def _kick(self) -> None:
        if not self._wake.is_set():
            self._wake.set()

    def _victim(self, now: float) -> tuple[Vnode, bool] | None:
        """The next vnode to reclaim and whether to discard it: doomed ones first, then
        the least recently used while over the drain target."""
        if self.doomed:
            return next(iter(self.doomed.values())), True
        if len(self.table) - self.reclaiming <= self.maxvnodes * DRAIN_TARGET:
            return None
        for vp in self.free.values():
            if vp.retry_at <= now:
                return vp, False
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The drain task (kernel: vdrain_thread): reclaim while the cache is too big."""
        self.running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._drain()
        finally:
            self.running = False

    async def _drain(self) -> None:
        """Reclaim victims, up to DRAIN_PARALLEL at a time (their write-backs overlap),
        until there is none; then wait for the reclaims in progress."""
        limit = trio.Semaphore(DRAIN_PARALLEL)
        async with trio.open_nursery() as nursery:
            while True:
                await limit.acquire()
                got = self._victim(trio.current_time())
                if got is None:
                    limit.release()
                    if self.reclaiming:
                        await self._room.wait()  # a reclaim in progress may fail
                        continue
                    if not await self._retry_later():
                        return
                    continue
                vp, discard = got
                self._take(vp)
                nursery.start_soon(self._drain_one, vp, discard, limit)

    async def _retry_later(self) -> bool:
        """Over the target with only vnodes whose write-back failed left: sleep until the
        first may be tried again (or a wake-up); False when there is nothing to wait for."""
        if len(self.table) <= self.maxvnodes * DRAIN_TARGET or not self.free:
            return False
        soonest = min(vp.retry_at for vp in self.free.values())
        with trio.move_on_at(soonest):
            await self._wake.wait()
        self._wake = trio.Event()
        return True

    async def _drain_one(self, vp: Vnode, discard: bool, limit: trio.Semaphore) -> None:
        try:
            err = await self._reclaim(vp, discard)
        finally:
            limit.release()
        if err:
            # Nobody saw this error: keep it for the next fsync or close of the file
            # (as Linux reports a write-back error no one has seen to later opens).
            vp.write_error = vp.write_error or err
            vp.retry_delay = min(RETRY_MAX, max(RETRY_MIN, 2 * vp.retry_delay))
            vp.retry_at = trio.current_time() + vp.retry_delay
            log.warning(
                "%s: write-back at reclaim failed (%s); kept, retried in %.1f s",
                vp.name,
                errno.errorcode.get(err, str(err)),
                vp.retry_delay,
            )
        else:
            vp.retry_delay = 0.0

    # --- reporting ----------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """Counts for ``ubcfs stat``."""
        active = sum(1 for vp in self.table.values() if vp.usecount)
        return {
            "total": len(self.table),
            "active": active,
            "inactive": len(self.table) - active,
            "max": self.maxvnodes,
            "loads": self.loads,
            "hits": self.hits,
            "reclaims": self.reclaims,
            "discards": self.discards,
            "reclaim_failures": self.reclaim_failures,
        }

    def audit(self) -> list[str]:
        """Violations of the cache's rules (for ``ubcfs check``)."""
        out: list[str] = []
        for key, vp in self.table.items():
            where = f"vnode {vp.name}"
            if vp.key != key:
                out.append(f"{where}: in the table under {key}, its key is {vp.key}")
            if vp.vstate in (VS.LOADING, VS.RECLAIMED):
                out.append(f"{where}: {vp.vstate.value} but in the table")
            if vp.fd < 0:
                out.append(f"{where}: no backing descriptor")
            else:
                try:
                    os.fstat(vp.fd)
                except OSError as e:
                    out.append(f"{where}: backing descriptor {vp.fd} is not open: {e.strerror}")
            on_free = key in self.free
            if vp.usecount < 0:
                out.append(f"{where}: usecount {vp.usecount}")
            if vp.usecount and on_free:
                out.append(f"{where}: on the free list with {vp.usecount} uses")
            if vp.vstate is VS.LOADED and not vp.usecount and not on_free:
                out.append(f"{where}: unreferenced, LOADED, but not on the free list")
            if vp.vstate is not VS.LOADED and on_free:
                out.append(f"{where}: {vp.vstate.value} but on the free list")
            if key in self.doomed and not on_free:
                out.append(f"{where}: doomed but not free")
            if vp.uobj not in self.uvm.objects:
                out.append(f"{where}: its object is not registered with the machine")
        for name, lst in (("free", self.free), ("doomed", self.doomed)):
            for key, vp in lst.items():
                if self.table.get(key) is not vp:
                    out.append(f"vnode {vp.name}: on the {name} list but not in the table")
        return out


def _unlinked(vp: Vnode) -> bool:
    """The backing file has no name left (only our descriptor keeps it)."""
    try:
        return os.fstat(vp.fd).st_nlink == 0
    except OSError:
        return False
