"""The page-replacement policy interface (~ NetBSD's uvm_pdpolicy.h, uvm_pdpolicy_impl.h).

Mechanism and policy are split as NetBSD draws the line:

* the **policy** owns the paging queues of the unwired, owned pages and decides which page
  goes next: ``pageactivate`` (a page was used), ``pagedeactivate`` (a page may go soon),
  ``pagedequeue`` (it leaves the queues: freed, wired, under pageout), ``pageenqueue`` (a
  page nobody asked for yet, e.g. read-ahead), ``pagereclaimable`` (would it be a victim),
  ``selectvictim`` (the next page to reclaim), ``balancequeue`` (keep its queues in shape
  after a scan), ``needsscan``, ``tune``, and ``check`` (the audit asks it to check itself);
* the **mechanism** -- ``ubcfs.vm.page`` (which calls the hooks) and the pagedaemon
  (``ubcfs.vm.pdaemon``, which asks for victims and does the pageouts) -- knows nothing of
  the queues' shape.

Every policy keeps two generic queue bits on the pages it holds, so that the mechanism and
the audit can ask "is it queued" (``PQ_QUEUES``) without knowing the policy: PQ_ACTIVE on
the pages it counts active and PQ_INACTIVE on those it counts inactive (never both), and it
keeps ``uvmexp.active`` and ``uvmexp.inactive`` equal to those counts (kernel:
uvmpdpol_estimatepageable).  The bits ``PQ_PRIVATE1`` .. ``PQ_PRIVATE8`` are the policy's
own; a policy clears them when a page leaves its queues.

Two policies (``--pdpolicy``): ``clock`` (``ubcfs.vm.pdpolicy_clock``, the two-queue clock
of uvm_pdaemon.c 1.39, the default) and ``clockpro`` (``ubcfs.vm.pdpolicy_clockpro``,
CLOCK-Pro as uvm_pdpolicy_clockpro.c has it).

=> every hook runs under the page-queue "lock": an atomic section, it never awaits.
=> the hooks are called only for owned pages that are neither free nor wired; page.py
   checks that (the policy need not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ubcfs.vm.page import PQ_ACTIVE, PQ_INACTIVE, PageQueue

if TYPE_CHECKING:
    from ubcfs.vm.anon import VmAnon
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.pdaemon import Pagedaemon
    from ubcfs.vm.uvm import Uvm

# The policies ``make_policy`` knows, the default first.
POLICIES = ("clock", "clockpro")


class PdPolicy:
    """A page-replacement policy (kernel: the uvmpdpol_* functions).  Subclasses implement
    every method; this class holds what they share."""

    name = "?"

    def __init__(self, uvm: Uvm) -> None:
        self.uvm = uvm

    # --- the page hooks (page.py) -------------------------------------------------------

    def pageactivate(self, pg: VmPage) -> None:
        """``pg`` was used (kernel: uvmpdpol_pageactivate); queue it if it is not."""
        raise NotImplementedError(self.name)

    def pagedeactivate(self, pg: VmPage) -> None:
        """``pg`` may be reclaimed soon (kernel: uvmpdpol_pagedeactivate); queue it if it is
        not.  The caller has cleared its referenced bit."""
        raise NotImplementedError(self.name)

    def pagedequeue(self, pg: VmPage) -> None:
        """Take ``pg`` off the queues if it is on one (kernel: uvmpdpol_pagedequeue)."""
        raise NotImplementedError(self.name)

    def pageenqueue(self, pg: VmPage) -> None:
        """Queue an unqueued page that nobody has used yet (kernel: uvmpdpol_pageenqueue):
        read-ahead."""
        raise NotImplementedError(self.name)

    def pagereclaimable(self, pg: VmPage) -> bool:
        """Would ``pg`` be a victim as it is: unused lately and where the policy reclaims
        from?  genfs asks this of a dirty neighbour of a pageout, to free it with the same
        write rather than scan it and write it again alone."""
        raise NotImplementedError(self.name)

    def anfree(self, anon: VmAnon) -> None:
        """An anon is freed (kernel: uvmpdpol_anfree): forget what the policy remembers of
        it.  Nothing by default."""

    # --- the pagedaemon's questions (pdaemon.py) ----------------------------------------

    def tune(self) -> None:
        """Recompute the policy's targets (kernel: uvmpdpol_tune); sets
        ``uvmexp.inactarg`` to the inactive (or cold) target, for reports."""
        raise NotImplementedError(self.name)

    def needsscan(self) -> bool:
        """Does the policy want a scan although memory is not short (kernel:
        uvmpdpol_needsscan_p)?"""
        raise NotImplementedError(self.name)

    def scaninit(self) -> None:
        """Start one reclaim scan (kernel: uvmpdpol_scaninit)."""
        raise NotImplementedError(self.name)

    def selectvictim(self) -> VmPage | None:
        """The next page to try to reclaim, or None when this scan has seen enough (kernel:
        uvmpdpol_selectvictim).  The page is still queued; it may be busy (the daemon skips
        it).  Referenced pages are the policy's business: it never returns one it wants to
        keep.  Counts ``pdscans`` and ``pdreact``."""
        raise NotImplementedError(self.name)

    def balancequeue(self, daemon: Pagedaemon, swap_shortage: int) -> int:
        """After the reclaim scan (kernel: uvmpdpol_balancequeue): move pages between the
        policy's queues as it likes, and free up to ``swap_shortage`` swap slots of resident
        swap-backed pages.  Returns the number of pages deactivated."""
        raise NotImplementedError(self.name)

    # --- reports and the audit ----------------------------------------------------------

    def queues(self) -> list[PageQueue]:
        """The policy's queues, for the audit and reports."""
        raise NotImplementedError(self.name)

    def report(self) -> dict[str, int]:
        """Queue lengths, targets and the policy's own counters (``ubcfs stat``)."""
        return {f"{q.name}_pages": q.count for q in self.queues()}

    def check(self, out: list[str]) -> None:
        """Append an audit finding (rule 1, "[1] ...") for every broken invariant of the
        policy's queues and counts."""
        uvm = self.uvm
        exp = uvm.uvmexp
        queues = self.queues()
        queued = 0
        for q in queues:
            check_queue(q, exp.npages, out)
            queued += q.count
        flagged = [0] * len(queues)
        active = inactive = 0
        for pg in uvm.pages:
            f = pg.pqflags
            if f & PQ_ACTIVE:
                active += 1
            if f & PQ_INACTIVE:
                inactive += 1
            for i, q in enumerate(queues):
                if f & q.pqflag:
                    flagged[i] += 1
        for q, n in zip(queues, flagged, strict=True):
            if n != q.count:
                out.append(
                    f"[1] {n} pages carry the {q.name} queue's flag but {q.count} are queued"
                )
        for field, kept, counted in (
            ("active", exp.active, active),
            ("inactive", exp.inactive, inactive),
        ):
            if kept != counted:
                out.append(
                    f"[1] uvmexp.{field} is {kept} but {counted} pages are PQ_{field.upper()}"
                )
        if active + inactive != queued:
            out.append(
                f"[1] {self.name}: {active} active + {inactive} inactive pages but {queued}"
                " are queued"
            )


