"""Pagers: the vnode pager, the anonymous-object pager and the swap pager.

(~ uvm_vnode.c, uvm_aobj.c, uvm_swap.c)
"""

from ubcfs import native

native.install()  # before any module of the package: the compiled core, if it is current