def check_queue(q: PageQueue, npages: int, out: list[str]) -> None:
    """The links, the membership flag and the count of one queue (rule 1)."""
    n = 0
    prev: VmPage | None = None
    pg = q.head
    while pg is not None and n <= npages:
        if pg.pqprev is not prev:
            out.append(f"[1] {q.name} queue: back link of {pg!r} broken")
        if not pg.pqflags & q.pqflag:
            out.append(f"[1] {pg!r} on {q.name} queue without its PQ flag")
        n += 1
        prev, pg = pg, pg.pqnext
    if n > npages:
        out.append(f"[1] {q.name} queue has a cycle")
        return
    if q.tail is not prev:
        out.append(f"[1] {q.name} queue: tail pointer broken")
    if n != q.count:
        out.append(f"[1] {q.name} queue holds {n} pages but counts {q.count}")


def make_policy(name: str, uvm: Uvm) -> PdPolicy:
    """The policy called ``name`` (one of ``POLICIES``) for ``uvm``.

    Raises:
        ValueError: an unknown name.
    """
    # Imported here: both modules import this one.
    from ubcfs.vm.pdpolicy_clock import ClockPolicy
    from ubcfs.vm.pdpolicy_clockpro import ClockProPolicy

    if name == "clock":
        return ClockPolicy(uvm)
    if name == "clockpro":
        return ClockProPolicy(uvm)
    raise ValueError(f"pdpolicy {name!r} is not one of {', '.join(POLICIES)}")
